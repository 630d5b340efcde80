"""The recipe's training section as trainer arguments: steps, packing and TRL's SFTConfig, shared by
SFT and preference training (``quicktune.train.preference``)."""

from __future__ import annotations

import math
from pathlib import Path

from quicktune.backend import Backend, mixed_precision
from quicktune.plan import optimizer_for
from quicktune.recipe import Recipe
from quicktune.train.ranks import process_args

# TrainingArguments that sft_config derives from the recipe: DPO, ORPO and GRPO take the same.
SHARED_ARGS = (
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "num_train_epochs", "max_steps",
    "seed", "data_seed", "logging_steps", "eval_strategy", "eval_steps", "save_strategy", "save_steps",
    "save_total_limit", "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "report_to",
    "disable_tqdm", "use_cpu", "bf16", "fp16", "gradient_checkpointing", "dataloader_num_workers", "save_only_model",
    "max_length",
)


def planned_steps(recipe: Recipe, train_rows: int) -> int:
    """Optimizer steps the run will take (before packing changes the row count)."""
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(math.ceil(train_rows / (t.batch_size * t.grad_accumulation)) * t.epochs))


def packing_for(setting: bool | str, backend: Backend) -> bool:
    """Packing is safe where sequences stay separate inside a packed row: Unsloth's padding-free
    CUDA path. Unsloth's CPU fallback turns packing off by itself, so auto leaves it off there."""
    if setting == "auto":
        return backend.name == "unsloth" and backend.device == "cuda"
    return bool(setting)


def sft_config(recipe: Recipe, run_dir: Path, backend: Backend, has_eval: bool, total_steps: int, ranks=None):
    """TRL's SFTConfig for the recipe's training section, on this backend and process: the one
    place the recipe's training keys become trainer arguments (SFT, and DPO/ORPO through
    ``preference_config``, which starts from it)."""
    from trl import SFTConfig

    t = recipe.training
    batch, accumulation, ddp = process_args(t, ranks)  # the recipe's global batch, split over the processes
    eval_every = t.eval_every or max(1, total_steps // 5)
    # Keeping the best checkpoint needs a save at every evaluation.
    save_every = eval_every if has_eval else (t.save_every or max(1, total_steps // 5))
    optimizer = optimizer_for(t.optimizer, backend.device)  # what `quicktune plan` assumes, too
    on_cuda = backend.device == "cuda"
    precision = mixed_precision(t.precision, backend)
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        optim=optimizer,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_every,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every if has_eval else None,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        max_length=recipe.model.max_seq_length,
        packing=packing_for(t.packing, backend),
        report_to=list(t.report_to),  # TrainingArguments' own integrations; logs also go to metrics.jsonl
        disable_tqdm=True,
        use_cpu=not on_cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=False,  # handled by Unsloth / backend.add_lora
        dataloader_num_workers=0,
        save_only_model=False,
        **ddp,
    )
