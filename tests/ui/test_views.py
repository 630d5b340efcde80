"""The dashboard's JSON views on their own (no browser): reading a growing metrics.jsonl, run names."""

from __future__ import annotations

import json

import pytest

from quicktune import runs
from quicktune.errors import QuicktuneError
from quicktune.ui import views


def _run(root, name="tiny", version="v1", parent=None):
    run_dir = root / name / version
    run_dir.mkdir(parents=True)
    runs.write_manifest(run_dir, {"recipe": name, "version": version, "status": "running", "parent": parent})
    return run_dir


def test_metrics_are_read_a_complete_line_at_a_time(tmp_path):
    run_dir = _run(tmp_path)
    path = run_dir / "metrics.jsonl"
    first = json.dumps({"step": 1, "loss": 2.0}) + "\n"
    path.write_text(first + '{"step": 2, "lo', encoding="utf-8")  # the trainer is mid-write
    got = views.metrics_since(tmp_path, "tiny/v1")
    assert got["records"] == [{"step": 1, "loss": 2.0}] and got["offset"] == len(first)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('ss": 1.5}\n')
    got = views.metrics_since(tmp_path, "tiny/v1", got["offset"])
    assert got["records"] == [{"step": 2, "loss": 1.5}] and not got["reset"]
    path.write_text(first, encoding="utf-8")  # a shorter file than was read: start again
    got = views.metrics_since(tmp_path, "tiny/v1", 10_000)
    assert got["reset"] and got["records"] == [{"step": 1, "loss": 2.0}]


def test_only_runs_inside_the_runs_folder_are_named(tmp_path):
    root, elsewhere = tmp_path / "runs", tmp_path / "other"
    _run(root)
    _run(elsewhere, "secret")
    (root / "secret").symlink_to(elsewhere / "secret")  # a run folder reached through a link out of root
    assert views.run_folder(root, "tiny/v1") == (root / "tiny" / "v1").resolve()
    for name in ("secret/v1", "../other/secret/v1", str(elsewhere / "secret" / "v1"), "tiny/v1/..", "tiny"):
        with pytest.raises(QuicktuneError):
            views.run_folder(root, name)


def test_lineage_puts_each_run_under_its_parent(tmp_path):
    first = _run(tmp_path)
    _run(tmp_path, version="v2", parent=str(first))
    _run(tmp_path, version="v3", parent=str(tmp_path / "tiny" / "v2"))
    _run(tmp_path, "other")
    shown = views.runs_view(tmp_path)
    assert shown["lineage"] == [
        {"name": "other/v1", "children": []},
        {"name": "tiny/v1", "children": [{"name": "tiny/v2", "children": [{"name": "tiny/v3", "children": []}]}]},
    ]
    assert {row["name"]: row["parent"] for row in shown["runs"]}["tiny/v3"] == "tiny/v2"
