"""Seconds per GRPO step: quicktune (method: grpo) vs plain TRL GRPOTrainer, on CPU, same prompts.

Two contenders train the same model (the smollm2-demo-grpo recipe's SmolLM2-135M-Instruct, float32,
from quicktune's converted HF folder) on the same prompts (the demo's train rows: system prompt and
sentence, the reference answer beside them) with the same settings (2 prompts x 4 answers a step, up
to 64 answer tokens, temperature 1.0, beta 0, LoRA r=16 alpha=32 on the 7 projections, lr 5e-6,
adamw_torch, no gradient checkpointing, a new adapter) and the same rewards (quicktune's json_fields and
exact functions), each in its own child process, one after the other:

- quicktune: quicktune.train.trainer.train(load_recipe("smollm2-demo-grpo", overrides)): Unsloth's CPU
             fallback, quicktune's prompt ids and stop tokens, TRL's GRPOTrainer;
- trl:       AutoModelForCausalLM + TRL GRPOTrainer(peft_config=LoraConfig(...)) on the prompts as
             conversations (TRL renders and tokenizes them), unsloth never imported. TRL 1.15 scores the
             answers with a fused Triton log-prob kernel that has no CPU driver ("0 active drivers"); on
             the CPU this contender uses dpo_speed.py's plain-torch stand-in for it, as the DPO bench does.

Sampling dominates a GRPO step and is random: the answers' lengths differ between the two (the table
gives the mean answer length each sampled), so compare seconds per answer token as well as per step.
bench/common.py's step_timer times each optimizer step (wall and the child's CPU seconds).

    .venv/bin/python bench/grpo_speed.py [--steps 8] [--warmup 2] [--threads 2]

Prints a table and writes bench/results/grpo_speed.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import contender_parser, run_contenders, save_results, step_timer, versions

RECIPE = "smollm2-demo-grpo"
CONTENDERS = ("quicktune", "trl")
LABELS = {"quicktune": "quicktune (method: grpo)", "trl": "plain TRL GRPOTrainer + PEFT"}
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS, GENERATIONS, COMPLETION, LORA_R, LORA_ALPHA, LR, SEED = 2, 4, 64, 16, 32, 5e-5, 3407
RECIPE_SETTINGS = {
    "model.dtype": "float32", "lora.r": LORA_R, "lora.alpha": LORA_ALPHA, "lora.dropout": 0.0,
    "lora.target_modules": PROJECTIONS, "training.batch_size": PROMPTS, "training.grad_accumulation": 1,
    "training.learning_rate": LR, "training.warmup_ratio": 0.0, "training.optimizer": "adamw_torch",
    "training.gradient_checkpointing": False, "training.seed": SEED, "training.logging_every": 1,
    "training.save_every": 1_000_000, "grpo.num_generations": GENERATIONS,
    "grpo.max_completion_length": COMPLETION, "grpo.temperature": 1.0, "grpo.beta": 0.0,
}


def recipe_overrides(steps: int) -> list[str]:
    return [f"training.max_steps={steps}"] + [f"{key}={json.dumps(value)}" for key, value in RECIPE_SETTINGS.items()]


class AnswerLengths:
    """Collects TRL's logged mean answer length a step (both contenders log it)."""

    def __init__(self):
        from transformers import TrainerCallback

        self.lengths: list[float] = []
        outer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "completions/mean_length" in logs:
                    outer.lengths.append(float(logs["completions/mean_length"]))

        self.callback = _Callback()


def run_quicktune(workdir: Path, steps: int, warmup: int) -> dict:
    from quicktune.backend import load_backend

    load_backend()
    timer, lengths = step_timer(), AnswerLengths()
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train

    result = train(load_recipe(RECIPE, recipe_overrides(steps)), runs_root=workdir / "runs",
                   extra_callbacks=(timer, lengths.callback))
    return {**timer.summary(warmup), "answer_lengths": lengths.lengths, "status": result.status}


def run_trl(workdir: Path, steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from quicktune.base_model import prepare_base
    from quicktune.data.check import prepare_for_recipe
    from quicktune.recipe import load_recipe
    from quicktune.rewards import resolve

    recipe = load_recipe(RECIPE, recipe_overrides(steps))
    rows = prepare_for_recipe(recipe).train_prompts  # the same prompts and reference answers
    records = [{"prompt": list(r.messages), "reference": r.reference} for r in rows]
    folder = prepare_base(recipe.model.base, recipe.model.revision).load_from
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def as_text(function):  # TRL hands conversational completions as messages
        def reward(prompts, completions, **columns):
            return function(prompts=prompts, completions=[c[-1]["content"] for c in completions], **columns)

        reward.__name__ = function.__name__
        return reward

    functions = [as_text(r.function) for r in resolve(recipe.grpo.rewards, None)]
    timer, lengths = step_timer(), AnswerLengths()
    args = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0.0,
        weight_decay=0.0, optim="adamw_torch", max_steps=steps, seed=SEED, data_seed=SEED, logging_steps=1,
        eval_strategy="no", save_strategy="no", bf16=False, fp16=False, report_to=[], disable_tqdm=True,
        use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0, num_generations=GENERATIONS,
        max_completion_length=COMPLETION, temperature=1.0, beta=0.0, remove_unused_columns=False,
    )
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS,
                      task_type="CAUSAL_LM")
    if not torch.cuda.is_available():  # TRL 1.15's fused log-prob kernel is Triton, with no CPU driver
        import trl.trainer.utils
        from dpo_speed import torch_log_probs

        trl.trainer.utils._ChunkedLogProbFunction = torch_log_probs()
    trainer = GRPOTrainer(model=model, reward_funcs=functions, args=args, train_dataset=Dataset.from_list(records),
                          processing_class=tokenizer, peft_config=lora, callbacks=[timer, lengths.callback])
    trainer.train()
    return {**timer.summary(warmup), "answer_lengths": lengths.lengths, "status": "finished"}


def child_main(name: str, workdir: Path, steps: int, warmup: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    result = {"quicktune": run_quicktune, "trl": run_trl}[name](workdir, steps, warmup)
    (workdir / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")


def _row(name: str, r: dict, load: tuple[float, float], warmup: int) -> str:
    lengths = r["answer_lengths"][warmup:] or r["answer_lengths"]
    mean_length = sum(lengths) / len(lengths)
    per_token = r["median_s_per_step"] / (mean_length * PROMPTS * GENERATIONS)
    return (f"{LABELS[name]:30} {r['median_cpu_s_per_step']:10.2f} {r['median_s_per_step']:11.2f} "
            f"{mean_length:13.1f} {per_token * 1000:13.1f} {r['peak_rss_mb']:11.0f} {load[0]:5.1f}-{load[1]:<5.1f}")


def main() -> None:
    args = contender_parser(__doc__.splitlines()[0], CONTENDERS, 8, 2).parse_args()
    if args.child:
        child_main(args.child, args.workdir, args.steps, args.warmup)
        return
    workdir = Path(tempfile.mkdtemp(prefix="grpo-speed-"))
    results, failures, load = run_contenders(__file__, args, workdir)
    print(f"\nGRPO, {args.steps} steps of {PROMPTS} prompts x {GENERATIONS} answers (medians of the last "
          f"{args.steps - args.warmup}), {args.threads} threads, one child after the other:")
    print(f"{'contender':30} {'CPU s/step':>10} {'wall s/step':>11} {'answer tokens':>13} {'ms/answer tok':>13} "
          f"{'peak RSS MB':>11} {'load 1-min':>11}")
    for name in args.only:
        print(f"{LABELS[name]:30} failed (see {workdir}/{name}.log)" if name in failures
              else _row(name, results[name], load[name], args.warmup))
    ratio = (results["quicktune"]["median_s_per_step"] / results["trl"]["median_s_per_step"]
             if len(results) == 2 else None)
    if ratio is not None:
        print(f"quicktune / plain TRL: {ratio:.2f}x the wall seconds per step")
    save_results("grpo_speed", {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"steps": args.steps, "warmup": args.warmup, "threads": args.threads, "prompts": PROMPTS,
                     "generations": GENERATIONS, "max_completion_length": COMPLETION, "lora_r": LORA_R, "lr": LR},
        "versions": versions(PACKAGES), "results": results, "failures": failures, "median_ratio": ratio,
        "load_average_1min": {n: {"before": b, "after": a} for n, (b, a) in load.items()},
    })


if __name__ == "__main__":
    main()
