"""Symlinks out of the runs folder, attacked over real HTTP: a run's recipe, metrics, eval report, manifest, loss
chart, its eval folder, a recipe's promotion history, a run folder and a recipe folder that are links out. None
is listed, none is shown, and nothing behind them is even opened (Python's audit hooks, symlinks resolved)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.ui.client import signed_in
from tests.ui.reads import reads_under

SECRET = "SECRET-7f3a"  # in every file outside the runs folder


def trapped_runs(ui_runs: Path, folder: Path) -> tuple[Path, Path, dict[str, str]]:
    """(runs folder, the folder outside it, {run: what links out}). ``clean/v1..v3`` are the session's runs as
    they are; every run of ``trap``, ``hist`` and ``elsewhere`` reaches outside through one link."""
    root, outside = folder / "runs", folder / "outside"
    outside.mkdir()
    for recipe in ("clean", "trap", "hist"):
        shutil.copytree(ui_runs / "tiny", root / recipe, symlinks=True)
    report = json.loads(next((ui_runs / "tiny" / "v1" / "eval").glob("*.json")).read_text(encoding="utf-8"))
    report["data"]["source"] = SECRET
    manifest = json.loads((ui_runs / "tiny" / "v2" / "manifest.json").read_text(encoding="utf-8"))
    files = {
        "recipe.yaml": f"name: {SECRET}\n", "metrics.jsonl": json.dumps({"step": 1, "loss": 1.0, "n": SECRET}) + "\n",
        "report.json": json.dumps(report), "manifest.json": json.dumps({**manifest, "recipe": SECRET}),
        "loss.png": SECRET, "promotions.jsonl": json.dumps({"action": "promote", "run": SECRET}) + "\n",
    }
    for name, text in files.items():
        (outside / name).write_text(text, encoding="utf-8")
    (outside / "eval").mkdir()
    (outside / "eval" / "base-x.json").write_text(json.dumps(report), encoding="utf-8")
    shutil.copytree(ui_runs / "tiny" / "v2", outside / "elsewhere" / "v1", symlinks=True)
    shutil.copytree(ui_runs / "tiny" / "v2", outside / "run", symlinks=True)
    (outside / "run" / "recipe.yaml").write_text(f"name: {SECRET}\n", encoding="utf-8")

    def link(path: Path, target: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.symlink_to(target)

    trap = root / "trap"
    for version in ("v4", "v5", "v6", "v7"):
        shutil.copytree(ui_runs / "tiny" / "v2", trap / version, symlinks=True)
    link(trap / "v1" / "eval" / "base-linked.json", outside / "report.json")  # beside its real reports
    link(trap / "v2" / "recipe.yaml", outside / "recipe.yaml")
    link(trap / "v3" / "metrics.jsonl", outside / "metrics.jsonl")
    link(trap / "v4" / "manifest.json", outside / "manifest.json")
    link(trap / "v5" / "loss.png", outside / "loss.png")
    link(trap / "v6" / "eval", outside / "eval")
    link(trap / "v7", outside / "run")  # the run folder itself
    link(root / "hist" / "promotions.jsonl", outside / "promotions.jsonl")
    (root / "elsewhere").symlink_to(outside / "elsewhere")  # a recipe folder
    traps = {"trap/v1": "eval report", "trap/v2": "recipe.yaml", "trap/v3": "metrics.jsonl", "trap/v4": "manifest",
             "trap/v5": "loss.png", "trap/v6": "eval folder", "trap/v7": "run folder", "hist/v1": "history",
             "elsewhere/v1": "recipe folder"}
    return root, outside, traps


@pytest.fixture
def trapped(ui_runs, tmp_path, start_dashboard):
    root, outside, traps = trapped_runs(ui_runs, tmp_path)
    return signed_in(start_dashboard(root)), outside, traps


def test_links_out_of_the_runs_folder_are_neither_listed_nor_followed(trapped):
    visitor, outside, traps = trapped
    with reads_under(outside) as opened:
        listed = visitor.get("/api/runs")
        assert listed.status == 200
        assert sorted(row["name"] for row in listed.json()["runs"]) == ["clean/v1", "clean/v2", "clean/v3"]
        assert visitor.get("/api/run?run=clean/v1").status == 200  # the runs inside are shown as before
        answers = [listed]
        for run, what in traps.items():
            for path in (f"/api/run?run={run}", f"/api/metrics?run={run}", f"/api/compare?a=clean/v1&b={run}",
                         f"/api/compare?a={run}&b=clean/v2", f"/api/example?run={run}"):
                response = visitor.get(path)
                assert response.status == 400, (what, path, response.status, response.text[:200])
                assert "is a link out of it" in response.json()["error"], (what, path, response.json())
                answers.append(response)
            for name in ("recipe.yaml", "metrics.jsonl", "loss.png", "manifest.json", "eval/base-linked.json"):
                response = visitor.get(f"/files/{run}/{name}")
                assert response.status in (400, 403, 404), (run, name, response.status)
                answers.append(response)
        history = visitor.get("/api/history")
        assert [h["recipe"] for h in history.json()["recipes"]] == ["hist"]
        assert history.json()["recipes"][0]["lines"] == [] and "link out" in history.json()["recipes"][0]["error"]
        one = visitor.get("/api/history?recipe=elsewhere")
        assert one.status == 400
        models = visitor.get("/api/chat/models")
        assert models.json()["models"] and all("clean/" in m["id"] for m in models.json()["models"]), models.text
        answers += [history, one, models]
    assert not any(SECRET in answer.text for answer in answers)
    assert opened == [], opened  # nothing behind a link was opened, not even listed
