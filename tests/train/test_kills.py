"""SIGKILL, not Ctrl-C: `quicktune train` and `quicktune export` killed at set moments, then rerun.

bench/kill_soak.py does the same at 20+ random moments and reports a table (bench/README.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicktune import runs
from tests.conftest import SMOLLM2, TOPICS, chat, copy_run, write_jsonl

pytestmark = pytest.mark.slow
QUICKTUNE = str(Path(sys.executable).with_name("quicktune"))


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.Popen([QUICKTUNE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL the command's whole process group as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"ended before the kill point:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=900)
    return process.returncode, output


def _whole(run_dir: Path) -> None:
    """Nothing at a final path is partial."""
    assert isinstance(json.loads((run_dir / "manifest.json").read_text()), dict)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        json.loads(line)
    if (run_dir / "adapter").exists():
        from safetensors.torch import load_file

        load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_train_killed_mid_run_resumes_from_the_last_complete_checkpoint_and_refuses_changed_data(tmp_path):
    rows = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in TOPICS]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = tmp_path / "killed.yaml"
    recipe.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        "data:\n  train: train.jsonl\ntraining:\n  max_steps: 4\n  batch_size: 2\n  grad_accumulation: 1\n"
        "  warmup_ratio: 0.0\n  save_every: 1\n  seed: 11\n"
    )
    root = tmp_path / "runs"
    run_dir = root / "killed" / "v1"
    process = _start("train", str(recipe), "--runs-dir", str(root))
    _kill_when(process, lambda: runs.latest_checkpoint(run_dir) is not None)
    at_kill = runs.latest_checkpoint(run_dir)
    _whole(run_dir)
    assert runs.read_manifest(run_dir)["status"] == "running" and not (run_dir / "adapter").exists()

    # The data changed while the run was stopped: resuming is refused, naming the file.
    with train_file.open("a") as handle:
        handle.write(json.dumps(chat("One word for snow?", '{"word": "snow"}')) + "\n")
    code, output = _finish(_start("train", str(recipe), "--runs-dir", str(root)))
    assert code == 2, output
    assert "killed/v1 cannot resume: its data changed since it started" in output
    assert f"{train_file}: changed (sha256 " in output and "12 -> 13 rows" in output
    assert "--allow-data-change" in output and "Traceback" not in output

    code, output = _finish(_start("train", str(recipe), "--runs-dir", str(root), "--allow-data-change"))
    assert code == 0, output[-3000:]
    manifest = runs.read_manifest(run_dir)
    assert manifest["status"] == "finished" and manifest["metrics"]["steps"] == 4
    (resume,) = manifest["resumes"]
    newest_at_kill = max((p for p in (run_dir / "checkpoints").glob("checkpoint-*")), default=None)
    assert resume["checkpoint"] == at_kill.name or resume["checkpoint"] == newest_at_kill.name
    assert resume["data_changed"][0]["path"] == str(train_file)
    assert manifest["data"]["files"][0]["rows"] == 13 and manifest["data_at_start"]["files"][0]["rows"] == 12
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    assert steps == [1, 2, 3, 4]  # the steps trained again after the checkpoint are logged once
    _whole(run_dir)
    assert not [p.name for p in run_dir.glob(".*") if p.name != runs.LOCK]
    assert all(runs.checkpoint_complete(p) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def test_export_killed_mid_write_leaves_no_partial_file_and_the_rerun_finishes(trained_run, tmp_path):
    run_dir = tmp_path / "tiny-export" / "v1"
    copy_run(trained_run.run_dir, run_dir)
    export = run_dir / "export"
    process = _start("export", str(run_dir), "--quant", "q8_0", "--no-verify")
    # killed while the converter writes the F16 GGUF (after the merge)
    _kill_when(process, lambda: (export / "merged").is_dir() and any(export.glob(".*.partial")))
    assert [p.name for p in export.glob("*.gguf")] == []  # nothing at a final path
    leftovers = sorted(p.name for p in export.glob(".*"))
    assert leftovers
    code, output = _finish(_start("export", str(run_dir), "--quant", "q8_0", "--no-verify"))
    assert code == 0, output[-3000:]
    assert "left by an export that was stopped" in output
    assert not list(export.glob(".*"))
    from gguf import GGUFReader

    for gguf in export.glob("*.gguf"):
        assert GGUFReader(str(gguf)).tensors
    assert sorted(runs.read_manifest(run_dir)["export"]["ggufs"]) == ["f16", "q8_0"]
