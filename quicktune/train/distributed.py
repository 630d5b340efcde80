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
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

FORWARDED_WITHIN_S = 5.0  # a second SIGINT this soon after the first is the same Ctrl-C, forwarded


def split_batch(batch_size: int, grad_accumulation: int, processes: int) -> tuple[int, int]:
    """(rows per process per micro-batch, accumulation steps) that keep the global batch."""
    if processes == 1:
        return batch_size, grad_accumulation
    if grad_accumulation % processes == 0:
        return batch_size, grad_accumulation // processes
    if batch_size % processes == 0:
        return batch_size // processes, grad_accumulation
    raise QuicktuneError(
        f"training.batch_size x grad_accumulation = {batch_size} x {grad_accumulation} rows per step cannot be "
        f"split evenly over {processes} processes",
        hint=f"Make training.grad_accumulation or training.batch_size a multiple of {processes}.",
    )


@dataclass
class Ranks:
    """This process's place among the training processes (accelerate's PartialState)."""

    state: Any
    processes: int
    device: str  # "cuda" or "cpu"

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def ddp_backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    def wait(self) -> None:
        self.state.wait_for_everyone()

    def main_first(self):
        return self.state.main_process_first()

    def from_main(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        from accelerate.utils import broadcast_object_list

        if self.processes == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any: one decision for all (Ctrl-C)."""
        import torch
        import torch.distributed as dist

        if self.processes == 1:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=self.state.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def describe(self, training) -> dict[str, Any]:
        """For the manifest: how the run was spread over processes."""
        batch, accumulation = split_batch(training.batch_size, training.grad_accumulation, self.processes)
        return {"processes": self.processes, "launcher": "accelerate launch (DDP)", "device": self.device,
                "ddp_backend": self.ddp_backend, "batch_per_process": batch,
                "grad_accumulation_per_process": accumulation}


def main_first(ranks: Ranks | None):
    """The main process runs the block first (cache writes), then the others; no-op alone."""
    return contextlib.nullcontext() if ranks is None else ranks.main_first()


def on_main(ranks: Ranks | None, work: Callable[[], Any]) -> Any:
    """``work()`` on the main process only; its result, or its QuicktuneError, on every process."""
    if ranks is None:
        return work()
    outcome: Any = None
    if ranks.is_main:
        try:
            outcome = work()
        except QuicktuneError as exc:
            outcome = exc
    outcome = ranks.from_main(outcome)
    if isinstance(outcome, QuicktuneError):
        raise outcome
    return outcome


def process_args(training, ranks: Ranks | None) -> tuple[int, int, dict[str, Any]]:
    """Per-process batch, accumulation steps, and the DDP settings of the trainer's arguments."""
    if ranks is None:
        return training.batch_size, training.grad_accumulation, {}
    batch, accumulation = split_batch(training.batch_size, training.grad_accumulation, ranks.processes)
    if ranks.processes == 1:
        return batch, accumulation, {}
    # Every LoRA weight gets a gradient at every step: no search for unused ones.
    return batch, accumulation, {"ddp_backend": ranks.ddp_backend, "ddp_find_unused_parameters": False}


def join_processes() -> Ranks:
    """Inside a launched process: join the others (call after ``load_backend``)."""
    import torch
    from accelerate import PartialState

    device = "cuda" if torch.cuda.is_available() else "cpu"
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one process is launched without torchrun
    backend = ("nccl" if device == "cuda" else "gloo") if several else None
    state = PartialState(cpu=device == "cpu", backend=backend)
    return Ranks(state, state.num_processes, device)


def stop_on_interrupt_callback(ranks: Ranks):
    """Ctrl-C reaches every process, but not at the same step: stop (and save) together."""
    from quicktune.train.callbacks import StopOnInterrupt

    class StopTogether(StopOnInterrupt):
        first = 0.0

        def _handler(self, signum, frame):
            # One Ctrl-C reaches a process twice: from the terminal and forwarded by torchrun's agent.
            if self.requested and time.monotonic() - self.first < FORWARDED_WITHIN_S:
                return
            self.first = self.first or time.monotonic()
            super()._handler(signum, frame)

        def on_step_end(self, args, state, control, **kwargs):
            self.requested = ranks.any(self.requested)
            return super().on_step_end(args, state, control, **kwargs)

    return StopTogether()


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
    from quicktune.train.trainer import TrainResult

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

    from quicktune.train.backend import load_backend

    load_backend(unsloth=False)  # before transformers; every process on the same plain stack
    ranks = join_processes()
    from quicktune.console import console
    from quicktune.recipe import load_recipe
    from quicktune.train.runs import write_atomic
    from quicktune.train.trainer import train

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        result = train(recipe, runs_root=Path(args.runs_dir), parent_ref=args.parent,
                       console=console if ranks.is_main else None, ranks=ranks,
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
