"""A run folder and its manifest: ``runs/<recipe>/v1``, ``v2``, ... A new run never overwrites an old one.

Each run folder holds ``recipe.yaml`` (resolved), ``manifest.json``, ``metrics.jsonl``,
``loss.png``, ``checkpoints/`` and, when training ends, ``adapter/`` (``model/`` for a full run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.runs.files import write_atomic

VERSION = re.compile(r"^v(\d+)$")
MANIFEST = "manifest.json"


def versions(recipe_dir: Path) -> list[int]:
    if not recipe_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in recipe_dir.iterdir() if (m := VERSION.match(p.name)) and p.is_dir())


def next_run_dir(root: Path, recipe_name: str) -> Path:
    """Where the next run of this recipe would go (not claimed)."""
    return root / recipe_name / f"v{(versions(root / recipe_name) or [0])[-1] + 1}"


def create_run_dir(root: Path, recipe_name: str) -> Path:
    """The next free ``vN``, claimed with an exclusive mkdir so two runs never share one."""
    recipe_dir = root / recipe_name
    recipe_dir.mkdir(parents=True, exist_ok=True)
    number = int(next_run_dir(root, recipe_name).name[1:])
    while True:
        candidate = recipe_dir / f"v{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


# Keys every command reads, with their types: a manifest edited by hand is checked against them.
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "method": (str,), "recipe": (str,), "base_model": (dict,), "data": (dict,),
    "export": (dict, type(None)), "metrics": (dict, type(None)), "resumes": (list,), "parent": (str, type(None)),
}


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise QuicktuneError(f"{run_dir} is not a quicktune run (no {MANIFEST})")
    hint = "quicktune writes this file; if it was edited by hand, undo the edit (or train the run again)."
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise QuicktuneError(f"{path}: not UTF-8 text ({exc.reason})", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise QuicktuneError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}", hint=hint
        ) from None
    if not isinstance(manifest, dict):
        raise QuicktuneError(f"{path}:1: expected a JSON object, found {type(manifest).__name__}", hint=hint)
    wrong = [
        f"{key}: expected {' or '.join('null' if t is type(None) else t.__name__ for t in types)}, "
        f"found {type(manifest[key]).__name__}"
        for key, types in _MANIFEST_TYPES.items()
        if key in manifest and not isinstance(manifest[key], types)
    ]
    if wrong:
        raise QuicktuneError(f"{path}: {len(wrong)} key(s) of the wrong type", problems=wrong, hint=hint)
    return manifest


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def update_manifest(run_dir: Path, **changes: Any) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    manifest.update(changes)
    write_manifest(run_dir, manifest)
    return manifest



def run_label(run_dir: Path) -> str:
    """How a run is named in tables and reports: ``recipe/vN``."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def trained_dir(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Where a finished run keeps what it trained: ``model/`` for full fine-tuning, else ``adapter/``."""
    return run_dir / ("model" if manifest.get("method") == "full" else "adapter")

