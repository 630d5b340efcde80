"""Seconds per optimizer step: quicktune vs raw Unsloth vs plain TRL + PEFT, on CPU.

Three contenders train the same model (the smollm2-demo recipe's SmolLM2-135M-Instruct,
float32, from quicktune's converted HF folder) on the same tokenized rows (the demo
recipe's train split: input_ids + labels) with the same settings (batch 8, LoRA r=16
alpha=32 on the 7 projections, lr 1e-3, adamw_torch, no gradient checkpointing, no
eval), each in its own child process, one after the other:

- quicktune:  quicktune.train.trainer.train(load_recipe("smollm2-demo", overrides));
- unsloth:    import unsloth; FastLanguageModel + TRL SFTTrainer, a minimal script;
- trl:        AutoModelForCausalLM + peft + TRL SFTTrainer, unsloth never imported.
              TRL 1.15's SFTTrainer computes its loss with a Triton kernel that has no
              CPU driver, so this contender overrides compute_loss with the model's own
              loss (see the README, "Training speed").
- last15:     quicktune again with lora.last_layers=15: the adapter on the last 15 of the
              30 layers, so backpropagation stops there (the first loss is the same: LoRA's
              B starts at zero).

A TrainerCallback times each optimizer step (time.perf_counter at on_step_begin and
on_step_end); the median after --warmup steps is reported with the non-pad tokens per
step and each child's peak RSS (os.wait4). A fourth child first prepares the rows and
measures the share of pad tokens in batches of 8 with and without packing.

    .venv/bin/python bench/train_speed.py [--steps 12] [--warmup 2]

Prints a table and writes bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import ChildFailed, child_env, model_loss_sft_trainer, python_argv, save_results, step_timer, versions
from common import run_child as run_bench_child

RECIPE = "smollm2-demo"
CONTENDERS = ("quicktune", "unsloth", "trl", "last15")
LABELS = {"quicktune": "quicktune", "unsloth": "raw Unsloth", "trl": "plain TRL + PEFT", "last15": "quicktune, last 15"}
LAST_LAYERS = 15  # the last15 contender's lora.last_layers
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo", "triton")

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ_LEN = 256
BATCH = 8
LORA_R = 16
LORA_ALPHA = 32
LR = 1e-3
SEED = 3407
WARMUP_RATIO = 0.03
# The whole comparison, as recipe overrides for quicktune; the other two contenders use the same
# constants. Logging every step and never saving a checkpoint only touch what happens between
# steps (Trainer logs and saves after on_step_end), not the timed window.
RECIPE_SETTINGS = {
    "method": "lora",
    "model.max_seq_length": SEQ_LEN,
    "model.dtype": "float32",
    "model.load_in_4bit": False,
    "lora.r": LORA_R,
    "lora.alpha": LORA_ALPHA,
    "lora.dropout": 0.0,
    "lora.target_modules": PROJECTIONS,
    "lora.last_layers": None,  # every layer, as the other two
    "data.eval": [],
    "data.eval_fraction": 0.0,
    "training.batch_size": BATCH,
    "training.grad_accumulation": 1,
    "training.learning_rate": LR,
    "training.lr_scheduler": "linear",
    "training.warmup_ratio": WARMUP_RATIO,
    "training.weight_decay": 0.0,
    "training.optimizer": "adamw_torch",
    "training.gradient_checkpointing": False,
    "training.packing": False,
    "training.seed": SEED,
    "training.logging_every": 1,
    "training.save_every": 1_000_000,
}
QUICKTUNE_GOAL = 1.05  # from the issue: quicktune's step time <= 1.05x raw Unsloth's
FACTS_TRL_VS_UNSLOTH = 1.59  # shared/FACTS.md: raw Unsloth 1.59x faster than plain TRL (batch 2)


def recipe_overrides(steps: int) -> list[str]:
    # JSON scalars and flow lists are valid YAML, which is how --set values are parsed
    return [f"training.max_steps={steps}"] + [f"{key}={json.dumps(value)}" for key, value in RECIPE_SETTINGS.items()]


# ---------------------------------------------------------------- run inside the children


def sft_config(output_dir: Path, steps: int):
    """What quicktune.train.config.sft_config gives on CPU for these settings, minus eval and checkpoints."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP_RATIO,
        weight_decay=0.0,
        optim="adamw_torch",
        max_steps=steps,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        max_length=SEQ_LEN,
        packing=False,
        bf16=False,  # SFTConfig's default is bf16=True, i.e. bf16 autocast wherever the CPU has bf16
        fp16=False,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )


def run_prepare(workdir: Path, steps: int, warmup: int) -> dict:
    """The demo recipe's train rows and converted model folder, and the pad share of its batches."""
    from quicktune.base_model import prepare_base
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import prepare_data, training_rows

    recipe = load_recipe(RECIPE, recipe_overrides(steps))
    rows = training_rows(prepare_data(recipe).train_tokens)  # exactly the rows quicktune's trainer trains on
    model_dir = prepare_base(recipe.model.base, recipe.model.revision).load_from
    (workdir / "rows.json").write_text(json.dumps(rows), encoding="utf-8")

    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    lengths = [len(row["input_ids"]) for row in rows]
    return {
        "model_dir": model_dir,
        "rows_sha256": rows_sha256(rows),
        "rows": len(rows),
        "mean_tokens_per_row": statistics.fmean(lengths),
        "max_tokens_per_row": max(lengths),
        "mean_trained_tokens_per_row": statistics.fmean(sum(x != -100 for x in r["labels"]) for r in rows),
        "pad_token_id": pad_id,
        "pad_share": pad_share(rows, pad_id),
    }


def pad_share(rows: list[dict], pad_id: int) -> dict:
    """Padded positions / all positions when rows are collated in batches of 8 as SFTTrainer does."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    def collate(examples: list[dict], padding_free: bool) -> dict:
        collator = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=padding_free)
        real = positions = batches = 0
        for start in range(0, len(examples), BATCH):
            batch = examples[start:start + BATCH]
            positions += collator(batch)["input_ids"].numel()
            real += sum(len(example["input_ids"]) for example in batch)
            batches += 1
        return {"batches": batches, "tokens": real, "positions": positions, "pad_share": 1 - real / positions,
                "tokens_per_batch": real / batches}

    packed = pack_dataset(Dataset.from_list(rows), seq_length=SEQ_LEN, strategy="bfd")
    packed_rows = packed.to_list()
    return {
        "order": "dataset order, consecutive batches of 8",
        "padded": collate(rows, padding_free=False),
        "packed_bfd_padding_free": collate(packed_rows, padding_free=True),
        "packed_bfd_padded": collate(packed_rows, padding_free=False),
        "packed_rows": len(packed_rows),
        "packed_fill": statistics.fmean(len(r["input_ids"]) for r in packed_rows) / SEQ_LEN,
    }


def rows_sha256(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


def run_quicktune(workdir: Path, steps: int, warmup: int, extra: tuple[str, ...] = ()) -> dict:
    from quicktune.backend import load_backend

    backend = load_backend()  # first: it imports Unsloth before transformers, as quicktune's CLI does
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import prepare_data, train, training_rows

    recipe = load_recipe(RECIPE, [*recipe_overrides(steps), *extra])
    # train() prepares its rows itself, with the code loaded here: they must be the rows the other two get
    expected = json.loads((workdir / "prepare.json").read_text())["rows_sha256"]
    if rows_sha256(training_rows(prepare_data(recipe).train_tokens)) != expected:
        raise RuntimeError("quicktune prepared other rows than the prepare step did (code changed meanwhile?)")
    timer = step_timer()
    result = train(recipe, runs_root=workdir / "runs", extra_callbacks=(timer,))
    return {"backend": f"{backend.name} ({backend.device})", "status": result.status, **timer.summary(warmup)}


def run_unsloth(workdir: Path, steps: int, warmup: int) -> dict:
    import torch
    import unsloth  # noqa: F401  (first: it patches transformers, trl and peft)
    from datasets import Dataset
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    prepared = json.loads((workdir / "prepare.json").read_text())
    rows = json.loads((workdir / "rows.json").read_text())
    model, tokenizer = FastLanguageModel.from_pretrained(
        prepared["model_dir"], max_seq_length=SEQ_LEN, load_in_4bit=False, dtype=torch.float32,
        use_gradient_checkpointing=False,
    )
    model = FastLanguageModel.get_peft_model(
        model, r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS,
        use_gradient_checkpointing=False,  # its default, "unsloth", would turn checkpointing on
        random_state=SEED,
    )
    timer = step_timer()
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         args=sft_config(workdir / "unsloth-out", steps), callbacks=[timer])
    trainer.train()
    return timer.summary(warmup)


def run_trl(workdir: Path, steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ModelLossSFTTrainer = model_loss_sft_trainer()  # noqa: N806 - a class (built in bench/common.py), named as one

    prepared = json.loads((workdir / "prepare.json").read_text())
    rows = json.loads((workdir / "rows.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(prepared["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(prepared["model_dir"])
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    timer = step_timer()
    trainer = ModelLossSFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                                  args=sft_config(workdir / "trl-out", steps), callbacks=[timer])
    trainer.train()
    if "unsloth" in sys.modules:
        raise RuntimeError("unsloth was imported in the plain TRL process")
    return timer.summary(warmup)


def run_last15(workdir: Path, steps: int, warmup: int) -> dict:
    return run_quicktune(workdir, steps, warmup, (f"lora.last_layers={LAST_LAYERS}",))


CHILDREN = {"prepare": run_prepare, "quicktune": run_quicktune, "unsloth": run_unsloth, "trl": run_trl,
            "last15": run_last15}


def child_main(name: str, workdir: Path, steps: int, warmup: int) -> None:
    result = CHILDREN[name](workdir, steps, warmup)
    (workdir / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- run in the (small) parent


def run_child(name: str, workdir: Path, steps: int, warmup: int, threads: int | None) -> dict:
    """One child process: its result, wall seconds and its own peak RSS (``wait4``)."""
    argv = python_argv(__file__, "--child", name, "--workdir", str(workdir), "--steps", str(steps),
                       "--warmup", str(warmup))
    try:
        return run_bench_child(name, argv, workdir, child_env(threads))
    except ChildFailed as failed:
        sys.exit(str(failed))


def ratio(results: dict, name: str, baseline: str) -> float | None:
    if name in results and baseline in results:
        return results[name]["median_s_per_step"] / results[baseline]["median_s_per_step"]
    return None


def print_report(report: dict) -> None:
    prepared, results = report["data"], report["contenders"]
    print(f"\n{report['steps']} steps each, median of the last {report['steps'] - report['warmup']} "
          f"(after {report['warmup']} warm-up); wall seconds per optimizer step")
    print(f"{prepared['rows']} demo train rows, {prepared['mean_tokens_per_row']:.1f} tokens/row "
          f"({prepared['mean_trained_tokens_per_row']:.1f} trained), batch {BATCH}, {os.cpu_count()} CPUs, "
          f"load average before/after {report['load_average_before_after'][0]:.2f} / "
          f"{report['load_average_before_after'][1]:.2f}\n")
    print(f"{'contender':<18} {'s/step':>7} {'min-max':>11} {'cpu s':>6} {'tok/step':>9} {'tok/s':>6} "
          f"{'RSS MB':>7} {'child s':>8}  optimizer, precision")
    for name, row in results.items():
        spread = f"{row['min_s_per_step']:.2f}-{row['max_s_per_step']:.2f}"
        print(f"{LABELS[name]:<18} {row['median_s_per_step']:>7.3f} {spread:>11} {row['median_cpu_s_per_step']:>6.2f} "
              f"{row['tokens_per_step']:>9.1f} {row['tokens_per_s']:>6.0f} {row['peak_rss_mb']:>7.0f} "
              f"{row['child_wall_s']:>8.1f}  {row['optimizer']}, {row['precision']}")
    print()
    step_tokens = {name: [s["tokens"] for s in row["steps"]] for name, row in results.items()}
    same = len({tuple(tokens) for tokens in step_tokens.values()}) == 1
    print(f"same tokens in every step across contenders: {'yes' if same else 'NO'}")
    print("first loss: " + ", ".join(f"{name} {row['losses'][0]:.4f}" for name, row in results.items()
                                     if row["losses"]))
    ratios = report["ratios"]
    if ratios["quicktune_vs_unsloth"] is not None:
        value = ratios["quicktune_vs_unsloth"]
        verdict = "met" if value <= QUICKTUNE_GOAL else "NOT met"
        print(f"quicktune / raw Unsloth: {value:.3f}x  (goal <= {QUICKTUNE_GOAL}x: {verdict})")
    if ratios["trl_vs_unsloth"] is not None:
        print(f"plain TRL / raw Unsloth: {ratios['trl_vs_unsloth']:.3f}x  "
              f"(FACTS.md measured {FACTS_TRL_VS_UNSLOTH}x at batch 2)")
    if ratios.get("last15_vs_quicktune") is not None:
        print(f"quicktune, lora.last_layers={LAST_LAYERS} / quicktune: {ratios['last15_vs_quicktune']:.3f}x")
    for name, row in results.items():
        used = row["median_cpu_s_per_step"] / row["median_s_per_step"]
        if row["torch_threads"] > 1 and used < 0.75 * row["torch_threads"]:
            print(f"warning: {name} steps used {used:.2f} CPU-seconds per second on {row['torch_threads']} threads: "
                  "other processes had the cores, and torch's threads wait for each other; not a clean timing")
    share = prepared["pad_share"]
    print(f"\npad share, batches of {BATCH} in dataset order (TRL's DataCollatorForLanguageModeling):")
    for key, label in (("padded", "rows, padded"), ("packed_bfd_padding_free", "packed bfd, padding-free"),
                       ("packed_bfd_padded", "packed bfd, padded")):
        row = share[key]
        print(f"  {label:<26} {row['pad_share']:6.1%} pad  {row['batches']:>3} batches  "
              f"{row['tokens_per_batch']:>7.1f} tokens/batch")
    print(f"  ({share['packed_rows']} packed rows of <= {SEQ_LEN} tokens, {share['packed_fill']:.1%} full)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per contender (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median (default 2)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all, in that order)")
    parser.add_argument("--threads", type=int, help="torch threads per child (OMP_NUM_THREADS; default: torch's, "
                        "one per core). 1 keeps timings usable on a machine other work is using")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, run folder), print where")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.workdir, args.steps, args.warmup)
        return
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.warmup < 0 or args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup, and --warmup at least 0")
    chosen = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown or not chosen:
        parser.error(f"--contenders: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(CONTENDERS)}")

    workdir = Path(tempfile.mkdtemp(prefix="quicktune-train-speed-"))
    try:
        load_before = os.getloadavg()
        prepared = run_child("prepare", workdir, args.steps, args.warmup, args.threads)
        results = {name: run_child(name, workdir, args.steps, args.warmup, args.threads) for name in chosen}
        load_after = os.getloadavg()
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "benchmark": "train_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(PACKAGES),
        "steps": args.steps,
        "warmup": args.warmup,
        "threads_requested": args.threads,
        "settings": {"recipe": RECIPE, **RECIPE_SETTINGS},
        "load_average_before_after": [load_before[0], load_after[0]],
        "data": prepared,
        "contenders": results,
        "ratios": {
            "quicktune_vs_unsloth": ratio(results, "quicktune", "unsloth"),
            "trl_vs_unsloth": ratio(results, "trl", "unsloth"),
            "last15_vs_quicktune": ratio(results, "last15", "quicktune"),
            "quicktune_goal": QUICKTUNE_GOAL,
        },
        "benchmark_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_report(report)
    print(f"(this benchmark process: {report['benchmark_process_peak_rss_mb']:.0f} MB peak RSS)")
    save_results("train_speed", report)


if __name__ == "__main__":
    main()
