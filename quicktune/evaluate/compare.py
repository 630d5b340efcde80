"""``quicktune runs compare A B``: what differs between two runs, and how they score.

Reads only the run folders (recipe.yaml, manifest.json, eval.json): no model is loaded.
Eval metrics are shown side by side only when both runs were scored on the same
held-out rows (same sha256); otherwise the table says so and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quicktune.train.runs import read_manifest, read_own_eval, run_label


@dataclass
class Comparison:
    names: tuple[str, str]
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # section, key, a, b
    notes: list[str] = field(default_factory=list)


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


def _run_eval(run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(eval data sha256, this run's own scores) from its eval.json."""
    report, own = read_own_eval(run_dir)
    return (report or {}).get("data", {}).get("sha256"), own


def compare_runs(a: Path, b: Path) -> Comparison:
    names = (run_label(a), run_label(b))
    result = Comparison(names)
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
    data = [
        {Path(f["path"]).name: f"{f['sha256'][:12]} ({f['rows']} rows)" for f in (m.get("data") or {}).get("files", [])}
        for m in manifests
    ]
    for name in sorted(set(data[0]) | set(data[1])):
        result.rows.append(("data", name, data[0].get(name, "-"), data[1].get(name, "-")))
    for key in ("parent", "seed"):
        result.rows.append(("run", key, _text(manifests[0].get(key)), _text(manifests[1].get(key))))
    metrics = [m.get("metrics") or {} for m in manifests]
    for key in ("steps", "train_loss", "best_eval_loss", "seconds"):
        result.rows.append(("training", key, _text(metrics[0].get(key)), _text(metrics[1].get(key))))

    (sha_a, eval_a), (sha_b, eval_b) = _run_eval(a), _run_eval(b)
    if eval_a is None or eval_b is None:
        missing = [n for n, e in zip(names, (eval_a, eval_b)) if e is None]
        result.notes.append(f"no eval.json for {', '.join(missing)}: run `quicktune eval RUN` to score it")
    elif sha_a != sha_b:
        result.notes.append(
            "the two runs were scored on different held-out rows; to score both on the same rows: "
            f"quicktune eval {b} --against {a}"
        )
    else:
        result.rows.append(("eval", "held-out rows (sha256)", sha_a[:12], sha_b[:12]))
        for key in eval_a["metrics"]:
            result.rows.append(("eval", key, _share(eval_a["metrics"][key]), _share(eval_b["metrics"][key])))
        result.rows.append(("eval", "loss on the answers", _text(eval_a.get("loss")), _text(eval_b.get("loss"))))
    return result


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
