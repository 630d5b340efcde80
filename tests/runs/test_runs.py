from __future__ import annotations

import json
import threading

import pytest

from quicktune import runs
from quicktune.errors import QuicktuneError
from quicktune.runs import files


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

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def _checkpoint(run_dir, step, files=(*runs.CHECKPOINT_FILES, "adapter_model.safetensors")):
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def _fake_run(root, version, status, sha="abc", parent=None, checkpoint=True):
    run_dir = root / "demo" / version
    run_dir.mkdir(parents=True)
    runs.write_manifest(run_dir, {"status": status, "recipe_sha256": sha, "parent": parent, "metrics": {"steps": 3}})
    if checkpoint:
        _checkpoint(run_dir, 3)
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
    (run_dir / "export").mkdir()
    (run_dir / "export" / "demo-v3-q8_0.gguf").write_bytes(b"GGUF")
    for ref in ("v3", "demo/v3", str(run_dir), str(run_dir / "export"), str(run_dir / "export" / "demo-v3-q8_0.gguf")):
        assert runs.resolve_run(ref, tmp_path) == run_dir.resolve(), ref
    assert runs.resolve_run("v3", tmp_path, "demo") == run_dir.resolve()
    with pytest.raises(QuicktuneError, match="no run found at 'v9'") as error:
        runs.resolve_run("v9", tmp_path)
    assert error.value.problems == [f"runs in {tmp_path}: demo/v3"]
    with pytest.raises(QuicktuneError) as error:
        runs.resolve_run("v1", tmp_path / "empty")
    assert error.value.problems == [f"there are no runs in {tmp_path / 'empty'}"]


def test_a_bare_version_needs_one_recipe_or_a_named_one(tmp_path):
    _fake_run(tmp_path, "v1", "finished")
    other = tmp_path / "other" / "v1"
    other.mkdir(parents=True)
    runs.write_manifest(other, {"status": "finished"})
    with pytest.raises(QuicktuneError, match="'v1' is ambiguous") as error:
        runs.resolve_run("v1", tmp_path)
    assert error.value.problems == ["demo/v1, other/v1"]
    assert runs.resolve_run("v1", tmp_path, "other") == other.resolve()
    assert runs.resolve_run("other/v1", tmp_path) == other.resolve()


def _report(run_dir, name, created, against, rows_sha, **scores):
    subjects = [{"label": label, "metrics": {"json_fields": value}} for label, value in scores.items()]
    report = {"created": created, "against": against, "metric": "json_fields", "data": {"sha256": rows_sha}}
    report["subjects"] = subjects
    runs.write_atomic(run_dir / "eval" / f"{name}.json", json.dumps(report))


def test_the_headline_is_the_latest_report_against_base(tmp_path):
    run_dir = _fake_run(tmp_path, "v1", "finished")
    assert runs.read_own_eval(run_dir) == (None, None)
    _report(run_dir, "alone-aaa", "2026-12-01T10:00:00+00:00", None, "aaa", **{"demo/v1": 0.5})
    assert runs.list_runs(tmp_path)[0].headline == "json_fields 50.0%"  # no report against base: the latest
    _report(run_dir, "base-bbb", "2026-12-01T11:00:00+00:00", "base", "bbb", base=0.0, **{"demo/v1": 0.9})
    _report(run_dir, "base-ccc", "2026-12-01T12:00:00+00:00", "base", "ccc", base=0.0, **{"demo/v1": 0.8})
    _report(run_dir, "demo-v0-ddd", "2026-12-01T13:00:00+00:00", "demo/v0", "ddd", **{"demo/v0": 0.1, "demo/v1": 0.7})
    report, own = runs.read_own_eval(run_dir)
    assert report["data"]["sha256"] == "ccc" and own["metrics"]["json_fields"] == 0.8
    assert runs.list_runs(tmp_path)[0].headline == "json_fields 80.0%"
    assert len(runs.eval_reports(run_dir)) == 4


def test_the_gguf_chat_and_eval_use(tmp_path):
    run_dir = _fake_run(tmp_path, "v1", "finished")
    with pytest.raises(QuicktuneError, match="has not been exported yet"):
        runs.pick_quantization(run_dir, runs.read_manifest(run_dir))
    ggufs = {q: {"file": f"export/x-{q}.gguf"} for q in ("f16", "q8_0")}
    manifest = {"export": {"ggufs": ggufs, "modelfiles": {"q8_0": "export/Modelfile.q8_0"}}}
    assert runs.pick_quantization(run_dir, manifest) == "q8_0"  # asked for q8_0 only: not the F16 reference
    assert runs.pick_quantization(run_dir, manifest, "f16") == "f16"
    with pytest.raises(QuicktuneError, match="has no q4_k_m GGUF"):
        runs.pick_quantization(run_dir, manifest, "q4_k_m")
    ggufs.update({q: {"file": f"export/x-{q}.gguf"} for q in ("q4_k_m", "q5_k_m")})
    manifest["export"]["modelfiles"] = dict.fromkeys(("q4_k_m", "q5_k_m"), "")
    assert runs.pick_quantization(run_dir, manifest) == "q5_k_m"  # unchecked: the most bits per weight
    checked = [{"name": "q4_k_m", "same_top_token": 0.928}, {"name": "q5_k_m", "same_top_token": 0.82}]
    manifest["export"]["fidelity"] = {"ggufs": checked}
    assert runs.pick_quantization(run_dir, manifest) == "q4_k_m"  # checked: the most faithful


def test_list_runs(tmp_path):
    _fake_run(tmp_path, "v1", "finished")
    (tmp_path / "demo" / "v2").mkdir()  # no manifest: not a run
    listed = runs.list_runs(tmp_path)
    assert [(r.recipe, r.version, r.status, r.steps) for r in listed] == [("demo", "v1", "finished", 3)]
    assert json.loads((tmp_path / "demo" / "v1" / "manifest.json").read_text())["status"] == "finished"
