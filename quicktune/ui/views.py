"""What the dashboard's pages show, as JSON-ready dicts, read from the run folders.

Read-only and torch-free: every run is found through ``quicktune.runs`` (the one run-folder
model), named in URLs as ``recipe/vN``, and must lie inside the runs folder the UI was started on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from quicktune.console import shell_path
from quicktune.data.check import check_data
from quicktune.errors import QuicktuneError
from quicktune.evaluate.compare import compare_runs, scores_on_the_same_rows
from quicktune.export.exporter import ollama_tag
from quicktune.runs import (
    eval_reports,
    list_runs,
    read_manifest,
    report_against,
    resolve_run,
    run_label,
    sha256_file,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/v\d+$")
METRICS_FILE = "metrics.jsonl"
MAX_DIFFERING_ROWS = 50


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks followed) lies in ``root``: the one rule for what the UI may read."""
    return path.resolve().is_relative_to(root.resolve())


def run_folder(root: Path, name: str) -> Path:
    """``recipe/vN`` under ``root``; anything else (a path, ``..``, a run elsewhere) is refused."""
    if not RUN_NAME.match(name or ""):
        raise QuicktuneError(f"{name!r} is not a run name: expected recipe/vN")
    found = resolve_run(str(root / name), root)
    if not inside(found, root):
        raise QuicktuneError(f"{name!r} is not inside the runs folder {root}")
    return found


def _label_of(path: str | None, root: Path) -> str | None:
    """A manifest's parent (a run folder path) as ``recipe/vN`` when it is under ``root``."""
    if not path:
        return None
    folder = Path(path)
    return run_label(folder) if folder.is_dir() and inside(folder, root) else path


def _last_step(run_dir: Path) -> int | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    step = None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.endswith("\n"):
                try:
                    step = json.loads(line).get("step", step)
                except json.JSONDecodeError:
                    continue
    return step


def _updated(run_dir: Path) -> float | None:
    """When the run last wrote its metrics (seconds since the epoch): tells a live run from a killed one."""
    path = run_dir / METRICS_FILE
    return path.stat().st_mtime if path.is_file() else None


def runs_view(root: Path) -> dict[str, Any]:
    rows = []
    for summary in list_runs(root):
        manifest = read_manifest(summary.path)
        label = run_label(summary.path)
        rows.append(
            {
                "name": label,
                "recipe": summary.recipe,
                "status": summary.status,
                "started": summary.started,
                "ended": manifest.get("ended"),
                "method": manifest.get("method"),
                "base": (manifest.get("base_model") or {}).get("spec"),
                "steps": summary.steps if summary.steps is not None else _last_step(summary.path),
                "train_loss": summary.train_loss,
                "eval_loss": summary.eval_loss,
                "headline": summary.headline,
                "exported": summary.exported,
                "parent": _label_of(summary.parent, root),
                "updated": _updated(summary.path),
            }
        )
    return {"root": str(root), "runs": rows, "lineage": lineage(rows)}


def lineage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs as a forest: each run under the run it continued from (``--from``)."""
    names = {row["name"] for row in rows}
    children: dict[str | None, list[str]] = {}
    for row in rows:
        parent = row["parent"] if row["parent"] in names else None
        children.setdefault(parent, []).append(row["name"])

    def node(name: str) -> dict[str, Any]:
        return {"name": name, "children": [node(child) for child in children.get(name, [])]}

    return [node(name) for name in children.get(None, [])]




def _modelfiles(run_dir: Path, export: dict[str, Any]) -> list[dict[str, Any]]:
    shown = []
    for quant, relative in (export.get("modelfiles") or {}).items():
        path = run_dir / relative
        if not path.is_file() or not inside(path, run_dir):
            continue
        tag = ollama_tag(export.get("name") or run_label(run_dir).replace("/", "-"), quant)
        shown.append(
            {
                "quant": quant,
                "file": relative,
                "text": path.read_text(encoding="utf-8", errors="replace"),
                "create": f"ollama create {tag} -f {shell_path(path)}",
                "run": f"ollama run {tag}",
            }
        )
    return shown


def _reports(run_dir: Path) -> list[dict[str, Any]]:
    listed = []
    for path, report in eval_reports(run_dir):
        own = next((s for s in report["subjects"] if s.get("label") == run_label(run_dir)), None)
        metric = report.get("metric")
        chart = path.with_suffix(".png")
        listed.append(
            {
                "file": str(path.relative_to(run_dir)),
                "created": report.get("created"),
                "against": report_against(report),
                "rows": (report.get("data") or {}).get("rows"),
                "metric": metric,
                "subjects": [
                    {"label": s.get("label"), "kind": s.get("kind"), "metrics": s.get("metrics"), "loss": s.get("loss")}
                    for s in report["subjects"]
                ],
                "headline": (own or {}).get("metrics", {}).get(metric),
                "chart": str(chart.relative_to(run_dir)) if chart.is_file() else None,
            }
        )
    return listed


def run_view(root: Path, name: str) -> dict[str, Any]:
    run_dir = run_folder(root, name)
    manifest = read_manifest(run_dir)
    export = manifest.get("export") or {}
    recipe = run_dir / "recipe.yaml"
    return {
        "name": run_label(run_dir),
        "folder": str(run_dir),
        "manifest": manifest,
        "parent": _label_of(manifest.get("parent"), root),
        "recipe": recipe.read_text(encoding="utf-8") if recipe.is_file() else None,
        "loss_png": "loss.png" if (run_dir / "loss.png").is_file() else None,
        "updated": _updated(run_dir),
        "modelfiles": _modelfiles(run_dir, export),
        "fidelity": export.get("fidelity") or None,
        "evals": _reports(run_dir),
        "chat": f"quicktune chat {shell_path(run_dir)}" if export.get("ggufs") else None,
    }


def metrics_since(root: Path, name: str, offset: int = 0) -> dict[str, Any]:
    """The complete lines of metrics.jsonl from byte ``offset`` on, and where the next read starts.

    A line still being written (no newline yet) is left for the next read; a file that shrank
    (a new run folder reused the name) is read again from the start (``reset``)."""
    path = run_folder(root, name) / METRICS_FILE
    if not path.is_file():
        return {"records": [], "offset": 0, "reset": offset != 0}
    reset = offset > path.stat().st_size
    start = 0 if reset else max(0, offset)
    with path.open("rb") as handle:
        handle.seek(start)
        chunk = handle.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    records = []
    for line in complete.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return {"records": records, "offset": start + len(complete), "reset": reset}


def example_view(root: Path, name: str) -> dict[str, Any]:
    """``data check``'s rendered example for the run's resolved recipe: tokens with trained ones marked.

    Uses the data files the recipe names now; a file whose sha256 is no longer the one the
    run trained on is named in ``changed``."""
    run_dir = run_folder(root, name)
    manifest = read_manifest(run_dir)
    changed = []
    for item in (manifest.get("data") or {}).get("files", []):
        path = Path(item["path"])
        if not path.is_file():
            changed.append(f"{item['path']}: missing")
        elif item.get("sha256") and sha256_file(path) != item["sha256"]:
            changed.append(f"{item['path']}: changed since training")
    report = check_data([], recipe_ref=str(run_dir / "recipe.yaml"))
    example = report.example
    return {
        "origin": example.origin if example else None,
        "tokens": [[text, trained] for text, trained in example.tokens] if example else [],
        "stop": report.stop.text if report.stop else None,
        "changed": changed,
    }


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def compare_view(root: Path, first: str, second: str) -> dict[str, Any]:
    """Two runs side by side: both recipes (differing keys marked), `runs compare`'s table, the eval
    metrics of both on the same held-out rows with the change, and the rows where their answers differ."""
    a, b = run_folder(root, first), run_folder(root, second)
    recipes = []
    for run_dir in (a, b):
        path = run_dir / "recipe.yaml"
        recipes.append(_flat(yaml.safe_load(path.read_text(encoding="utf-8"))) if path.is_file() else {})
    keys = list(dict.fromkeys([*recipes[0], *recipes[1]]))
    recipe_rows = [
        {"key": key, "a": (a_value := recipes[0].get(key)), "b": (b_value := recipes[1].get(key)),
         "differs": a_value != b_value}
        for key in keys
    ]
    table = compare_runs(a, b)
    result: dict[str, Any] = {
        "a": run_label(a),
        "b": run_label(b),
        "recipe": recipe_rows,
        "table": [
            {"section": s, "key": k, "a": _label_of(x, root) if k == "parent" and x != "-" else x,
             "b": _label_of(y, root) if k == "parent" and y != "-" else y}
            for s, k, x, y in table.rows
            if s not in ("recipe", "eval")
        ],
        "notes": table.notes,
        "eval": None,
    }
    shared = scores_on_the_same_rows(a, b)
    if shared is None:
        return result
    sha, left, right, source = shared
    report = next(
        (r for _, r in eval_reports(a) + eval_reports(b) if (r.get("data") or {}).get("sha256") == sha), None
    )
    metrics = []
    for key, value in left["metrics"].items():
        other = right["metrics"].get(key)
        change = None if value is None or other is None else other - value
        metrics.append({"metric": key, "a": value, "b": other, "change": change})
    differing = []
    prompts = (report or {}).get("prompts") or []
    references = (report or {}).get("references") or []
    for index, (x, y) in enumerate(zip(left.get("answers") or [], right.get("answers") or [])):
        if x["text"].strip() == y["text"].strip():
            continue
        differing.append(
            {
                "row": index + 1,
                "prompt": prompts[index] if index < len(prompts) else "",
                "reference": references[index] if index < len(references) else "",
                "a": x["text"].strip(),
                "b": y["text"].strip(),
                "a_stopped": x.get("stopped"),
                "b_stopped": y.get("stopped"),
            }
        )
    result["eval"] = {
        "rows_sha256": sha[:12],
        "rows": len(left.get("answers") or []),
        "source": source,
        "headline": (report or {}).get("metric"),
        "metrics": metrics,
        "loss": {"a": left.get("loss"), "b": right.get("loss")},
        "differing": differing[:MAX_DIFFERING_ROWS],
        "differing_total": len(differing),
    }
    return result
