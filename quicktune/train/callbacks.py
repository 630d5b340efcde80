"""Trainer callbacks: live progress, metrics.jsonl, and Ctrl-C as "checkpoint and stop"."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Appends every logged dict to metrics.jsonl, with the step and wall time."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class LiveProgress(TrainerCallback):
    """One rich progress bar: step, loss, eval loss, tokens/s, ETA, GPU memory on CUDA."""

    def __init__(self, console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.fields = {"loss": "-", "eval": "-", "tps": "-", "mem": "", "pref": ""}
        self._last_tokens: tuple[float, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  eval {task.fields[eval]}{task.fields[pref]}  {task.fields[tps]} tok/s"
                       "{task.fields[mem]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, **self.fields)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self.fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.fields["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.fields["eval"] = f"{logs['eval_loss']:.4f}"
        if "rewards/accuracies" in logs:  # dpo / orpo: how often chosen beats rejected, and by how much
            self.fields["pref"] = (f"  pref acc {logs['rewards/accuracies']:.0%}"
                                   f"  margin {logs.get('rewards/margins', float('nan')):.3f}")
        if "frac_reward_zero_std" in logs:  # grpo: the mean reward, and the groups with no signal
            self.fields["pref"] = (f"  reward {logs.get('reward', float('nan')):.3f}"
                                   f"  no signal {logs['frac_reward_zero_std']:.0%}")
        if "num_tokens" in logs:
            now = time.perf_counter()
            if self._last_tokens is not None and now > self._last_tokens[1]:
                rate = (logs["num_tokens"] - self._last_tokens[0]) / (now - self._last_tokens[1])
                self.fields["tps"] = f"{rate:,.0f}"
            self._last_tokens = (logs["num_tokens"], now)
        import torch

        if torch.cuda.is_available():
            self.fields["mem"] = f"  {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        if self.progress is not None:
            self.progress.update(self.task, **self.fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class StopOnInterrupt(TrainerCallback):
    """The first Ctrl-C saves a checkpoint at the end of the current step and stops; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class GroupSignal(TrainerCallback):
    """grpo: warns once (``say``) when most groups scored all their answers the same (TRL's
    ``frac_reward_zero_std`` above ``warn_at`` over the last ``window`` logs): their advantage is 0,
    so nothing is learned from them. ``message(share, step)`` says what to change."""

    def __init__(self, say, message, warn_at: float = 0.75, window: int = 3):
        self.say, self.message, self.warn_at, self.window = say, message, warn_at, window
        self.seen: list[float] = []
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "frac_reward_zero_std" not in logs or self.warned:
            return
        self.seen.append(float(logs["frac_reward_zero_std"]))
        recent = self.seen[-self.window:]
        if len(recent) == self.window and sum(recent) / len(recent) > self.warn_at:
            self.warned = True
            self.say(self.message(sum(recent) / len(recent), state.global_step))
