"""Which unfinished run a training command continues when its recipe changed since that run started.

A run is resumed when its resolved recipe (``recipe.yaml``, defaults included) hashes the same as the
command's. A change to a key that does not change the steps already taken is no reason to start over:
the run is adopted (its ``recipe.yaml`` and ``recipe_sha256`` become the command's, and the change is
recorded in the manifest's ``recipe_changes``). Any other change is refused with the keys that differ,
so an unfinished run is never silently left behind by a new ``vN`` starting from step 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from quicktune.errors import QuicktuneError
from quicktune.recipe import Recipe
from quicktune.runs.checkpoints import latest_checkpoint
from quicktune.runs.files import now, write_atomic
from quicktune.runs.folder import read_manifest, run_label, update_manifest, versions
from quicktune.runs.locks import holder, lock_run

# Keys that change what happens from here on, not the steps already taken: how long training goes,
# how often it evaluates, saves and logs, where it reports, and the export and eval settings.
RESUMABLE_CHANGES = (
    "description", "hardware", "extends",
    "training.max_steps", "training.epochs", "training.eval_every", "training.save_every",
    "training.logging_every", "training.early_stopping_patience", "training.report_to",
    "export.", "eval.",
)  # fmt: skip

_ABSENT = object()


@dataclass
class RecipeChange:
    """The newest unfinished run of a recipe (same ``--from``) whose resolved recipe differs from the command's."""

    run_dir: Path
    checkpoint: Path | None  # where it would resume; None: killed before its first checkpoint
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # dotted key -> (the run's, the command's)

    @property
    def blocking(self) -> list[str]:
        """The changed keys that would change the steps already taken."""
        return [key for key in self.changed if not resumable_change(key)]

    def describe(self, keys: list[str] | None = None) -> list[str]:
        """One line per changed key: ``training.max_steps: 120 -> 50``."""
        return [f"{key}: {_show(self.changed[key][0])} -> {_show(self.changed[key][1])}"
                for key in (self.changed if keys is None else keys)]


def resumable_change(key: str) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in RESUMABLE_CHANGES)


def recipe_change(root: Path, recipe_name: str, recipe_yaml: str, sha: str, parent: str | None) -> RecipeChange | None:
    """The newest run of ``recipe_name`` under ``root`` when it is unfinished, has the same ``parent`` and
    a resolved recipe other than ``recipe_yaml`` (whose sha256 is ``sha``); else None."""
    recipe_dir = root / recipe_name
    numbers = versions(recipe_dir)
    if not numbers:
        return None
    run_dir = recipe_dir / f"v{numbers[-1]}"
    try:
        manifest = read_manifest(run_dir)
    except (QuicktuneError, json.JSONDecodeError):
        return None
    if manifest.get("status") == "finished" or manifest.get("parent") != parent:
        return None
    if manifest.get("recipe_sha256") == sha or holder(run_dir):  # a run training now is another experiment
        return None
    try:
        was = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(was, dict):
        return None
    changed = _differences(_flatten(was), _flatten(yaml.safe_load(recipe_yaml)))
    return RecipeChange(run_dir, latest_checkpoint(run_dir), changed)


def adopt_recipe(change: RecipeChange, recipe_yaml: str, sha: str) -> None:
    """The run takes the command's recipe (only keys ``RESUMABLE_CHANGES`` allow may differ): its recipe.yaml
    and recipe_sha256 become the command's, so training resumes it; the change is kept in the manifest."""
    if change.blocking:
        raise ValueError(f"{change.run_dir}: not a change a run can be resumed with: {change.blocking}")
    with lock_run(change.run_dir, "quicktune train"):
        manifest = read_manifest(change.run_dir)
        entry = {"at": now(), "recipe_sha256_was": manifest.get("recipe_sha256"),
                 "changed": {key: list(pair) for key, pair in change.changed.items()}}
        write_atomic(change.run_dir / "recipe.yaml", recipe_yaml)
        update_manifest(change.run_dir, recipe_sha256=sha,
                        recipe_changes=[*manifest.get("recipe_changes", []), entry])


def refusal(change: RecipeChange, continue_command: str, fresh_command: str) -> QuicktuneError:
    """The error for a run that cannot be resumed with the command's recipe: the keys, and both ways on."""
    blocking = change.blocking
    where = change.checkpoint.name if change.checkpoint else "no checkpoint"
    return QuicktuneError(
        f"{run_label(change.run_dir)} is unfinished ({where}) and was started with another recipe: "
        f"{len(blocking)} key(s) differ that change the steps it already trained",
        problems=change.describe(blocking),
        hint=f"Continue {change.run_dir.name} as it started (the recipe it recorded): {continue_command}\n"
        f"or start a new run from step 0 with this recipe ({change.run_dir.name} stays as it is): {fresh_command}",
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _differences(was: dict[str, Any], now_: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ; a key only one side has counts as its schema default on the other
    (a key a newer quicktune writes, or leaves out while it has its default value)."""
    changed = {}
    for key in [*was, *(k for k in now_ if k not in was)]:
        old, new = was.get(key, _ABSENT), now_.get(key, _ABSENT)
        old = _default(key) if old is _ABSENT else old
        new = _default(key) if new is _ABSENT else new
        if old != new:
            changed[key] = (None if old is _ABSENT else old, None if new is _ABSENT else new)
    return changed


def _default(dotted: str) -> Any:
    """The schema's default for a dotted recipe key, or ``_ABSENT`` when it has none."""
    model: type[BaseModel] = Recipe
    parts = dotted.split(".")
    for part in parts[:-1]:
        info = model.model_fields.get(part)
        sub = info.annotation if info else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return _ABSENT
        model = sub
    info = model.model_fields.get(parts[-1])
    if info is None or info.is_required():
        return _ABSENT
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _show(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value, ensure_ascii=False)
