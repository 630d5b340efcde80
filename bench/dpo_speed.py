"""Seconds per DPO step: quicktune (method: dpo) vs plain TRL DPOTrainer, on CPU, same pairs.

Two contenders train the same model (the smollm2-demo-dpo recipe's SmolLM2-135M-Instruct, float32,
from quicktune's converted HF folder) on the same preference pairs (the recipe's train file,
quicktune/demo/preference_train.jsonl) with the same settings (batch 4 pairs, LoRA r=16 alpha=32
on the 7 projections, lr 5e-6, beta 0.1, sigmoid loss (no sft_weight), adamw_torch, no gradient checkpointing,
no eval, a new adapter), each in its own child process, one after the other:

- quicktune: quicktune.train.trainer.train(load_recipe("smollm2-demo-dpo", overrides)): Unsloth's CPU
             fallback, quicktune's own tokens, TRL's DPOTrainer with the adapter copied as reference;
- trl:       AutoModelForCausalLM + TRL DPOTrainer(peft_config=LoraConfig(...)) on the pairs as TRL's
             conversational records (TRL renders and tokenizes them), unsloth never imported. Its
             reference is the base with the adapter disabled, the usual TRL setup.

A TrainerCallback (bench/common.py step_timer) times each optimizer step, in wall seconds and in
the child's own CPU seconds; the medians after --warmup steps are reported with each child's peak
RSS and the load average before and after it. Both children run in the same invocation, one right
after the other, so they see about the same machine; on a shared machine the load still moves, and
the CPU seconds are the fairer comparison (the ratio line gives both). Where one fails the table
says so.

    .venv/bin/python bench/dpo_speed.py [--steps 10] [--warmup 2] [--threads 2]

Prints a table and writes bench/results/dpo_speed.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import contender_parser, run_contenders, save_results, step_timer, versions

RECIPE = "smollm2-demo-dpo"
CONTENDERS = ("quicktune", "trl")
LABELS = {"quicktune": "quicktune (method: dpo)", "trl": "plain TRL DPOTrainer + PEFT"}
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ_LEN, BATCH, LORA_R, LORA_ALPHA, LR, BETA, SEED = 256, 4, 16, 32, 5e-6, 0.1, 3407
RECIPE_SETTINGS = {
    "model.max_seq_length": SEQ_LEN,
    "model.dtype": "float32",
    "lora.r": LORA_R,
    "lora.alpha": LORA_ALPHA,
    "lora.dropout": 0.0,
    "lora.target_modules": PROJECTIONS,
    "data.eval": [],
    "training.batch_size": BATCH,
    "training.grad_accumulation": 1,
    "training.learning_rate": LR,
    "training.warmup_ratio": 0.0,
    "training.optimizer": "adamw_torch",
    "training.gradient_checkpointing": False,
    "training.seed": SEED,
    "training.logging_every": 1,
    "training.save_every": 1_000_000,
    "preference.beta": BETA,
    "preference.loss_type": "sigmoid",
    "preference.sft_weight": 0.0,  # the recipe adds an SFT term; plain TRL's sigmoid loss has none
}


def recipe_overrides(steps: int) -> list[str]:
    return [f"training.max_steps={steps}"] + [f"{key}={json.dumps(value)}" for key, value in RECIPE_SETTINGS.items()]


# ---------------------------------------------------------------- inside the children


def run_quicktune(workdir: Path, steps: int, warmup: int) -> dict:
    from quicktune.backend import load_backend

    load_backend()
    timer = step_timer()
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train

    result = train(load_recipe(RECIPE, recipe_overrides(steps)), runs_root=workdir / "runs", extra_callbacks=(timer,))
    return {**timer.summary(warmup), "status": result.status, "final": result.metrics}


def torch_log_probs():
    """A plain-torch stand-in for TRL 1.15's Triton ``ChunkedLogProbFunction`` (no CPU driver): the
    same outputs, computed from full logits. Only for the CPU baseline: the rest of DPOTrainer is TRL's."""
    import torch

    class TorchLogProbs:
        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
                  outputs=("log_probs",)):
            logits = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
            if softcap is not None:
                logits = torch.tanh(logits / softcap) * softcap
            logits = logits / temperature
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(1, targets[:, None]).squeeze(1)
            entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
            mean = logits.mean(-1).detach() if "mean_logits" in outputs else None
            top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
            return picked, entropy, None, mean, top1

    return TorchLogProbs


def run_trl(workdir: Path, steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from quicktune.base_model import prepare_base
    from quicktune.data.preference import prepare_pairs_for_recipe
    from quicktune.recipe import load_recipe

    recipe = load_recipe(RECIPE, recipe_overrides(steps))
    pairs = prepare_pairs_for_recipe(recipe, tokenize=False).train_pairs  # the same pairs, as records
    records = [{"prompt": [{"role": m.role, "content": m.content} for m in p.prompt],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    folder = prepare_base(recipe.model.base, recipe.model.revision).load_from
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    timer = step_timer()
    args = DPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0.0, weight_decay=0.0, optim="adamw_torch",
        max_steps=steps, seed=SEED, data_seed=SEED, logging_steps=1, eval_strategy="no", save_strategy="no",
        max_length=SEQ_LEN, beta=BETA, loss_type=["sigmoid"], bf16=False, fp16=False, report_to=[],
        disable_tqdm=True, use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0,
        disable_dropout=False,
    )
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS,
                      task_type="CAUSAL_LM")
    if not torch.cuda.is_available():
        import trl.trainer.utils

        trl.trainer.utils._ChunkedLogProbFunction = torch_log_probs()  # its Triton kernel has no CPU driver
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    trainer.train()
    return {**timer.summary(warmup), "status": "finished"}


def child_main(name: str, workdir: Path, steps: int, warmup: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    result = {"quicktune": run_quicktune, "trl": run_trl}[name](workdir, steps, warmup)
    (workdir / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------- the parent


def main() -> None:
    args = contender_parser(__doc__.splitlines()[0], CONTENDERS, 10, 2).parse_args()
    if args.child:
        child_main(args.child, args.workdir, args.steps, args.warmup)
        return
    workdir = Path(tempfile.mkdtemp(prefix="dpo-speed-"))
    results, failures, load = run_contenders(__file__, args, workdir)
    print(f"\nDPO, {args.steps} steps of {BATCH} pairs (medians of the last {args.steps - args.warmup}), "
          f"{args.threads} threads, one invocation, one child after the other:")
    print(f"{'contender':30} {'CPU s/step':>10} {'wall s/step':>11} {'min-max wall':>13} {'tokens':>7} "
          f"{'peak RSS MB':>11} {'load 1-min':>11}  first/last loss")
    for name in args.only:
        if name in failures:
            print(f"{LABELS[name]:30} failed (see {workdir}/{name}.log)")
            continue
        r = results[name]
        losses = r.get("losses") or [None]
        spread = f"{r['min_s_per_step']:.1f}-{r['max_s_per_step']:.1f}"
        print(f"{LABELS[name]:30} {r['median_cpu_s_per_step']:10.2f} {r['median_s_per_step']:11.2f} {spread:>13} "
              f"{r['tokens_per_step']:7.0f} {r['peak_rss_mb']:11.0f} {load[name][0]:5.1f}-{load[name][1]:<5.1f}"
              f"  {losses[0]} / {losses[-1]}")
    if len(results) == 2:
        q, t = results["quicktune"], results["trl"]
        print(f"quicktune / plain TRL: {q['median_cpu_s_per_step'] / t['median_cpu_s_per_step']:.2f}x the CPU seconds "
              f"per step, {q['median_s_per_step'] / t['median_s_per_step']:.2f}x the wall seconds")
    save_results("dpo_speed", {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"steps": args.steps, "warmup": args.warmup, "threads": args.threads, "batch_pairs": BATCH,
                     "seq_len": SEQ_LEN, "lora_r": LORA_R, "lr": LR, "beta": BETA},
        "versions": versions(PACKAGES),
        "results": results,
        "failures": failures,
        "median_ratio": (results["quicktune"]["median_s_per_step"] / results["trl"]["median_s_per_step"]
                         if len(results) == 2 else None),
        "median_cpu_ratio": (results["quicktune"]["median_cpu_s_per_step"] / results["trl"]["median_cpu_s_per_step"]
                             if len(results) == 2 else None),
        "load_average_1min": {n: {"before": b, "after": a} for n, (b, a) in load.items()},
        "all_steps_s": {n: [s["wall_s"] for s in r["steps"]] for n, r in results.items()},
        "median_check": {
            n: statistics.median(s["wall_s"] for s in r["steps"][args.warmup:]) for n, r in results.items()
        },
    })


if __name__ == "__main__":
    main()
