"""Only quicktune's own lines reach the terminal during training; other libraries' output goes to the run's log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMOLLM2

# What torch, Unsloth, bitsandbytes, transformers and TRL print during `quicktune run smollm2-demo` (issue 14).
NOISE = (
    "_pytree",
    "register_constant",
    "kernels-community",
    "Unsloth 20",  # the banner: "Unsloth 2026.10.9: no GPU found, training on CPU ..."
    "no GPU found",
    "Converting and de-quantizing GGUF tensors",
    "Loading weights",
    "Writing model shards",
    "Truncating train dataset",
    "Dropping fully masked examples",
    "it/s]",
)


@pytest.mark.slow
def test_training_prints_only_quicktune_lines_and_logs_the_rest(tiny_data, tmp_path):
    train_file, eval_file = tiny_data
    recipe = tmp_path / "quiet.yaml"
    recipe.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\ntraining:\n  max_steps: 2\n  batch_size: 2\n"
        "  grad_accumulation: 1\n  eval_every: 1\n  warmup_ratio: 0.0\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QUICKTUNE_VERBOSE"}
    done = subprocess.run(
        [sys.executable, "-m", "quicktune", "train", str(recipe), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=1500, env=env, cwd=tmp_path,
    )
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    assert "✓ trained" in done.stdout
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} reached the terminal:\n{shown}"

    log = tmp_path / "runs" / "quiet" / "v1" / "library.log"
    assert f"{Path('runs') / 'quiet' / 'v1' / 'library.log'}" in done.stdout.replace(str(tmp_path) + os.sep, "")
    text = log.read_text(encoding="utf-8", errors="replace")
    # what every training prints: Unsloth's banner and torch's _pytree deprecation warnings
    # (or the notice that Unsloth could not be imported, where it cannot)
    assert ("no GPU found" in text or "Unsloth" in text) and "_pytree" in text
    # transformers', TRL's bars
    for seen in ("Loading weights", "Truncating train dataset", "Dropping fully masked examples"):
        assert seen in text
    assert not list((tmp_path / "runs").glob(".library-*.log"))  # moved into the run folder, not copied


def test_the_4bit_kernel_note_is_said_only_where_4bit_weights_were_loaded(tmp_path):
    """bitsandbytes warns about its CPU kernel when it is imported, 4-bit model or not (issue 34: a LoRA run
    printed the note)."""
    from quicktune.library_log import LibraryLog

    path = tmp_path / "library.log"
    path.write_text("UserWarning: Failed to load CPU gemm_4bit_forward from kernels-community\n")
    notes = {four_bit: LibraryLog(path, four_bit=four_bit).notices() for four_bit in (False, True, None)}
    assert notes[False] == []
    assert notes[True] == notes[None] and "4-bit CPU kernel" in notes[True][0]
