"""Train a recipe: data -> Unsloth model + LoRA -> TRL SFTTrainer -> a run folder.

Run folders, resume and lineage:
- every run gets a new ``runs/<recipe>/vN``;
- re-running the same command after an interruption resumes the newest unfinished run
  of the same resolved recipe from its last checkpoint (optimizer, scheduler and RNG
  state included);
- ``--from`` starts from another run's adapter and records it as the parent.
"""

from __future__ import annotations

import hashlib
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from quicktune.data.check import PreparedData, prepare_for_recipe
from quicktune.errors import QuicktuneError
from quicktune.recipe import Recipe
from quicktune.train import runs
from quicktune.train.backend import Backend, four_bit_summary, load_backend, require_device_for

PACKAGES = ("quicktune", "torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "datasets", "accelerate")


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" or "interrupted"
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"


def recipe_sha256(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_yaml().encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def prepare_data(recipe: Recipe) -> PreparedData:
    prepared = prepare_for_recipe(recipe)
    if not any(t.trained_tokens for t in prepared.train_tokens):
        raise QuicktuneError("no training row has a token left to train on (all were cut by max_seq_length?)")
    return prepared


def _data_manifest(prepared: PreparedData) -> dict[str, Any]:
    return {
        "files": [
            {"path": item.path, "format": item.format, "rows": item.rows, "sha256": runs.sha256_file(item.path)}
            for item in prepared.report.files
        ],
        "train_rows": prepared.report.train_rows,
        "eval_rows": prepared.report.eval_rows,
        "eval_source": prepared.report.eval_source,
        "removed_duplicates": prepared.report.removed_duplicates,
        "train_tokens": prepared.report.train_tokens.total_tokens if prepared.report.train_tokens else 0,
        # what export and chat send as the system prompt (quicktune.data.system_prompt)
        "system_prompt": prepared.report.system_prompt.to_dict() if prepared.report.system_prompt else None,
    }


def _rows(tokenized) -> list[dict[str, list[int]]]:
    return [{"input_ids": t.input_ids, "labels": t.labels} for t in tokenized if t.trained_tokens]


def planned_steps(recipe: Recipe, train_rows: int) -> int:
    """Optimizer steps the run will take (before packing changes the row count)."""
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(math.ceil(train_rows / (t.batch_size * t.grad_accumulation)) * t.epochs))


def _packing(setting: bool | str, backend: Backend) -> bool:
    """Packing is safe where sequences stay separate inside a packed row: Unsloth's padding-free
    CUDA path. Unsloth's CPU fallback turns packing off by itself, so auto leaves it off there."""
    if setting == "auto":
        return backend.name == "unsloth" and backend.device == "cuda"
    return bool(setting)


def _sft_config(recipe: Recipe, run_dir: Path, backend: Backend, has_eval: bool, total_steps: int):
    from trl import SFTConfig

    t = recipe.training
    eval_every = t.eval_every or max(1, total_steps // 5)
    # Keeping the best checkpoint needs a save at every evaluation.
    save_every = eval_every if has_eval else (t.save_every or max(1, total_steps // 5))
    optimizer = t.optimizer
    if optimizer == "auto":
        optimizer = "adamw_8bit" if backend.device == "cuda" else "adamw_torch"
    on_cuda = backend.device == "cuda"
    import torch

    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accumulation,
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
        packing=_packing(t.packing, backend),
        report_to=[],
        disable_tqdm=True,
        use_cpu=not on_cuda,
        bf16=bf16,
        fp16=on_cuda and not bf16,
        gradient_checkpointing=False,  # handled by Unsloth / backend.add_lora
        dataloader_num_workers=0,
        save_only_model=False,
    )


def load_parent(parent_ref: str | None, runs_root: Path, recipe: Recipe) -> Path | None:
    if parent_ref is None:
        return None
    parent_dir = runs.resolve_run(parent_ref, runs_root, recipe.name)
    manifest = runs.read_manifest(parent_dir)
    if not (parent_dir / "adapter" / "adapter_config.json").is_file():
        raise QuicktuneError(f"--from {parent_ref}: {parent_dir} has no finished adapter (status {manifest.get('status')})")
    parent_base = manifest.get("base_model", {}).get("spec")
    if parent_base != recipe.model.base:
        raise QuicktuneError(
            f"--from {parent_ref}: that run trained {parent_base}, this recipe trains {recipe.model.base}"
        )
    from quicktune.export.merge import read_plan

    read_plan(parent_dir / "adapter")  # training on top of an adapter the export cannot merge is refused now
    return parent_dir


def train(
    recipe: Recipe,
    *,
    runs_root: Path,
    parent_ref: str | None = None,
    console=None,
    extra_callbacks: tuple = (),
) -> TrainResult:
    backend = load_backend()  # first: Unsloth must be imported before transformers/trl/peft
    say = console.print if console is not None else (lambda *a, **k: None)
    if backend.notice:
        say(f"[yellow]notice:[/] {backend.notice}")
    if recipe.method == "full" and recipe.model.load_in_4bit:
        raise QuicktuneError("method full cannot train a 4-bit model")
    require_device_for(recipe.method, bool(recipe.model.load_in_4bit), backend)

    prepared = prepare_data(recipe)
    parent_dir = load_parent(parent_ref, runs_root, recipe)
    parent = str(parent_dir) if parent_dir else None
    sha = recipe_sha256(recipe)
    run_dir = runs.find_resumable(runs_root, recipe.name, sha, parent)
    checkpoint = runs.latest_checkpoint(run_dir) if run_dir else None

    from quicktune.train.base_model import prepare_base

    base = prepare_base(recipe.model.base, recipe.model.revision)
    if run_dir is None:
        run_dir = runs.create_run_dir(runs_root, recipe.name)
        runs.write_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
        runs.write_manifest(
            run_dir,
            {
                "recipe": recipe.name,
                "version": run_dir.name,
                "status": "running",
                "recipe_sha256": sha,
                "started": runs.now(),
                "ended": None,
                "parent": parent,
                "seed": recipe.training.seed,
                "method": recipe.method,
                "base_model": {"spec": base.spec, "kind": base.kind, "loaded_from": base.load_from,
                               "fingerprint": base.fingerprint},
                "data": _data_manifest(prepared),
                "backend": {"name": backend.name, "device": backend.device},
                "packages": package_versions(),
                "resumes": [],
                "metrics": None,
            },
        )
        say(f"run folder: [bold]{run_dir}[/]")
    else:
        manifest = runs.read_manifest(run_dir)
        runs.update_manifest(run_dir, status="running", resumes=manifest.get("resumes", []) + [
            {"at": runs.now(), "checkpoint": checkpoint.name}
        ])
        say(f"resuming [bold]{run_dir}[/] from {checkpoint.name}")

    try:
        result = _fit(recipe, backend, base.load_from, prepared, run_dir, parent_dir, checkpoint, console,
                      extra_callbacks)
    except KeyboardInterrupt:  # before the first step or a second Ctrl-C: resumable only from a saved checkpoint
        runs.update_manifest(run_dir, status="interrupted")
        raise
    except Exception as exc:
        runs.update_manifest(run_dir, status="failed", ended=runs.now(), error=f"{type(exc).__name__}: {exc}"[:500])
        _raise_friendly(exc, recipe)
        raise
    result.resumed_from = checkpoint.name if checkpoint else None
    return result


def _raise_friendly(exc: Exception, recipe: Recipe) -> None:
    text = str(exc)
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        t = recipe.training
        raise QuicktuneError(
            "the GPU ran out of memory",
            hint=(
                f"Lower training.batch_size (now {t.batch_size}; raise grad_accumulation to keep the effective batch), "
                f"model.max_seq_length (now {recipe.model.max_seq_length}) or lora.r (now {recipe.lora.r}); "
                "keep training.gradient_checkpointing: true."
            ),
        ) from None


def _fit(recipe, backend, load_from, prepared, run_dir, parent_dir, checkpoint, console, extra_callbacks) -> TrainResult:
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    from quicktune.train.callbacks import LiveProgress, MetricsLog, StopOnInterrupt
    from quicktune.train.plot import plot_losses

    model, hf_tokenizer = backend.load_model(
        load_from,
        max_seq_length=recipe.model.max_seq_length,
        load_in_4bit=bool(recipe.model.load_in_4bit),
        dtype=recipe.model.dtype,
        full=recipe.method == "full",
    )
    if recipe.model.load_in_4bit:  # how the base was quantized, as loaded (README: QLoRA on the CPU)
        recorded = runs.read_manifest(run_dir).get("backend") or {}
        runs.update_manifest(run_dir, backend={**recorded, "four_bit": four_bit_summary(model)})
    if recipe.model.chat_template != "auto":
        from quicktune.templates import FAMILY_TEMPLATES

        # Saved with the adapter: export and chat must use the template training rendered with.
        hf_tokenizer.chat_template = FAMILY_TEMPLATES[recipe.model.chat_template]
    if recipe.method != "full":
        if parent_dir is not None:
            model = backend.load_adapter(model, str(parent_dir / "adapter"),
                                         gradient_checkpointing=recipe.training.gradient_checkpointing)
        else:
            model = backend.add_lora(
                model,
                r=recipe.lora.r,
                alpha=recipe.lora.alpha,
                dropout=recipe.lora.dropout,
                targets=recipe.lora.target_modules,
                dora=recipe.lora.use_dora,
                rslora=recipe.lora.use_rslora,
                gradient_checkpointing=recipe.training.gradient_checkpointing,
                seed=recipe.training.seed,
            )
        from quicktune.export.merge import check_mergeable

        check_mergeable(model)  # the export must be able to merge what is about to be trained
    train_rows = _rows(prepared.train_tokens)
    eval_rows = _rows(prepared.eval_tokens or [])
    total = planned_steps(recipe, len(train_rows))
    args = _sft_config(recipe, run_dir, backend, bool(eval_rows), total)
    interrupt = StopOnInterrupt()
    callbacks = [MetricsLog(run_dir / "metrics.jsonl"), interrupt, *extra_callbacks]
    if console is not None:
        callbacks.append(LiveProgress(console))
    if eval_rows and recipe.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping_patience))
    trainer_class = SFTTrainer
    if backend.name != "unsloth" and backend.device == "cpu":
        trainer_class = _cpu_trainer_class(SFTTrainer)
    trainer = trainer_class(
        model=model,
        processing_class=hf_tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        args=args,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # LiveProgress and metrics.jsonl report instead
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    runs.describe_checkpoints(run_dir)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{recipe.name} {run_dir.name}")
    if interrupt.requested:
        saved = runs.latest_checkpoint(run_dir)
        runs.update_manifest(run_dir, status="interrupted", interrupted_at_step=trainer.state.global_step)
        return TrainResult(run_dir, "interrupted", {"steps": trainer.state.global_step,
                                                     "checkpoint": saved.name if saved else None})
    _save_final(trainer, hf_tokenizer, run_dir, recipe.method)
    metrics = _final_metrics(trainer, output, seconds)
    runs.update_manifest(run_dir, status="finished", ended=runs.now(), metrics=metrics)
    return TrainResult(run_dir, "finished", metrics)


def _cpu_trainer_class(sft_trainer):
    """TRL 1.15 always computes the loss through its Triton fused LM-head kernel, which fails
    without a GPU driver ("0 active drivers"). On the plain-transformers CPU fallback, use the
    model's own loss over the labels instead (Unsloth's CPU path has its own chunked loss)."""
    from transformers import Trainer

    class CpuSFTTrainer(sft_trainer):
        compute_loss = Trainer.compute_loss

    return CpuSFTTrainer


def _save_final(trainer, hf_tokenizer, run_dir: Path, method: str) -> None:
    """The adapter (or full model) appears at its final path whole, or not at all."""
    final = run_dir / ("model" if method == "full" else "adapter")
    staging = run_dir / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(str(staging))
    hf_tokenizer.save_pretrained(str(staging))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def _final_metrics(trainer, output, seconds: float) -> dict[str, Any]:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    metrics = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "train_loss": losses[-1] if losses else None,
        "mean_train_loss": output.training_loss,
        "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": trainer.state.best_metric if evals else None,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint).name if trainer.state.best_model_checkpoint else None,
        "seconds": round(seconds, 1),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds and tokens else None,
    }
    import torch

    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return metrics
