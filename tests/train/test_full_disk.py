"""A run folder on a disk that fills up while training writes a checkpoint (a small tmpfs the test
mounts as root): a clear error naming the path and the space needed, and the run resumes."""

from __future__ import annotations

import os
import subprocess

import pytest

from quicktune import runs
from quicktune.errors import QuicktuneError

pytestmark = pytest.mark.slow
CHECKPOINT_MIB = 32  # one SmolLM2 LoRA r8 checkpoint: adapter, Adam's two states, tokenizer (measured 31.7 MiB)


def _mount(folder, mib: int):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def tmpfs(tmp_path):
    yield _mount(tmp_path / "disk", CHECKPOINT_MIB + 16)
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


def test_a_checkpoint_that_fills_the_disk_is_a_clear_error_and_the_run_resumes(make_recipe, tmpfs):
    from quicktune.train.trainer import train

    recipe = make_recipe("full-disk", steps=3)
    recipe.training.save_every = 1  # room for checkpoint-1 only
    with pytest.raises(QuicktuneError) as error:
        train(recipe, runs_root=tmpfs)
    run_dir = tmpfs / "full-disk" / "v1"
    message = str(error.value)
    assert message.startswith(f"no space left on the device writing {run_dir / 'checkpoints' / 'checkpoint-2'}: "
                              "it needs about 3"), message  # 3x.x MiB: the size of checkpoint-1
    assert "MiB free there" in message and "it resumes from checkpoint-1" in message
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]  # the cut one is gone
    assert runs.read_manifest(run_dir)["status"] == "failed"

    subprocess.run(["mount", "-o", "remount,size=256m", str(tmpfs)], check=True)  # space is freed
    resumed = train(recipe, runs_root=tmpfs)
    assert resumed.run_dir == run_dir and resumed.resumed_from == "checkpoint-1"
    assert resumed.status == "finished" and resumed.metrics["steps"] == 3


def test_a_merge_that_fills_the_disk_is_a_clear_error_and_leaves_the_run_as_it_was(trained_run, tmp_path):
    from quicktune.export.exporter import export_run
    from tests.conftest import copy_run

    disk = _mount(tmp_path / "disk", 64)  # the run fits; the merged 135M model in float32 (~540 MB) does not
    try:
        run_dir = disk / "tiny-export" / "v1"
        copy_run(trained_run.run_dir, run_dir)
        before = (run_dir / "manifest.json").read_text()
        with pytest.raises(QuicktuneError) as error:
            export_run(run_dir, ["q8_0"], verify=False)
        message = str(error.value)
        base = runs.read_manifest(run_dir)["base_model"]["loaded_from"]
        needed = sum(f.stat().st_size for f in __import__("pathlib").Path(base).glob("*.safetensors")) / 2**20
        assert message.startswith(f"no space left on the device writing {run_dir / 'export' / 'merged'}: "
                                  f"it needs about {needed:,.1f} MiB, "), message
        assert "what is already exported is kept" in message
        assert sorted(p.name for p in (run_dir / "export").iterdir()) == []  # no half-written merge left
        assert (run_dir / "manifest.json").read_text() == before and runs.holder(run_dir) is None
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
