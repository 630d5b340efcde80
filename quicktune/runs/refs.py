"""Naming runs: a reference (``v3``, ``recipe/v3``, ``promoted``, a path) to its folder, and every run listed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from quicktune.errors import QuicktuneError
from quicktune.runs.folder import MANIFEST, VERSION, read_manifest, run_label, versions
from quicktune.runs.promotions import promoted_entry
from quicktune.runs.reports import eval_headline

# promoted, promoted~1, recipe/promoted, runs/recipe/promoted~2
PROMOTED = re.compile(r"^(?:(?P<recipe>.+)/)?promoted(?:~(?P<back>\d+))?$")


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
    trained, or the first run named), or of the only recipe under the runs folder;
    ``promoted`` (``promoted~1``: the one promoted before it) of that recipe, or ``recipe/promoted``.
    Returns the run folder, resolved; a reference that names none is a ``QuicktuneError``.
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
    if found is None and (promoted := PROMOTED.match(ref)):
        found = _promoted_run(promoted, root, recipe_name)
    if found is not None:
        return found.resolve()
    existing = [run_label(d / f"v{n}") for d in _recipe_dirs(root) for n in versions(d) if _is_run(d / f"v{n}")]
    raise QuicktuneError(
        f"no run found at {ref!r}",
        problems=[f"runs in {root}: {', '.join(existing)}" if existing else f"there are no runs in {root}"],
        hint="Name a run as recipe/vN, as vN when the runs folder holds one recipe, or by its folder "
        "(--runs-dir says where runs are; `quicktune runs` lists them).",
    )


def recipe_dir_named(root: Path, recipe: str | None, ref: str = "promoted", example: str = "{recipe}/{ref}") -> Path:
    """The folder of ``recipe`` (a name under ``root``, or a folder); without one, the only recipe
    under ``root``. More than one recipe and none named is an error whose hint shows ``example``
    (``RECIPE/promoted`` by default)."""
    if recipe:
        for folder in (root / recipe, Path(recipe).expanduser()):
            if folder.is_dir() and versions(folder):
                return folder
        known = ", ".join(p.name for p in _recipe_dirs(root)) or "none"
        raise QuicktuneError(f"no recipe {recipe!r} with runs in {root} (recipes there: {known})")
    recipes = _recipe_dirs(root)
    if len(recipes) == 1:
        return recipes[0]
    if not recipes:
        raise QuicktuneError(f"there are no runs in {root}", hint="--runs-dir says where runs are.")
    raise QuicktuneError(
        f"{ref!r} is ambiguous: {root} holds {len(recipes)} recipes ({', '.join(p.name for p in recipes)})",
        hint=f"Name the recipe too, e.g. {example.format(recipe=recipes[0].name, ref=ref)}",
    )


def _promoted_run(match: re.Match, root: Path, recipe_name: str | None) -> Path:
    """The run ``promoted`` / ``promoted~N`` names (see runs/promotions.py), checked to be there."""
    ref = match.group(0)
    recipe_dir = recipe_dir_named(root, match.group("recipe") or recipe_name, ref)
    back = int(match.group("back") or 0)
    entry = promoted_entry(recipe_dir, back)
    if entry is None:
        current = promoted_entry(recipe_dir)
        raise QuicktuneError(
            f"{ref}: {recipe_dir.name} has no version promoted "
            + (f"{back} before the current one ({current.run})" if current else "yet"),
            hint=f"`quicktune runs history {recipe_dir.name}` lists its promotions; "
            "`quicktune runs promote vN` promotes one.",
        )
    run_dir = recipe_dir / entry.version
    if not _is_run(run_dir):
        raise QuicktuneError(f"{ref} is {entry.run}, but {run_dir} is gone (no {MANIFEST})",
                             hint="Promote another version: quicktune runs promote vN")
    return run_dir


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
    promoted: bool = False  # the recipe's promoted version now (runs/promotions.py)


def list_runs(root: Path) -> list[RunSummary]:
    summaries = []
    if not root.is_dir():
        return summaries
    for recipe_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        promoted = _promoted_version(recipe_dir)
        for number in versions(recipe_dir):
            run_dir = recipe_dir / f"v{number}"
            try:
                manifest = read_manifest(run_dir)
            except (QuicktuneError, json.JSONDecodeError):
                continue
            metrics = manifest.get("metrics") or _logged_losses(run_dir)
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
                    promoted=run_dir.name == promoted,
                )
            )
    return summaries




def _logged_losses(run_dir: Path) -> dict[str, float]:
    """An unfinished run's losses from its metrics.jsonl (the manifest gets them when training ends):
    the last logged training loss and the lowest eval loss; lines cut short by a kill are skipped."""
    found: dict[str, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("loss"), (int, float)):
            found["train_loss"] = float(record["loss"])
        eval_loss = record.get("eval_loss")
        if isinstance(eval_loss, (int, float)) and eval_loss < found.get("best_eval_loss", float("inf")):
            found["best_eval_loss"] = float(eval_loss)
    return found


def _promoted_version(recipe_dir: Path) -> str | None:
    """``vN`` promoted now, or None (also when the history cannot be read: the listing still shows)."""
    try:
        entry = promoted_entry(recipe_dir)
    except QuicktuneError:
        return None
    return entry.version if entry else None
