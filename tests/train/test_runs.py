from __future__ import annotations

import json
import threading

import pytest

from quicktune.errors import QuicktuneError
from quicktune.train import runs


def test_versions_count_up_and_never_collide(tmp_path):
    first = runs.create_run_dir(tmp_path, "demo")
    second = runs.create_run_dir(tmp_path, "demo")
    assert (first.name, second.name) == ("v1", "v2")
    made: list = []
    threads = [threading.Thread(target=lambda: made.append(runs.create_run_dir(tmp_path, "demo"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({p.name for p in made}) == 8
    assert runs.versions(tmp_path / "demo") == list(range(1, 11))


def test_write_atomic_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    runs.write_atomic(target, "old")

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def _fake_run(root, version, status, sha="abc", parent=None, checkpoint=True):
    run_dir = root / "demo" / version
    run_dir.mkdir(parents=True)
    runs.write_manifest(run_dir, {"status": status, "recipe_sha256": sha, "parent": parent, "metrics": {"steps": 3}})
    if checkpoint:
        (run_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
        (run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    return run_dir


def test_only_the_newest_unfinished_run_of_the_same_recipe_resumes(tmp_path):
    _fake_run(tmp_path, "v1", "interrupted")
    assert runs.find_resumable(tmp_path, "demo", "abc", None) == tmp_path / "demo" / "v1"
    assert runs.find_resumable(tmp_path, "demo", "other-recipe", None) is None
    assert runs.find_resumable(tmp_path, "demo", "abc", "runs/demo/v0") is None
    _fake_run(tmp_path, "v2", "finished")
    assert runs.find_resumable(tmp_path, "demo", "abc", None) is None
    _fake_run(tmp_path, "v3", "running", checkpoint=False)
    assert runs.find_resumable(tmp_path, "demo", "abc", None) is None


def test_resolve_run_forms(tmp_path):
    run_dir = _fake_run(tmp_path, "v3", "finished")
    assert runs.resolve_run("v3", tmp_path, "demo") == run_dir.resolve()
    assert runs.resolve_run("demo/v3", tmp_path) == run_dir.resolve()
    assert runs.resolve_run(str(run_dir), tmp_path) == run_dir.resolve()
    with pytest.raises(QuicktuneError, match="no run found"):
        runs.resolve_run("v9", tmp_path, "demo")


def test_list_runs(tmp_path):
    _fake_run(tmp_path, "v1", "finished")
    (tmp_path / "demo" / "v2").mkdir()  # no manifest: not a run
    listed = runs.list_runs(tmp_path)
    assert [(r.recipe, r.version, r.status, r.steps) for r in listed] == [("demo", "v1", "finished", 3)]
    assert json.loads((tmp_path / "demo" / "v1" / "manifest.json").read_text())["status"] == "finished"
