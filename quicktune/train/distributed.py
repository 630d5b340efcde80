"""Training on several processes: ``quicktune train RECIPE --gpus N`` (or ``training.gpus: N``).

The command re-runs itself through ``accelerate launch`` (torchrun underneath): one process per
GPU, DDP, NCCL on CUDA. Without CUDA, ``--gpus N`` starts N CPU processes that talk over gloo
(and says so): the same code path, which is how it is tested here. Every process trains on the
plain transformers + peft backend (``load_backend(unsloth=False)``): Unsloth's own multi-GPU
support is limited.

The recipe's global batch (``batch_size x grad_accumulation`` rows per optimizer step) is kept:
the accumulation steps are divided among the processes when they divide evenly, else the
per-process batch, so a recipe trains the same schedule on 1 or N processes. Only the main
process writes the run folder (manifest, metrics, checkpoints, adapter); the others wait for it.
Ctrl-C stops every process at the end of the same step, after a checkpoint, like one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from quicktune.backend import load_backend
from quicktune.console import console as rich_console
from quicktune.errors import QuicktuneError
from quicktune.recipe import load_recipe
from quicktune.runs import write_atomic
from quicktune.train.ranks import join_processes
from quicktune.train.trainer import TrainResult, train

# --------------------------------------------------------------------------- the launching process


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def describe_processes(processes: int, devices: int) -> str:
    if devices:
        return f"{processes} processes, one per GPU, through accelerate launch (DDP over NCCL)"
    return (f"{processes} CPU processes through accelerate launch (DDP over gloo): no CUDA GPU here, "
            f"so --gpus {processes} runs {processes} processes on the CPU")


def launch(recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, processes: int, console, *,
           allow_data_change: bool = False, new_run: bool = False):
    """Train on ``processes`` processes; returns the main process's TrainResult."""
    devices = cuda_devices()
    if devices and processes > devices:
        raise QuicktuneError(f"--gpus {processes}: this machine has {devices} CUDA GPU(s)",
                             hint=f"Use --gpus {devices} or fewer.")
    console.print(f"[bold]{describe_processes(processes, devices)}[/]; plain transformers + peft "
                  "(Unsloth's multi-GPU support is limited)")
    with tempfile.TemporaryDirectory(prefix="quicktune-launch-") as scratch:
        result_file = Path(scratch) / "result.json"
        command = launch_argv(recipe_ref, overrides, runs_dir, parent, processes, result_file)
        command += ["--allow-data-change"] * allow_data_change + ["--new-run"] * new_run
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(_threads(processes))}
        if not devices:
            # accelerate names each CPU process's device "cpu:<index>", and transformers resumes the optimizer
            # with torch.load(map_location=that), which cannot map to "cpu:0"; plain "cpu" is the same memory.
            env["ACCELERATE_TORCH_DEVICE"] = "cpu"
        returncode = _wait_through_interrupts(subprocess.Popen(command, env=env), console)
        outcome = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
    if outcome and outcome.get("error"):
        raise QuicktuneError(outcome["error"], problems=outcome.get("problems") or [], hint=outcome.get("hint"))
    if outcome is None or returncode not in (0, 130):
        raise QuicktuneError(f"the training processes stopped with status {returncode} (see above)")
    return TrainResult(Path(outcome["run_dir"]), outcome["status"], outcome["metrics"], outcome.get("resumed_from"))


def _wait_through_interrupts(process: subprocess.Popen, console) -> int:
    """Ctrl-C reaches the training processes too, and they stop together after saving a checkpoint:
    the launcher waits for that instead of killing them (a second Ctrl-C stops them at once)."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            console.print("[yellow]stopping[/]: the processes save a checkpoint at the end of this step")


def _threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


def launch_argv(recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, processes: int,
                result_file: Path) -> list[str]:
    # --multi_gpu makes accelerate start the processes with torchrun; its --cpu mode starts one
    # process and expects mpirun for more, so CPU processes go the same way and pick gloo themselves.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0"]
    if processes > 1:
        command.append("--multi_gpu")
    command += ["-m", "quicktune.train.distributed", recipe_ref, "--runs-dir", runs_dir,
                "--result", str(result_file)]
    for override in overrides:
        command += ["--set", override]
    if parent:
        command += ["--from", parent]
    return command


# --------------------------------------------------------------------------- a launched process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quicktune.train.distributed", description="One launched training process.")
    parser.add_argument("recipe")
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--from", dest="parent")
    parser.add_argument("--allow-data-change", action="store_true")
    parser.add_argument("--new-run", action="store_true")
    args = parser.parse_args(argv)

    load_backend(unsloth=False)  # before transformers; every process on the same plain stack
    ranks = join_processes()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        result = train(recipe, runs_root=Path(args.runs_dir), parent_ref=args.parent,
                       console=rich_console if ranks.is_main else None, ranks=ranks,
                       allow_data_change=args.allow_data_change, new_run=args.new_run)
        outcome = {"run_dir": str(result.run_dir), "status": result.status, "metrics": result.metrics,
                   "resumed_from": result.resumed_from}
    except QuicktuneError as exc:  # the launcher prints the main process's copy
        outcome = {"error": exc.message, "problems": exc.problems, "hint": exc.hint}
    if ranks.is_main:
        write_atomic(args.result, json.dumps(outcome))
    ranks.wait()
    return 0 if "error" not in outcome else 2


if __name__ == "__main__":
    sys.exit(main())
