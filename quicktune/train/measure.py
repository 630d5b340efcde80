"""``quicktune plan --measure``: a few real optimizer steps of a recipe, timed on this machine.

The steps go through the one trainer (``quicktune.train.trainer.train``) with the recipe as it is, except
what only costs time between steps or writes where the user keeps runs: ``training.max_steps`` is the steps
timed plus the warm-up, nothing is evaluated or checkpointed on the way, no reporter is sent to, and the run
folder lives in a temporary folder that is deleted afterwards. The libraries' output goes to a log in the
user cache (``QUICKTUNE_CACHE/measure/library.log``, the last measurement's), as ``train`` sends it to the
run folder. A callback times each optimizer step from ``on_step_begin`` to ``on_step_end`` (as
bench/train_speed.py does; on CUDA after a synchronize); the median after the warm-up is the plan's seconds
per step (``quicktune.plan.MeasuredSteps``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from quicktune.data.tokenizer import cache_dir
from quicktune.errors import QuicktuneError
from quicktune.library_log import LOG_NAME, library_output_to_log
from quicktune.plan import MeasuredSteps
from quicktune.recipe import Recipe

DEFAULT_STEPS = 4
WARMUP_STEPS = 1  # the first step also builds the optimizer's state and warms the allocator
NEVER = 1_000_000  # eval_every, save_every: no eval pass or checkpoint after any measured step


def measuring_recipe(recipe: Recipe, steps: int) -> Recipe:
    """``recipe`` as the measurement trains it: ``steps`` optimizer steps, no eval on the way (the held-out
    rows stay out of training, as they would), no checkpoint, no reporter. Everything that shapes a step
    (model, method, batch, sequence length, LoRA, precision, data) stays."""
    measuring = recipe.model_copy(deep=True)
    measuring.training.max_steps = steps
    measuring.training.save_every = NEVER
    measuring.training.eval_every = NEVER
    measuring.training.early_stopping_patience = None
    measuring.training.report_to = []
    return measuring


def measure_steps(recipe: Recipe, steps: int = DEFAULT_STEPS, warmup: int = WARMUP_STEPS,
                  say=None) -> MeasuredSteps:
    """Train ``warmup + steps`` optimizer steps of ``recipe`` in a temporary run folder (deleted afterwards)
    and return the median seconds per step after the warm-up. ``say``: a print function for the progress
    lines (None: silent)."""
    if steps < 1 or warmup < 0:
        raise QuicktuneError(f"--measure-steps must be at least 1 (got {steps})")
    say = say or (lambda *args, **kwargs: None)
    total = warmup + steps
    say(f"measuring: {total} optimizer steps of {recipe.name} on this machine ({warmup} warm-up), in a "
        "temporary run folder that is deleted afterwards; loading the model and data ...")
    logs = cache_dir() / "measure"  # the libraries' output of the last measurement, named at the end
    (logs / LOG_NAME).unlink(missing_ok=True)
    with library_output_to_log(logs) as log, tempfile.TemporaryDirectory(prefix="quicktune-measure-") as folder:
        log.move_into(logs)
        log.four_bit = bool(recipe.model.load_in_4bit)
        from quicktune.backend import load_backend

        backend = load_backend()  # first: Unsloth before transformers, which the timer's base class imports
        from quicktune.train.trainer import train

        timer = step_timer(total, warmup, say)
        train(measuring_recipe(recipe, total), runs_root=Path(folder) / "runs", extra_callbacks=(timer,),
              new_run=True)
    timed = timer.times[warmup:]
    if not timed:
        raise QuicktuneError(f"the measurement stopped after {len(timer.times)} of {total} steps",
                             hint="Run it again; with a data set this small, lower --measure-steps.")
    return MeasuredSteps(statistics.median(timed), len(timed), warmup, backend.device, tuple(timed))


def step_timer(total: int, warmup: int, say):
    """A TrainerCallback that times every optimizer step and says each one; build it after ``load_backend``."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - self._started
            self.times.append(seconds)
            done = len(self.times)
            say(f"  step {done}/{total}: {seconds:.2f} s{' (warm-up, not counted)' if done <= warmup else ''}")

    return StepTimes()
