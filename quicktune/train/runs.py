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


def describe_checkpoints(run_dir: Path) -> None:
    """Our README in checkpoints/, in place of the model card TRL writes there at every save."""
    label = run_label(run_dir)
    write_atomic(
        run_dir / "checkpoints" / "README.md",
        f"# Checkpoints of {label}\n\n"
        "Written by quicktune while training, to resume from: the last two checkpoints (and, with eval\n"
        "data, the best by eval loss), each with the optimizer, scheduler and random state.\n\n"
        "- Training stopped (Ctrl-C)? Run the same `quicktune train` command again: it resumes from the newest.\n"
        "- The trained result is `../adapter/` (`../model/` for full fine-tuning): export it with\n"
        f"  `quicktune export {label}`. Nothing here needs to be kept once the run is finished.\n",
    )


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
    if found is None and _VERSION.match(ref):
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
                    headline=_eval_headline(run_dir),
                )
            )
    return summaries


def run_label(run_dir: Path) -> str:
    """How a run is named in tables and reports: ``recipe/vN``."""
    return f"{run_dir.parent.name}/{run_dir.name}"


# Bits per weight, most first: the order "best" follows when the fidelity check has not ranked them.
QUANT_ORDER = ("f16", "bf16", "q8_0", "q5_k_m", "q4_k_m")


def pick_quantization(run_dir: Path, manifest: dict[str, Any], wanted: str | None = None) -> str:
    """Which exported GGUF ``chat`` and ``eval --gguf`` use: ``wanted``, or else the best of the
    quantizations the user asked for (those with a Modelfile): the highest same-top-token rate in
    the export's fidelity check when every one was checked, otherwise the most bits per weight."""
    export = manifest.get("export") or {}
    ggufs = export.get("ggufs") or {}
    if not ggufs:
        raise QuicktuneError(f"{run_label(run_dir)} has not been exported yet", hint=f"Run: quicktune export {run_dir}")
    if wanted:
        if wanted not in ggufs:
            raise QuicktuneError(
                f"{run_label(run_dir)} has no {wanted} GGUF (exported: {', '.join(ggufs)})",
                hint=f"Add it with: quicktune export {run_dir} --quant {wanted}",
            )
        return wanted
    asked = [q for q in export.get("modelfiles") or {} if q in ggufs] or list(ggufs)
    rank = {q: QUANT_ORDER.index(q) if q in QUANT_ORDER else len(QUANT_ORDER) for q in asked}
    checked = {row.get("name"): row.get("same_top_token") for row in (export.get("fidelity") or {}).get("ggufs", [])}
    if all(checked.get(q) is not None for q in asked):
        return max(asked, key=lambda q: (checked[q], -rank[q]))
    return min(asked, key=rank.__getitem__)


def trained_dir(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Where a finished run keeps what it trained: ``model/`` for full fine-tuning, else ``adapter/``."""
    return run_dir / ("model" if manifest.get("method") == "full" else "adapter")


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


def _eval_headline(run_dir: Path) -> str | None:
    report, own = read_own_eval(run_dir)
    value = (own or {}).get("metrics", {}).get((report or {}).get("metric"))
    return None if value is None else f"{report['metric']} {value:.1%}"
