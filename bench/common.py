"""What the benchmarks share: package versions, results/<name>.json, child processes, a step timer.

Nothing here imports torch at module level: the parent processes of the benchmarks stay small,
and the training children import their stack (Unsloth first, or never) before calling in here.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def versions(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def save_results(name: str, report: dict, path: Path | None = None, quiet: bool = False) -> Path:
    """Write the report to results/<name>.json (or ``path``) whole: a reader never sees half a file."""
    out = Path(path) if path is not None else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, out)
    if not quiet:
        print(f"\nwrote {out}")
    return out


# ---------------------------------------------------------------- child processes


class ChildFailed(RuntimeError):
    def __init__(self, name: str, returncode: int, log: Path, tail: str):
        super().__init__(f"child {name} exited {returncode}; the end of {log}:\n{tail}")
        self.name, self.returncode, self.log = name, returncode, log


def run_child(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> dict:
    """Run one benchmark child, its output in ``workdir/<name>.log``; it writes ``workdir/<name>.json``.

    Returns that JSON with the child's wall seconds and its own peak RSS (``wait4``: the
    child's ru_maxrss, not the maximum over every child so far).
    """
    log = workdir / f"{name}.log"
    print(f"running {name} ...", flush=True)
    with log.open("wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(encoding="utf-8", errors="replace")
    if returncode != 0:
        raise ChildFailed(name, returncode, log, text[-4000:])
    result = json.loads((workdir / f"{name}.json").read_text())
    notices = sorted({line.strip() for line in text.splitlines() if line.lstrip().startswith("Unsloth")})
    # ru_maxrss is in KiB on Linux
    return {**result, "child_wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "unsloth_notices": notices}


def child_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op thread count
    env.update(extra)
    return env


def python_argv(script: str | Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


# ---------------------------------------------------------------- inside the training children


def step_timer():
    """A TrainerCallback that times every optimizer step; import after the training stack.

    On CUDA it synchronizes at both ends of a step, so the time is the GPU's work and not only
    the launching of it, and it records the memory torch allocated: after the model and its
    adapter are loaded (at ``on_train_begin``), the peak until then (loading), and the peak
    from there to the end of training.
    """
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[dict] = []
            self.losses: list[float] = []
            self.optim = None
            self.precision = None
            self.memory: dict[str, float] = {}
            self.began = None  # perf_counter at on_train_begin: model, adapter and data are ready
            self.batching: dict = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()
            # Trainer then adds each batch's attention_mask.sum() to state.num_input_tokens_seen
            # before on_step_end; it is set here so quicktune's own SFTConfig stays untouched.
            args.include_num_input_tokens_seen = "non_padding"
            self.optim = str(getattr(args.optim, "value", args.optim))
            self.precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32"
            # Unsloth may switch padding-free batching on by itself when SFTConfig leaves it unset
            self.batching = {key: getattr(args, key, None) for key in ("packing", "padding_free")}
            if cuda:
                torch.cuda.synchronize()
                self.memory = {
                    "loaded_allocated_gib": torch.cuda.memory_allocated() / 2**30,
                    "load_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                    "load_peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
                }
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self._start = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            wall, cpu, tokens = self._start
            self.steps.append({
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "tokens": state.num_input_tokens_seen - tokens,
            })

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                self.memory["train_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                self.memory["train_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

        def summary(self, warmup: int) -> dict:
            timed = self.steps[warmup:]
            if not timed:
                raise RuntimeError(f"only {len(self.steps)} step(s) ran, none left after {warmup} warm-up step(s)")
            median_s = statistics.median(s["wall_s"] for s in timed)
            tokens = statistics.fmean(s["tokens"] for s in timed)
            return {
                "median_s_per_step": median_s,
                "min_s_per_step": min(s["wall_s"] for s in timed),
                "max_s_per_step": max(s["wall_s"] for s in timed),
                "median_cpu_s_per_step": statistics.median(s["cpu_s"] for s in timed),
                "tokens_per_step": tokens,
                "tokens_per_s": tokens / median_s,
                "optimizer": self.optim,
                "precision": self.precision,
                "batching": self.batching,
                "torch_threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                "memory": self.memory,
                "losses": self.losses,
                "steps": self.steps,
            }

    return StepTimer()


def model_loss_sft_trainer():
    """TRL's SFTTrainer with the model's own loss (full logits, transformers' ForCausalLMLoss).

    TRL 1.15's compute_loss always runs its fused LM head, a Triton kernel with no CPU driver
    ("0 active drivers" where triton is installed); overriding compute_loss is what TRL's own
    deprecation notice for compute_loss_func recommends. use_cache=False as TRL's sets it.
    Only for the CPU: on CUDA the stock SFTTrainer runs.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ModelLossSFTTrainer


def contender_parser(description: str, names: tuple[str, ...], steps: int, warmup: int):
    """The command line of a two-contender speed bench (dpo_speed, grpo_speed): --steps, --warmup,
    --threads, --only, and the --child/--workdir a child is started with."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for each child")
    parser.add_argument("--child", choices=names)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", choices=names, nargs="+", default=list(names))
    return parser


def run_contenders(script: str | Path, args, workdir: Path) -> tuple[dict, dict, dict]:
    """Each contender of ``args.only`` in its own child, one after the other: their results, their
    failures (the child's output tail) and the 1-minute load average before and after each."""
    import os

    results, failures, load = {}, {}, {}
    for name in args.only:
        argv = python_argv(script, "--child", name, "--workdir", str(workdir), "--steps", str(args.steps),
                           "--warmup", str(args.warmup))
        before = os.getloadavg()[0]
        try:
            results[name] = run_child(name, argv, workdir, env=child_env(args.threads, HF_HUB_OFFLINE="1"))
        except ChildFailed as exc:
            failures[name] = str(exc)[-1500:]
            print(exc)
        load[name] = (round(before, 2), round(os.getloadavg()[0], 2))
    return results, failures, load

