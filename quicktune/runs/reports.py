"""The eval reports kept in a run folder, and the headline a run is listed with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quicktune.runs.folder import run_label

EVAL_DIR = "eval"  # one report per comparison: eval/<against>-<rows>.json (see evaluate/report.py)


def eval_reports(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every eval report of a run, oldest first (and ``eval.json``, where earlier versions wrote the one report)."""
    paths = sorted((run_dir / EVAL_DIR).glob("*.json")) + [p for p in [run_dir / "eval.json"] if p.is_file()]
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(report, dict) and report.get("subjects"):
            reports.append((path, report))
    return sorted(reports, key=lambda item: item[1].get("created") or "")


def report_against(report: dict[str, Any]) -> str | None:
    """What a report compared its run with: "base", another run's label, or None (the run alone)."""
    if "against" in report:
        return report["against"]
    subjects = [s for s in report.get("subjects", []) if s.get("kind") != "gguf"]
    return subjects[0]["label"] if len(subjects) >= 2 else None


def own_scores(report: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    label = run_label(run_dir)
    return next((s for s in report.get("subjects", []) if s.get("label") == label), None)


def read_own_eval(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The report a run's headline comes from, and the run's own scores in it.

    The rule: the latest report against the base model; without one, the latest report
    that scored the run at all. (None, None) when the run was never evaluated.
    """
    scored = [(path, report) for path, report in eval_reports(run_dir) if own_scores(report, run_dir)]
    against_base = [item for item in scored if report_against(item[1]) == "base"]
    chosen = (against_base or scored or [None])[-1]
    if chosen is None:
        return None, None
    return chosen[1], own_scores(chosen[1], run_dir)


def eval_headline(run_dir: Path) -> str | None:
    report, own = read_own_eval(run_dir)
    value = (own or {}).get("metrics", {}).get((report or {}).get("metric"))
    return None if value is None else f"{report['metric']} {value:.1%}"
