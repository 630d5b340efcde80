"""This process's place among the training processes of a ``--gpus N`` run, as the trainer sees it:
the per-process batch, the main process first, one decision for all on Ctrl-C. The launcher that
starts the processes is ``quicktune.train.distributed``."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.recipe import split_batch

FORWARDED_WITHIN_S = 5.0  # a second SIGINT this soon after the first is the same Ctrl-C, forwarded


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
    from quicktune.train.callbacks import StopOnInterrupt  # transformers: imported once training starts

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
