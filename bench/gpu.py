"""QLoRA on a random-weight Llama 3.1 8B: quicktune vs raw Unsloth vs plain TRL + PEFT + bitsandbytes.

Tokens/s and peak VRAM of the same training job done three ways, each in its own child
process, one after the other, and `quicktune plan`'s prediction next to each measured peak:

- quicktune: quicktune.train.trainer.train() on a generated recipe (Unsloth backend);
- unsloth:   import unsloth; FastLanguageModel (4-bit) + get_peft_model + TRL's SFTTrainer;
- trl:       transformers + BitsAndBytesConfig (NF4, double quantization) + peft
             (prepare_model_for_kbit_training, LoRA) + TRL's SFTTrainer; unsloth never imported.

The model is Llama-3.1-8B's architecture (LLAMA_31_8B below, from meta-llama/Llama-3.1-8B's
config.json) with random weights from a fixed seed: nothing is downloaded, and speed and memory
do not depend on the weights' values. A prepare child builds it once on the GPU in bf16 and saves
it (~16 GB; reused by --model-dir when its config matches), with a small byte-level BPE tokenizer
trained on the fly (the embedding and LM head keep all 128,256 rows), and training rows of random
words longer than the sequence length, so every row is cut to exactly --seq tokens: each step is
batch x seq tokens with no padding. Every way trains on quicktune's own tokenized rows (checked
by sha256). LoRA r=16 alpha=16 on the 7 projections, seq 2048, batch 2, adamw_8bit, gradient
checkpointing on, packing off, bf16.

    python bench/gpu.py [--steps 13] [--warmup 3] [--ways quicktune,unsloth,trl] [--model-dir DIR]
    python bench/gpu.py --smoke   # a tiny Llama on the CPU: the same code path, in the tests

Prints a table and writes bench/results/gpu.json (--smoke: gpu_smoke.json; --json PATH elsewhere),
rewritten after each way so a run cut short keeps what it measured. See bench/README.md, "GPU".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from common import (
    ChildFailed,
    child_env,
    model_loss_sft_trainer,
    python_argv,
    run_child,
    save_results,
    step_timer,
    versions,
)

REPO = Path(__file__).resolve().parent.parent
WAYS = ("quicktune", "unsloth", "trl")
LABELS = {"quicktune": "quicktune", "unsloth": "raw Unsloth", "trl": "plain TRL + PEFT + bnb"}
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "unsloth",
            "unsloth_zoo", "xformers", "triton", "tokenizers")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 3407
LORA_R = 16
LORA_ALPHA = 16
LR = 2e-4
WARMUP_RATIO = 0.03
TOKENIZER_VOCAB = 4096  # the BPE's own vocabulary; the model's embedding keeps vocab_size rows

# meta-llama/Llama-3.1-8B config.json (token ids are set from the generated tokenizer).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 128256,
}
# The same architecture, small enough for two CPU cores (hidden a multiple of 64 for NF4 blocks; a smaller
# vocabulary, still above the tokenizer's, because the LM head would be most of a CPU step).
SMOKE_LLAMA = {**LLAMA_31_8B, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 8192}

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": "<|im_start|>"}


@dataclass(frozen=True)
class Profile:
    name: str
    config: dict
    seq: int
    batch: int
    steps: int
    warmup: int
    optimizer: str
    needs_cuda: bool


GPU = Profile("gpu", LLAMA_31_8B, seq=2048, batch=2, steps=13, warmup=3, optimizer="adamw_8bit", needs_cuda=True)
# bitsandbytes' 8-bit optimizers need CUDA (Unsloth's CPU path swaps them for adamw_torch_fused itself).
SMOKE = Profile("gpu_smoke", SMOKE_LLAMA, seq=128, batch=2, steps=3, warmup=1, optimizer="adamw_torch",
                needs_cuda=False)


def recipe_yaml(profile: Profile, model_dir: Path, train_file: Path, method: str) -> str:
    recipe = {
        "name": "gpu-bench",
        "description": f"bench/gpu.py: {profile.name}",
        "method": method,
        "model": {"base": str(model_dir), "max_seq_length": profile.seq, "dtype": "auto"},
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "target_modules": PROJECTIONS},
        "data": {"train": [str(train_file)], "eval": [], "dedupe": "none"},
        "training": {
            "max_steps": profile.steps, "batch_size": profile.batch, "grad_accumulation": 1,
            "learning_rate": LR, "lr_scheduler": "linear", "warmup_ratio": WARMUP_RATIO, "weight_decay": 0.0,
            "optimizer": profile.optimizer, "gradient_checkpointing": True, "packing": False, "seed": SEED,
            "logging_every": 1, "save_every": 1_000_000,
        },
    }
    return json.dumps(recipe, indent=1)  # JSON is YAML


# ---------------------------------------------------------------- run inside the children


def words(rng: random.Random, count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def build_tokenizer(folder: Path, vocabulary: list[str], rng: random.Random):
    """A byte-level BPE trained on the benchmark's own words, saved with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(rng.choices(vocabulary, k=200)) for _ in range(200)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=sorted(set(SPECIAL.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL, model_max_length=131072)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def write_rows(path: Path, vocabulary: list[str], rng: random.Random, count: int, seq: int) -> None:
    """Chat rows whose answers are longer than seq tokens (every word is at least one token)."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            answer = " ".join(rng.choices(vocabulary, k=seq + 64))
            row = {"messages": [{"role": "user", "content": f"Row {index}: go on."},
                                {"role": "assistant", "content": answer}]}
            out.write(json.dumps(row) + "\n")


def model_fingerprint(config: dict, dtype: str) -> str:
    identity = json.dumps({"config": config, "seed": SEED, "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()


def build_model(model_dir: Path, config: dict, cuda: bool) -> dict:
    """Random weights from the config and seed, saved once; an existing matching folder is reused."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    marker = model_dir / "bench-gpu.json"
    dtype = torch.bfloat16 if cuda else torch.float32
    fingerprint = model_fingerprint(config, str(dtype))
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return {**json.loads(marker.read_text()), "reused": True}
    for stale in model_dir.glob("*.safetensors*"):
        stale.unlink()
    torch.manual_seed(SEED)
    start = time.perf_counter()
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=dtype)
    if cuda:
        torch.cuda.synchronize()
    built = time.perf_counter() - start
    start = time.perf_counter()
    model.save_pretrained(str(model_dir))
    saved = time.perf_counter() - start
    info = {
        "fingerprint": fingerprint,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "build_s": built,
        "save_s": saved,
        "bytes_on_disk": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")),
    }
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def rows_sha256(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


def run_prepare(workdir: Path, profile: Profile, options: dict) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if profile.needs_cuda and not cuda:
        sys.exit("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "on a CPU run `bench/gpu.py --smoke`")
    model_dir = Path(options["model_dir"])
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    vocabulary = words(rng, 3000)
    tokenizer = build_tokenizer(model_dir, vocabulary, rng)
    config = {**profile.config, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id}
    model = build_model(model_dir, config, cuda)
    train_file = workdir / "train.jsonl"
    # one spare batch: the rows of the last step are never short
    write_rows(train_file, vocabulary, rng, (profile.steps + 1) * profile.batch, profile.seq)
    for method in ("qlora", "lora"):
        (workdir / f"recipe-{method}.yaml").write_text(recipe_yaml(profile, model_dir, train_file, method))

    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import prepare_data, training_rows

    rows = training_rows(prepare_data(load_recipe(str(workdir / "recipe-qlora.yaml"))).train_tokens)
    short = [len(row["input_ids"]) for row in rows if len(row["input_ids"]) != profile.seq]
    if short:
        raise RuntimeError(f"{len(short)} row(s) are not {profile.seq} tokens long: {short[:5]}")
    (workdir / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    return {
        "model_dir": str(model_dir),
        "model": model,
        "tokenizer_vocab": len(tokenizer),
        "rows": len(rows),
        "tokens_per_row": profile.seq,
        "trained_tokens_per_row": sum(x != -100 for x in rows[0]["labels"]),
        "rows_sha256": rows_sha256(rows),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def compute_dtype():
    """What quicktune's dtype "auto" picks: bf16 (fp16 without it) on CUDA, float32 on the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def sft_config(profile: Profile, output_dir: Path):
    """What quicktune.train.config.sft_config gives for the generated recipe, minus checkpoints."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=profile.batch,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP_RATIO,
        weight_decay=0.0,
        optim=profile.optimizer,
        max_steps=profile.steps,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        max_length=profile.seq,
        packing=False,
        bf16=bf16,  # SFTConfig's default is bf16=True, i.e. bf16 autocast even on a CPU that has bf16
        fp16=cuda and not bf16,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        gradient_checkpointing=False,  # turned on by Unsloth / peft below, as quicktune does
        dataloader_num_workers=0,
    )


def run_quicktune(workdir: Path, profile: Profile, options: dict) -> dict:
    from quicktune.backend import load_backend

    backend = load_backend()  # first: it imports Unsloth before transformers, as quicktune's CLI does
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import prepare_data, train, training_rows

    recipe = load_recipe(str(workdir / f"recipe-{options['quicktune_method']}.yaml"))
    expected = json.loads((workdir / "prepare.json").read_text())["rows_sha256"]
    if rows_sha256(training_rows(prepare_data(recipe).train_tokens)) != expected:
        raise RuntimeError("quicktune prepared other rows than the prepare step did")
    timer = step_timer()
    result = train(recipe, runs_root=workdir / "runs", extra_callbacks=(timer,))
    return {"backend": f"{backend.name} ({backend.device})", "method": recipe.method, "status": result.status,
            "setup_s": timer.began - options["t0"], **timer.summary(profile.warmup)}


def run_unsloth(workdir: Path, profile: Profile, options: dict) -> dict:
    import torch
    import unsloth  # noqa: F401  (first: it patches transformers, trl and peft)
    from datasets import Dataset
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    model_dir = json.loads((workdir / "prepare.json").read_text())["model_dir"]
    rows = json.loads((workdir / "rows.json").read_text())
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_dir, max_seq_length=profile.seq, load_in_4bit=True,
        dtype=None if torch.cuda.is_available() else compute_dtype(),  # None: Unsloth picks, bf16 on an H200
    )
    model = FastLanguageModel.get_peft_model(
        model, r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS,
        use_gradient_checkpointing="unsloth", random_state=SEED,
    )
    timer = step_timer()
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         args=sft_config(profile, workdir / "unsloth-out"), callbacks=[timer])
    trainer.train()
    return {"backend": "unsloth", "method": "qlora", "setup_s": timer.began - options["t0"],
            **timer.summary(profile.warmup)}


def run_trl(workdir: Path, profile: Profile, options: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    cuda = torch.cuda.is_available()
    model_dir = json.loads((workdir / "prepare.json").read_text())["model_dir"]
    rows = json.loads((workdir / "rows.json").read_text())
    dtype = compute_dtype()
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=dtype,
                                                 device_map={"": 0} if cuda else None)
    # use_reentrant explicitly: torch warns without it; the non-reentrant form is what torch recommends
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    trainer_class = SFTTrainer if cuda else model_loss_sft_trainer()  # TRL's fused LM head needs a GPU
    timer = step_timer()
    trainer = trainer_class(model=model, processing_class=AutoTokenizer.from_pretrained(model_dir),
                            train_dataset=Dataset.from_list(rows), args=sft_config(profile, workdir / "trl-out"),
                            callbacks=[timer])
    trainer.train()
    if "unsloth" in sys.modules:
        raise RuntimeError("unsloth was imported in the plain TRL process")
    return {"backend": "transformers + peft + bitsandbytes", "method": "qlora", "setup_s": timer.began - options["t0"],
            "trainer": trainer_class.__name__, **timer.summary(profile.warmup)}


CHILDREN = {"prepare": run_prepare, "quicktune": run_quicktune, "unsloth": run_unsloth, "trl": run_trl}


def child_main(name: str, workdir: Path, profile: Profile, options: dict) -> None:
    result = CHILDREN[name](workdir, profile, options)
    (workdir / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- run in the (small) parent


def predictions(recipe_file: Path, quicktune_method: str) -> dict:
    """`quicktune plan` for the generated recipe, and its estimate for each way's settings."""
    from quicktune.plan import GIB, estimate, make_plan
    from quicktune.recipe import load_recipe

    plan = make_plan(load_recipe(str(recipe_file)))
    per_way = {
        "quicktune": replace(plan.settings, method=quicktune_method),
        "unsloth": plan.settings,
        "trl": replace(plan.settings, unsloth=False),  # plain transformers keeps checkpoints and full logits
    }
    out = {"arch": asdict(plan.arch), "settings": asdict(plan.settings)}
    for way, settings in per_way.items():
        result = estimate(plan.arch, settings)
        out[way] = {"settings": asdict(settings), "total_gib": result.total / GIB,
                    "parts_gib": {part: value / GIB for part, value in result.parts.items()}}
    return out


def measured_peak_gib(row: dict) -> tuple[float, float] | None:
    memory = row.get("memory") or {}
    if "train_peak_allocated_gib" not in memory:
        return None
    allocated = max(memory["train_peak_allocated_gib"], memory["load_peak_allocated_gib"])
    reserved = max(memory["train_peak_reserved_gib"], memory["load_peak_reserved_gib"])
    return allocated, reserved


def print_table(report: dict) -> None:
    profile, prepared, results = report["profile"], report["prepare"], report["ways"]
    model = prepared["model"]
    print(f"\n{profile['name']}: random Llama ({model['parameters'] / 1e6:,.1f} M parameters, "
          f"{report['config']['num_hidden_layers']} layers), LoRA r={LORA_R} on 7 projections, "
          f"batch {profile['batch']} x {profile['seq']} tokens, {profile['optimizer']}, gradient checkpointing; "
          f"{profile['steps']} steps, median of the last {profile['steps'] - profile['warmup']}")
    where = prepared["gpu"] or f"CPU ({os.cpu_count()} cores)"
    made = "reused" if model["reused"] else f"built in {model['build_s']:.1f} s, saved in {model['save_s']:.1f} s"
    print(f"on {where}; model {made} ({model['bytes_on_disk'] / 2**30:.2f} GiB on disk)\n")
    print(f"{'way':<24} {'backend':<20} {'s/step':>7} {'tok/s':>8} {'peak alloc':>10} {'reserved':>9} "
          f"{'plan':>7} {'alloc/plan':>10} {'setup s':>8} {'RSS GB':>7}")
    for way, row in results.items():
        plan = report["plan"][way]["total_gib"]
        peak = measured_peak_gib(row)
        alloc, reserved, ratio = (f"{peak[0]:.2f}", f"{peak[1]:.2f}", f"{peak[0] / plan:.2f}x") if peak else ("-",) * 3
        backend = row["backend"] if way == "quicktune" else way
        print(f"{LABELS[way]:<24} {backend[:20]:<20} {row['median_s_per_step']:>7.3f} {row['tokens_per_s']:>8.0f} "
              f"{alloc:>10} {reserved:>9} {plan:>7.2f} {ratio:>10} {row['setup_s']:>8.1f} "
              f"{row['peak_rss_mb'] / 1024:>7.1f}")
    print("(GiB; peak = the larger of loading and training; plan = quicktune.plan.estimate for the way's settings)")
    expected = profile["batch"] * profile["seq"]
    for way, row in results.items():
        if any(step["tokens"] != expected for step in row["steps"]):
            print(f"note: {way}: non-pad tokens per step {sorted({s['tokens'] for s in row['steps']})}, "
                  f"expected {expected}")
        if way == "quicktune" and report["cuda"] and not row["backend"].startswith("unsloth"):
            print(f"WARNING: quicktune trained with {row['backend']}, not Unsloth: see the child's log")
    if "unsloth" in results and "quicktune" in results:
        print(f"quicktune / raw Unsloth tokens/s: "
              f"{results['quicktune']['tokens_per_s'] / results['unsloth']['tokens_per_s']:.3f}")
    if "unsloth" in results and "trl" in results:
        print(f"raw Unsloth / plain TRL tokens/s: "
              f"{results['unsloth']['tokens_per_s'] / results['trl']['tokens_per_s']:.3f}")
    print("first loss: " + ", ".join(f"{way} {row['losses'][0]:.4f}" for way, row in results.items() if row["losses"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU, same code path (seconds)")
    parser.add_argument("--steps", type=int, help="optimizer steps per way (default 13; --smoke 3)")
    parser.add_argument("--warmup", type=int, help="first steps left out of the median (default 3; --smoke 1)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated subset of {','.join(WAYS)}")
    parser.add_argument("--quicktune-method", choices=("qlora", "lora"), default="qlora",
                        help="quicktune's method; lora (16-bit) where quicktune refuses qlora without CUDA")
    parser.add_argument("--model-dir", type=Path, help="where to save the random model, reused when its config "
                        "matches (default: inside the work folder, removed at the end)")
    parser.add_argument("--json", type=Path, help="results file (default bench/results/gpu.json or gpu_smoke.json)")
    parser.add_argument("--logs", type=Path, help="copy each child's log and JSON here at the end (even on failure)")
    parser.add_argument("--threads", type=int, help="torch threads per child (OMP_NUM_THREADS)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder, print where")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    base = SMOKE if args.smoke else GPU
    profile = replace(base, steps=args.steps or base.steps,
                      warmup=base.warmup if args.warmup is None else args.warmup)
    if args.child:
        options = {**json.loads(args.options), "t0": time.perf_counter()}
        child_main(args.child, args.workdir, profile, options)
        return
    if profile.warmup < 0 or profile.steps <= profile.warmup:
        parser.error("--steps must be larger than --warmup, and --warmup at least 0")
    ways = [name.strip() for name in args.ways.split(",") if name.strip()]
    if not ways or set(ways) - set(WAYS):
        parser.error(f"--ways: choose from {', '.join(WAYS)}")

    workdir = Path(tempfile.mkdtemp(prefix="quicktune-bench-gpu-"))
    model_dir = args.model_dir.resolve() if args.model_dir else workdir / "model"
    options = {"model_dir": str(model_dir), "quicktune_method": args.quicktune_method}
    # quicktune runs from this checkout without being installed (the GPU machine); nothing may reach a hub
    env = child_env(args.threads, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    report = {
        "benchmark": profile.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(PACKAGES),
        "profile": asdict(profile) | {"config": None},
        "config": profile.config,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": PROJECTIONS},
        "quicktune_method": args.quicktune_method,
        "ways": {},
    }

    def child(name: str) -> dict:
        argv = python_argv(Path(__file__).resolve(), "--child", name, "--workdir", str(workdir),
                           "--options", json.dumps(options),
                           "--steps", str(profile.steps), "--warmup", str(profile.warmup),
                           *(["--smoke"] if args.smoke else []))
        return run_child(name, argv, workdir, env, cwd=workdir)  # Unsloth writes its compile cache into the cwd

    try:
        report["prepare"] = child("prepare")
        report["cuda"] = report["prepare"]["gpu"] is not None
        report["machine"]["gpu"] = report["prepare"]["gpu"]
        report["plan"] = predictions(workdir / f"recipe-{args.quicktune_method}.yaml", args.quicktune_method)
        for name in ways:
            report["ways"][name] = child(name)
            save_results(profile.name, report, args.json, quiet=True)  # a run cut short keeps what it measured
    except ChildFailed as failed:
        report["failed"] = {"child": failed.name, "returncode": failed.returncode}
        if "prepare" in report:
            save_results(profile.name, report, args.json)
        sys.exit(str(failed))
    finally:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for item in [*workdir.glob("*.log"), *workdir.glob("*.json"), *workdir.glob("*.yaml")]:
                shutil.copy2(item, args.logs / item.name)
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report["benchmark_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(report)
    save_results(profile.name, report, args.json)


if __name__ == "__main__":
    main()
