"""Run folders under races, kills and full disks: locks, atomic swaps, leftovers, changed data.

No torch here: these are the run-folder rules themselves. Real training under SIGKILL and on a
full disk is in test_kills.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from quicktune import runs
from tests.runs.test_runs import _checkpoint, _fake_run

HOLD = """
import sys, time
from pathlib import Path
from quicktune.runs import lock_run
with lock_run(Path(sys.argv[1]), "quicktune train"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir):
    """Another process holding the run folder, as a second `quicktune train` would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_run_folder_is_held_by_one_process_and_freed_when_it_is_killed(tmp_path):
    run_dir = _fake_run(tmp_path, "v1", "running")
    other = _holder(run_dir)
    try:
        with (
            pytest.raises(runs.RunInUse, match=rf"demo/v1 is in use: process {other.pid} \(quicktune train, since "),
            runs.lock_run(run_dir, "quicktune train"),
        ):
            pass
        assert runs.holder(run_dir).startswith(f"process {other.pid} ")
    finally:
        other.send_signal(signal.SIGKILL)  # dies holding it: nothing to clean up by hand
        other.wait()
    assert runs.holder(run_dir) is None
    with runs.lock_run(run_dir, "quicktune export"):
        assert (run_dir / runs.LOCK).read_text().startswith(f"process {os.getpid()} (quicktune export")


def test_two_trainings_of_one_recipe_never_resume_the_same_run(tmp_path):
    """The second gets a clear refusal naming the holder, or with --new-run a new version."""
    import contextlib

    from quicktune.train.trainer import _claim_run

    class Recipe:
        name = "demo"
        method = "lora"

    run_dir = _fake_run(tmp_path, "v1", "interrupted")
    other = _holder(run_dir)
    try:
        with contextlib.ExitStack() as held, pytest.raises(runs.RunInUse, match=f"process {other.pid}") as error:
            _claim_run(tmp_path, Recipe, "abc", None, False, held)
        assert "--new-run" in error.value.hint
        with contextlib.ExitStack() as held:
            claimed, checkpoint, _ = _claim_run(tmp_path, Recipe, "abc", None, True, held)
            assert (claimed.name, checkpoint) == ("v2", None)
            assert runs.holder(claimed).startswith(f"process {os.getpid()} ")
    finally:
        other.kill()
        other.wait()
    with contextlib.ExitStack() as held:  # its holder is gone: v1 resumes
        claimed, checkpoint, _ = _claim_run(tmp_path, Recipe, "abc", None, False, held)
        assert (claimed.name, checkpoint.name) == ("v1", "checkpoint-3")


def test_swapping_in_a_new_adapter_leaves_no_moment_without_one(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "weights").write_text("0")
    missing = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if not (final / "weights").is_file():
                missing.append(time.perf_counter())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for number in range(1, 150):
            staging = tmp_path / ".adapter.partial"
            staging.mkdir()
            for index in range(20):  # a folder with some files, like an adapter
                (staging / f"extra-{index}").write_text("x" * 1000)
            (staging / "weights").write_text(str(number))
            runs.swap_in(staging, final)
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert (final / "weights").read_text() == "149"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_swap_cut_short_between_its_renames_is_undone(tmp_path):
    run_dir = tmp_path
    (run_dir / ".adapter.previous").mkdir()
    (run_dir / ".adapter.previous" / "weights").write_text("old")
    runs.restore_final(run_dir, "adapter")
    assert (run_dir / "adapter" / "weights").read_text() == "old"


def test_leftovers_of_a_killed_process_are_removed(tmp_path):
    run_dir = _fake_run(tmp_path, "v1", "running")
    _checkpoint(run_dir, 6, files=("adapter_model.safetensors", "optimizer.pt"))  # cut short: no trainer_state.json
    export = run_dir / "export"
    leftovers = [
        run_dir / ".adapter.partial", run_dir / ".model.partial", export / ".dequantized-base.12345",
        export / ".merged-a1b2c3", export / ".demo-v1-f16.gguf.999999.partial", export / ".demo-v1-f16.raw.gguf",
        run_dir / ".manifest.json.x1y2",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".partial", ".gguf") or path.name.startswith(".manifest"):
            path.write_bytes(b"half")
        else:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"half")
    kept = [export / "demo-v1-f16.gguf", export / "Modelfile.q4_k_m"]
    for path in kept:
        path.write_text("whole")
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-3"  # the cut-short one is never resumed from
    removed = runs.remove_stale(run_dir)
    assert sorted(removed) == sorted([*leftovers, run_dir / "checkpoints" / "checkpoint-6"])
    assert not any(path.exists() for path in removed)
    assert all(path.is_file() for path in kept)
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-3"


def test_changed_data_is_found_and_described(tmp_path):
    recorded = {"files": [{"path": "/d/train.jsonl", "rows": 10, "sha256": "a" * 64},
                          {"path": "/d/eval.jsonl", "rows": 2, "sha256": "b" * 64}]}
    now = {"files": [{"path": "/d/train.jsonl", "rows": 11, "sha256": "c" * 64},
                     {"path": "/d/eval.jsonl", "rows": 2, "sha256": "b" * 64}]}
    assert runs.data_changes(recorded, recorded) == []
    assert runs.data_changes(recorded, now) == [
        {"path": "/d/train.jsonl", "sha256_was": "a" * 64, "sha256_now": "c" * 64, "rows_was": 10, "rows_now": 11}
    ]


def test_metrics_after_the_resumed_checkpoint_and_a_cut_line_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
    runs.trim_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (needs root, as on the project's machines)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_with_the_space_needed(small_tmpfs):
    target = small_tmpfs / "checkpoint-4" / "optimizer.pt"
    target.parent.mkdir()
    with pytest.raises(OSError) as full:
        target.write_bytes(b"x" * (3 << 20))
    assert full.value.errno == errno.ENOSPC
    error = runs.disk_full_error(full.value, target.parent, 3 << 20)
    assert str(error).startswith(f"no space left on the device writing {target.parent}: it needs about 3.0 MiB, ")
    assert str(error).endswith(" free there")
    assert runs.disk_full_error(ValueError("not a disk problem"), target.parent, 3 << 20) is None
    # llama.cpp's quantizer only returns a status: a failed write with too little room counts
    assert runs.disk_full_error(RuntimeError("status 1"), target.parent, 3 << 20, suspect=True) is not None
    target.unlink()  # room again: the same failure is not the disk's
    assert runs.disk_full_error(RuntimeError("status 1"), target.parent, 1024, suspect=True) is None


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_its_folder(tmp_path):
    import contextlib

    from quicktune.train.trainer import _claim_run

    class Recipe:
        name = "demo"
        method = "lora"

    run_dir = _fake_run(tmp_path, "v1", "running", checkpoint=False)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"st')
    _checkpoint(run_dir, 1, files=("adapter_model.safetensors",))  # cut short by the kill
    with contextlib.ExitStack() as held:
        claimed, checkpoint, removed = _claim_run(tmp_path, Recipe, "abc", None, False, held)
    assert (claimed, checkpoint) == (run_dir, None) and removed == [run_dir / "checkpoints" / "checkpoint-1"]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    assert runs.versions(tmp_path / "demo") == [1]
