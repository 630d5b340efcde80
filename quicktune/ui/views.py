"""What the dashboard's pages show, as JSON-ready dicts, read from the run folders.

Read-only and torch-free: every run is found through ``quicktune.runs`` (the one run-folder
model), named in URLs as ``recipe/vN``, and must lie inside the runs folder the UI was started on,
symlinks resolved: a run folder, a recipe folder, or a file the views read (``RUN_FILES``, the eval
reports, the promotion history) that a link takes out of the runs folder is neither listed nor shown.
Which version is promoted comes from ``runs/<recipe>/promotions.jsonl`` (``quicktune.runs``'s
``read_history`` / ``in_force``, as ``quicktune runs`` and ``runs history`` read it).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from quicktune.console import shell_path
from quicktune.data.check import check_data
from quicktune.errors import QuicktuneError
from quicktune.evaluate.compare import compare_runs, scores_on_the_same_rows
from quicktune.export.exporter import ollama_tag
from quicktune.runs import (
    EVAL_DIR,
    HISTORY,
    MANIFEST,
    PROMOTE,
    RunSummary,
    eval_headline,
    eval_reports,
    in_force,
    read_history,
    read_manifest,
    report_against,
    resolve_run,
    run_label,
    sha256_file,
    versions,
)

RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole (fullmatch): no trailing newline
RUN_NAME = re.compile(rf"{RECIPE_NAME.pattern}/v[0-9]+")
METRICS_FILE = "metrics.jsonl"
RUN_FILES = (MANIFEST, "recipe.yaml", METRICS_FILE, "loss.png", "eval.json", EVAL_DIR)  # what the views read
MAX_DIFFERING_ROWS = 50


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks followed) lies in ``root``: the one rule for what the UI may read."""
    return path.resolve().is_relative_to(root.resolve())


def link_out(run_dir: Path, root: Path) -> Path | None:
    """The first path the views would read for ``run_dir`` (its folder, its files, its eval reports, its recipe's
    promotion history) that a symlink takes out of ``root``; None when there is none."""
    if not inside(run_dir, root):
        return run_dir
    candidates = [run_dir / name for name in RUN_FILES] + [run_dir.parent / HISTORY]
    for path in candidates:
        if (path.exists() or path.is_symlink()) and not inside(path, root):
            return path
    reports = run_dir / EVAL_DIR
    if reports.is_dir():
        return next((path for path in sorted(reports.iterdir()) if not inside(path, root)), None)
    return None


def run_folder(root: Path, name: str) -> Path:
    """``recipe/vN`` under ``root``; anything else (a path, ``..``, a run elsewhere, a run a symlink takes out
    of ``root``) is refused."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise QuicktuneError(f"{str(name)[:80]!r} is not a run name: expected recipe/vN")
    outside = link_out(root / name, root)
    if outside is not None:
        raise QuicktuneError(f"{name!r} is not inside the runs folder {root}: {outside.name} is a link out of it",
                             hint="The dashboard shows what is inside its runs folder only.")
    return resolve_run(str(root / name), root)


def contained_runs(root: Path) -> list[RunSummary]:
    """``quicktune.runs.list_runs`` with symlinks resolved: each run once, under its real name, and none that a
    link takes out of ``root`` (its folder, its recipe's folder, a file the views read), left out unread."""
    summaries: list[RunSummary] = []
    found = root.iterdir() if root.is_dir() else []
    recipe_dirs = sorted({p.resolve() for p in found if p.is_dir() and inside(p, root)})
    seen: set[Path] = set()
    for recipe_dir in recipe_dirs:
        promoted = _promoted_version(recipe_dir, root)
        for number in versions(recipe_dir):
            run_dir = (recipe_dir / f"v{number}").resolve()
            if run_dir in seen or run_dir.parent != recipe_dir or link_out(run_dir, root) is not None:
                continue  # listed already, a link to another recipe's run, or a link out
            seen.add(run_dir)
            try:
                manifest = read_manifest(run_dir)
            except (QuicktuneError, json.JSONDecodeError):
                continue
            metrics = manifest.get("metrics") or {}
            summaries.append(RunSummary(
                path=run_dir, recipe=recipe_dir.name, version=run_dir.name, status=manifest.get("status", "?"),
                started=manifest.get("started", ""), steps=metrics.get("steps", manifest.get("interrupted_at_step")),
                train_loss=metrics.get("train_loss"),
                eval_loss=metrics.get("best_eval_loss", metrics.get("eval_loss")), parent=manifest.get("parent"),
                exported=list(((manifest.get("export") or {}).get("ggufs") or {}).keys()),
                headline=eval_headline(run_dir), promoted=run_dir.name == promoted,
            ))
    return summaries


def _promoted_version(recipe_dir: Path, root: Path) -> str | None:
    """``vN`` promoted now, or None (also when the history cannot be read, or is a link out of ``root``)."""
    if not inside(recipe_dir / HISTORY, root):
        return None
    try:
        stack = in_force(read_history(recipe_dir))
    except QuicktuneError:
        return None
    return stack[-1].version if stack else None


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
    for summary in contained_runs(root):
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
                "promoted": summary.promoted,
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




def _recipe_history(recipe_dir: Path) -> dict[str, Any]:
    """One recipe's promotions and rollbacks, oldest first, and the run promoted now (``recipe/vN`` or None);
    a history that cannot be read (or is a link out of the runs folder) gives its error instead of lines."""
    if not inside(recipe_dir / HISTORY, recipe_dir.parent):
        return {"recipe": recipe_dir.name, "current": None, "lines": [], "error": f"{HISTORY} is a link out of the "
                "runs folder: not shown"}
    try:
        lines = read_history(recipe_dir)
    except QuicktuneError as exc:
        return {"recipe": recipe_dir.name, "current": None, "lines": [], "error": exc.message}
    stack = in_force(lines)
    return {"recipe": recipe_dir.name, "current": stack[-1].run if stack else None,
            "lines": [asdict(line) for line in lines], "error": None}


def history_view(root: Path, recipe: str | None = None) -> dict[str, Any]:
    """``quicktune runs history`` as JSON: every recipe's under ``root`` that has promotions, or ``recipe``'s
    (a recipe name with runs under ``root``)."""
    if recipe:
        if not RECIPE_NAME.fullmatch(recipe):
            raise QuicktuneError(f"{recipe[:80]!r} is not a recipe name")
        folder = root / recipe  # never a path: a name under root ("~" is not the home folder)
        if not inside(folder, root):
            raise QuicktuneError(f"{recipe!r} is not inside the runs folder {root}: it is a link out of it")
        if not versions(folder):
            raise QuicktuneError(f"no runs of {recipe!r} in the runs folder {root}")
        folders = [folder]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and inside(p, root)) if root.is_dir() else []
    histories = [_recipe_history(folder) for folder in folders]
    return {"root": str(root), "recipes": [h for h in histories if h["lines"] or h["error"] or recipe]}


def _promotion(run_dir: Path) -> dict[str, Any]:
    """Whether ``run_dir`` is its recipe's promoted version now, when it was promoted before, and the history."""
    history = _recipe_history(run_dir.parent)
    label = run_label(run_dir)
    mine = [line["when"] for line in history["lines"] if line["run"] == label and line["action"] == PROMOTE]
    return {"now": history["current"] == label, "promoted_at": mine, "history": history}


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
                "create": f"ollama create {shlex.quote(tag)} -f {shell_path(path)}",  # the copy button's command
                "run": f"ollama run {shlex.quote(tag)}",
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
        "recipe": recipe.read_text(encoding="utf-8", errors="replace") if recipe.is_file() else None,
        "loss_png": "loss.png" if (run_dir / "loss.png").is_file() else None,
        "updated": _updated(run_dir),
        "modelfiles": _modelfiles(run_dir, export),
        "fidelity": export.get("fidelity") or None,
        "evals": _reports(run_dir),
        "chat": f"quicktune chat {shell_path(run_dir)}" if export.get("ggufs") else None,
        "promotion": _promotion(run_dir),
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
    for item in (manifest.get("data") or {}).get("files", []) or []:
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
