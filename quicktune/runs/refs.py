"""Naming runs: a reference (``v3``, ``recipe/v3``, a path) to its folder, and every run listed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quicktune.errors import QuicktuneError
from quicktune.runs.folder import MANIFEST, VERSION, read_manifest, run_label, versions
from quicktune.runs.reports import eval_headline


def _is_run(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _run_around(path: Path) -> Path | None:
    """The run folder holding ``path`` (the folder itself, its ``export/``, or any file inside)."""
    for folder in [path, *path.parents] if path.exists() else []:
        if _is_run(folder):
            return folder
    return None


def _recipe_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and any(_is_run(p / f"v{n}") for n in versions(p)))


def resolve_run(ref: str, root: Path, recipe_name: str | None = None) -> Path:
    """The one way every command names a run.

    Accepted: a run folder or anything inside one (its ``export/``, a GGUF, a Modelfile);
    ``recipe/vN`` under the runs folder; ``vN`` of ``recipe_name`` (the recipe being
    trained, or the first run named), or of the only recipe under the runs folder.
    """
    found = _run_around(Path(ref).expanduser())
    if found is None:
        found = _run_around(root / ref) if not Path(ref).is_absolute() else None
    if found is None and VERSION.match(ref):
        recipes = [recipe_name] if recipe_name else [p.name for p in _recipe_dirs(root)]
        matches = [root / name / ref for name in recipes if _is_run(root / name / ref)]
        if len(matches) > 1:
            raise QuicktuneError(
                f"{ref!r} is ambiguous: {len(matches)} recipes have a run {ref}",
                problems=[", ".join(run_label(m) for m in matches)],
                hint=f"Name the recipe too, e.g. {run_label(matches[0])}.",
            )
        found = matches[0] if matches else None
    if found is not None:
        return found.resolve()
    existing = [run_label(d / f"v{n}") for d in _recipe_dirs(root) for n in versions(d) if _is_run(d / f"v{n}")]
    raise QuicktuneError(
        f"no run found at {ref!r}",
        problems=[f"runs in {root}: {', '.join(existing)}" if existing else f"there are no runs in {root}"],
        hint="Name a run as recipe/vN, as vN when the runs folder holds one recipe, or by its folder "
        "(--runs-dir says where runs are; `quicktune runs` lists them).",
    )


@dataclass
class RunSummary:
    path: Path
    recipe: str
    version: str
    status: str
    started: str
    steps: int | None
    train_loss: float | None
    eval_loss: float | None
    parent: str | None
    exported: list[str] = field(default_factory=list)  # quantizations with a GGUF
    headline: str | None = None  # from read_own_eval: the recipe's eval.metric, e.g. "json_fields 98.3%"


def list_runs(root: Path) -> list[RunSummary]:
    summaries = []
    if not root.is_dir():
        return summaries
    for recipe_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for number in versions(recipe_dir):
            run_dir = recipe_dir / f"v{number}"
            try:
                manifest = read_manifest(run_dir)
            except (QuicktuneError, json.JSONDecodeError):
                continue
            metrics = manifest.get("metrics") or {}
            summaries.append(
                RunSummary(
                    path=run_dir,
                    recipe=recipe_dir.name,
                    version=run_dir.name,
                    status=manifest.get("status", "?"),
                    started=manifest.get("started", ""),
                    steps=metrics.get("steps", manifest.get("interrupted_at_step")),
                    train_loss=metrics.get("train_loss"),
                    eval_loss=metrics.get("best_eval_loss", metrics.get("eval_loss")),
                    parent=manifest.get("parent"),
                    exported=list(((manifest.get("export") or {}).get("ggufs") or {}).keys()),
                    headline=eval_headline(run_dir),
                )
            )
    return summaries


