"""``quicktune runs compare A B``: what differs between two runs, and how they score.

Reads only the run folders (recipe.yaml, manifest.json, eval/*.json): no model is loaded.
Eval metrics are shown side by side only when both runs were scored on the same
held-out rows (same sha256): from the latest report that scored both (``eval B --against A``),
else from the latest pair of reports on the same rows; otherwise the table says how to get one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quicktune.evaluate.preference import PREFERENCE_METRICS, shown
from quicktune.evaluate.regression import DEFAULT_THRESHOLD, LOSS, find_regressions
from quicktune.hubref import is_hub_ref
from quicktune.runs import EVAL_DIR, eval_reports, own_scores, read_manifest, run_label
from quicktune.train.lineage import compare_data
from quicktune.train.preference import LOGGED


@dataclass
class Comparison:
    names: tuple[str, str]
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # section, key, a, b
    notes: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)  # eval keys B is worse on than A (evaluate/regression.py)
    threshold: float = DEFAULT_THRESHOLD


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def scores_on_the_same_rows(a: Path, b: Path) -> tuple[str, dict, dict, str] | None:
    """(rows sha256, A's scores, B's scores, where they come from), or None when no rows were shared."""
    reports = sorted(eval_reports(a) + eval_reports(b), key=lambda item: item[1].get("created") or "")
    for path, report in reversed(reports):
        left, right = own_scores(report, a), own_scores(report, b)
        if left and right:
            return report["data"]["sha256"], left, right, _shown(path)
    latest: dict[Path, dict[str, tuple]] = {a: {}, b: {}}
    for run_dir in (a, b):
        for path, report in eval_reports(run_dir):
            own = own_scores(report, run_dir)
            if own:
                latest[run_dir][report["data"]["sha256"]] = (report.get("created") or "", own, path)
    shared = set(latest[a]) & set(latest[b])
    if not shared:
        return None
    sha = max(shared, key=lambda key: max(latest[a][key][0], latest[b][key][0]))
    return sha, latest[a][sha][1], latest[b][sha][1], f"{_shown(latest[a][sha][2])} and {_shown(latest[b][sha][2])}"


def _shown(report_path: Path) -> str:
    """recipe/vN/eval/NAME.json"""
    run_dir = report_path.parent.parent if report_path.parent.name == EVAL_DIR else report_path.parent
    return f"{run_label(run_dir)}/{report_path.relative_to(run_dir)}"


def compare_runs(a: Path, b: Path, threshold: float = DEFAULT_THRESHOLD) -> Comparison:
    names = (run_label(a), run_label(b))
    result = Comparison(names, threshold=threshold)
    recipes = [_flatten(yaml.safe_load((d / "recipe.yaml").read_text(encoding="utf-8"))) for d in (a, b)]
    for key in sorted(set(recipes[0]) | set(recipes[1])):
        if key in ("name", "description", "hardware"):
            continue
        left, right = recipes[0].get(key), recipes[1].get(key)
        if left != right:
            result.rows.append(("recipe", key, _text(left), _text(right)))
    if not any(row[0] == "recipe" for row in result.rows):
        result.notes.append("the resolved recipes are identical")

    manifests = [read_manifest(d) for d in (a, b)]
    data = [{_data_name(f["path"]): _data_version(f) for f in (m.get("data") or {}).get("files", [])}
            for m in manifests]
    for name in sorted(set(data[0]) | set(data[1])):
        result.rows.append(("data", name, data[0].get(name, "-"), data[1].get(name, "-")))
    result.notes.append(data_added_note(compare_data(a, b)))
    for key in ("parent", "seed"):
        result.rows.append(("run", key, _text(manifests[0].get(key)), _text(manifests[1].get(key))))
    metrics = [m.get("metrics") or {} for m in manifests]
    logged = [key for key in LOGGED.values() if key in metrics[0] or key in metrics[1]]  # dpo / orpo runs
    for key in ("steps", "train_loss", "best_eval_loss", "seconds", *logged):
        result.rows.append(("training", key, _text(metrics[0].get(key)), _text(metrics[1].get(key))))

    shared = scores_on_the_same_rows(a, b)
    if shared is None:
        unscored = [n for n, d in zip(names, (a, b)) if not any(own_scores(r, d) for _, r in eval_reports(d))]
        result.notes.append(
            f"no eval report for {', '.join(unscored)}: run `quicktune eval RUN` to score it"
            if unscored
            else f"the two runs were scored on different held-out rows; to score both on the same rows: "
            f"quicktune eval {names[1]} --against {names[0]}"
        )
    else:
        sha, eval_a, eval_b, source = shared
        result.rows.append(("eval", "held-out rows (sha256)", sha[:12], sha[:12]))
        for key in eval_a["metrics"]:
            if key in PREFERENCE_METRICS:  # a share and a margin in nats
                result.rows.append(
                    ("eval", key, shown(key, eval_a["metrics"][key]), shown(key, eval_b["metrics"].get(key)))
                )
                continue
            result.rows.append(("eval", key, _share(eval_a["metrics"][key]), _share(eval_b["metrics"].get(key))))
        result.rows.append(("eval", LOSS, _text(eval_a.get("loss")), _text(eval_b.get("loss"))))
        result.regressions = find_regressions(
            eval_a["metrics"], eval_b["metrics"], eval_a.get("loss"), eval_b.get("loss"), threshold
        )
        result.notes.append(f"eval scores from {source}")
    return result


def _data_name(path: str) -> str:
    """A data file by its name; a Hub dataset by its whole entry (hf://OWNER/NAME?options)."""
    return path if is_hub_ref(path) else Path(path).name


def _data_version(item: dict) -> str:
    """A data file's sha256 and rows; a Hub dataset's with the commit its rows came from."""
    commit = f" @ {item['revision'][:12]}" if item.get("revision") else ""
    return f"{item['sha256'][:12]}{commit} ({item['rows']} rows)"


def data_added_note(added: dict) -> str:
    """One line of what B trains on that A did not (train/lineage.py's ``data_added``), e.g.
    ``data added since x/v1: corrections.jsonl, 37 rows (sha256 0a1b2c3d4e5f); 37 training rows new``."""
    files = "; ".join(f"{Path(f['path']).name}, {f['rows']} rows (sha256 {f['sha256'][:12]})" for f in added["files"])
    if added["new_rows"] is None:
        rows = f"new training rows unknown ({added['since']} kept no row hashes)"
    else:
        rows = f"{added['new_rows']} training row(s) new"
        if added["new_rows"]:
            rows += f" (rows sha256 {added['new_rows_sha256'][:12]})"
    return f"data added since {added['since']}: {files or 'no new file'}; {rows}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
