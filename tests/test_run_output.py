"""What `quicktune run` prints when its output is not a terminal (a log, CI), as issue 34 found it: the note about
bitsandbytes' 4-bit CPU kernel on a LoRA run, the line naming the libraries' log twice, and minutes with no
line during the export's fidelity check and eval. A real run of SmolLM2 in a subprocess (stdout is a pipe)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import SMOLLM2


@pytest.mark.slow
def test_a_lora_run_in_a_pipe_prints_each_note_once_and_no_4bit_note(tiny_data, tmp_path):
    train_file, eval_file = tiny_data
    recipe = tmp_path / "piped.yaml"
    recipe.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\ntraining:\n  max_steps: 2\n  batch_size: 2\n"
        "  grad_accumulation: 1\n  warmup_ratio: 0.0\nexport:\n  quantizations: [q8_0]\n  temperature: 0\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("QUICKTUNE_VERBOSE", "QUICKTUNE_PROGRESS_EVERY")}
    env["QUICKTUNE_PROGRESS_EVERY"] = "1"  # a progress line at most every second (default: every 30 s)
    done = subprocess.run(
        [sys.executable, "-m", "quicktune", "run", str(recipe), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=1500, env=env, cwd=tmp_path,
    )
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    assert shown.count("other libraries' output") == 1, shown
    assert "4-bit CPU kernel" not in shown, shown
    # the export's fidelity check and eval each said, at intervals, that they were still running
    assert "… checking fidelity" in done.stdout and "… evaluating" in done.stdout, shown


def test_a_status_without_a_terminal_prints_a_line_at_intervals(monkeypatch):
    from quicktune.console import console

    monkeypatch.setenv("QUICKTUNE_PROGRESS_EVERY", "0.2")
    captured = io.StringIO()
    # no terminal: a pipe, a log file. "_file", not the "file" property: undo must put back None (rich then
    # writes to sys.stdout as it is at each print), not pin this test's stdout for every later test
    monkeypatch.setattr(console, "_file", captured)
    with console.status("checking fidelity") as status:
        time.sleep(0.5)
        status.update("checking fidelity: prompt 3 of 8")
        time.sleep(0.5)
    lines = captured.getvalue().splitlines()
    assert lines[0].startswith("… checking fidelity (0:00)") and "… checking fidelity: prompt 3 of 8 (0:00)" in lines
    count = len(lines)
    time.sleep(0.5)
    assert len(captured.getvalue().splitlines()) == count  # nothing after the step ended
    with console.status("quick"):
        pass
    assert "quick" not in captured.getvalue()  # a short step prints nothing
