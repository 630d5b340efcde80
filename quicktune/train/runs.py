"""Run folders: ``runs/<recipe>/v1``, ``v2``, ... A new run never overwrites an old one.

Each run folder holds ``recipe.yaml`` (resolved), ``manifest.json``, ``metrics.jsonl``,
``loss.png``, ``checkpoints/`` and, when training ends, ``adapter/``. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

_VERSION = re.compile(r"^v(\d+)$")
MANIFEST = "manifest.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temp file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(recipe_dir: Path) -> list[int]:
    if not recipe_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in recipe_dir.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())


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


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise QuicktuneError(f"{run_dir} is not a quicktune run (no {MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def update_manifest(run_dir: Path, **changes: Any) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    manifest.update(changes)
    write_manifest(run_dir, manifest)
    return manifest


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    complete = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def find_resumable(root: Path, recipe_name: str, recipe_sha: str, parent: str | None) -> Path | None:
    """The newest unfinished run of the same resolved recipe (and parent) that has a checkpoint."""
    recipe_dir = root / recipe_name
    for number in reversed(versions(recipe_dir)):
        run_dir = recipe_dir / f"v{number}"
        try:
            manifest = read_manifest(run_dir)
        except (QuicktuneError, json.JSONDecodeError):
            continue
        if manifest.get("status") == "finished":
            return None  # only the newest run is ever resumed
        if manifest.get("recipe_sha256") == recipe_sha and manifest.get("parent") == parent:
            return run_dir if latest_checkpoint(run_dir) else None
        return None
    return None


def resolve_run(ref: str, root: Path, recipe_name: str | None = None) -> Path:
    """``runs/x/v3``, ``x/v3`` or (with a recipe name) ``v3`` -> the run folder."""
    candidates = [Path(ref), root / ref]
    if recipe_name and _VERSION.match(ref):
        candidates.insert(0, root / recipe_name / ref)
    for candidate in candidates:
        if (candidate / MANIFEST).is_file():
            return candidate.resolve()
    raise QuicktuneError(
        f"no run found at {ref!r}",
        hint="Give a run folder such as runs/smollm2-demo/v1 (see `quicktune runs`).",
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
    headline: str | None = None  # eval.json: the recipe's eval.metric for this run, e.g. "json_fields 98.3%"


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
                    headline=_eval_headline(run_dir),
                )
            )
    return summaries


def run_label(run_dir: Path) -> str:
    """How a run is named in tables and reports: ``recipe/vN``."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def trained_dir(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Where a finished run keeps what it trained: ``model/`` for full fine-tuning, else ``adapter/``."""
    return run_dir / ("model" if manifest.get("method") == "full" else "adapter")


def read_own_eval(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The run's eval.json and, in it, the run's own scores (None, None when it has none)."""
    path = run_dir / "eval.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        return None, None
    if not report:
        return None, None
    label = run_label(run_dir)
    return report, next((s for s in report.get("subjects", []) if s.get("label") == label), None)


def _eval_headline(run_dir: Path) -> str | None:
    report, own = read_own_eval(run_dir)
    value = (own or {}).get("metrics", {}).get((report or {}).get("metric"))
    return None if value is None else f"{report['metric']} {value:.1%}"
