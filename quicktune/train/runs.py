"""Run folders: ``runs/<recipe>/v1``, ``v2``, ... A new run never overwrites an old one.

Each run folder holds ``recipe.yaml`` (resolved), ``manifest.json``, ``metrics.jsonl``,
``loss.png``, ``checkpoints/`` and, when training ends, ``adapter/``. No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
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
        raise QuicktuneError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}", hint=hint) from None
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


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


# What resuming reads from a checkpoint besides the weights; transformers writes trainer_state.json
# last of all (Trainer._save_checkpoint), so a checkpoint without it was cut short.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def checkpoint_complete(checkpoint: Path) -> bool:
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return False
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES):
        return False
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was written to the end (a kill can cut the newest one short)."""
    return next((p for p in reversed(_checkpoints(run_dir)) if checkpoint_complete(p)), None)


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


# --- one process per run folder ---------------------------------------------------------------

LOCK = ".lock"


class RunInUse(QuicktuneError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def lock_run(run_dir: Path, what: str) -> Iterator[Path]:
    """Hold ``run_dir`` for this process while the block runs; another process gets ``RunInUse``.

    An advisory ``flock`` on ``run_dir/.lock``: the kernel drops it when the holder exits,
    however it exits (SIGKILL included), so a lock is never left behind by a dead process; the
    pid and command written into the file only serve the message."""
    import fcntl

    path = run_dir / LOCK
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while the block runs)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInUse(
                f"{run_label(run_dir)} is in use: {holder}",
                hint="Wait for it to end, or stop it (Ctrl-C in its terminal saves a checkpoint), then run the "
                "command again; `quicktune train --new-run` starts a separate run of the same recipe now.",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({what}, since {now()})\n")
        handle.flush()
        yield run_dir
    finally:
        handle.close()  # releases the flock


def holder(run_dir: Path) -> str | None:
    """Who holds the run folder now (for messages), or None when nobody does."""
    import fcntl

    path = run_dir / LOCK
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        return None


# Temporary files and folders a killed process leaves in a run folder, removed by the next
# process that holds the folder's lock (so none of them can belong to a live process).
STALE_IN_RUN = (".adapter.partial", ".model.partial", ".adapter.previous", ".model.previous", f".{MANIFEST}.*",
                ".recipe.yaml.*", ".loss.png.*", ".metrics.jsonl.*")
STALE_IN_EXPORT = (".dequantized-base.*", ".merged-*", ".*.partial", ".*.raw.gguf")


def remove_stale(run_dir: Path) -> list[Path]:
    """Leftovers of a killed train or export (call with the run folder locked): temp files, the
    staging folders of the final adapter and the merge, and checkpoints cut short."""
    removed = []
    candidates = [p for pattern in STALE_IN_RUN for p in run_dir.glob(pattern)]
    candidates += [p for pattern in STALE_IN_EXPORT for p in (run_dir / "export").glob(pattern)]
    candidates += [p for p in _checkpoints(run_dir) if not checkpoint_complete(p)]
    for path in dict.fromkeys(candidates):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def swap_in(staging: Path, final: Path) -> None:
    """Move the folder ``staging`` to ``final``, replacing what is there with no moment where
    ``final`` is missing: one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), then the
    old contents, now at ``staging``, are removed."""
    if not final.exists():
        os.replace(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)
        return
    # No atomic exchange here (another OS, a filesystem without it): the old folder is moved aside
    # first and put back by restore_final() if the process dies between the two renames.
    previous = final.with_name(f".{final.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def restore_final(run_dir: Path, name: str) -> None:
    """Undo a swap_in cut short between its two renames: the previous folder goes back."""
    previous, final = run_dir / f".{name}.previous", run_dir / name
    if previous.is_dir() and not final.exists():
        os.replace(previous, final)


def _exchange(one: Path, other: Path) -> bool:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(one), at_fdcwd, os.fsencode(other), rename_exchange)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(other))


# --- a full disk -------------------------------------------------------------------------------

_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "file write failed", "Disk quota exceeded",
                   "unexpected pos")  # torch's zip writer after a short write


def disk_full_error(exc: BaseException, path: Path, needed: int, suspect: bool = False) -> QuicktuneError | None:
    """A ``QuicktuneError`` naming ``path`` and the space a write needs, when ``exc`` (or what caused
    it) is the disk running out of space; None for any other error. torch, safetensors and the
    standard library each say it their own way; llama.cpp's quantizer says nothing (a status
    code), so with ``suspect`` a failed write with less space free than it needs counts too."""
    seen: BaseException | None = exc
    full = False
    while seen is not None and not full:
        full = (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            text in str(seen) for text in _DISK_FULL_TEXT)
        seen = seen.__cause__ or seen.__context__
    folder = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if not (full or (suspect and free < needed)):
        return None
    return QuicktuneError(
        f"no space left on the device writing {path}: it needs about {_size(needed)}, "
        f"{_size(free)} free there",
    )


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB" if count < 2**30 else f"{count / 2**30:,.2f} GiB"


# --- data the run was started on -----------------------------------------------------------------


def data_changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, Any]]:
    """The data files whose contents differ from what the run recorded when it started."""
    before = {item["path"]: item for item in (recorded or {}).get("files", [])}
    changes = []
    for item in current.get("files", []):
        old = before.get(item["path"])
        if old is None or old.get("sha256") != item["sha256"]:
            changes.append({
                "path": item["path"],
                "sha256_was": (old or {}).get("sha256"), "sha256_now": item["sha256"],
                "rows_was": (old or {}).get("rows"), "rows_now": item.get("rows"),
            })
    return changes


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics.jsonl records up to ``last_step`` (the checkpoint a run resumes from):
    the steps after it are trained again, and a line cut short by a kill is dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in kept))


def find_resumable(root: Path, recipe_name: str, recipe_sha: str, parent: str | None,
                   need_checkpoint: bool = True) -> Path | None:
    """The newest unfinished run of the same resolved recipe (and parent) that has a checkpoint
    (or, with ``need_checkpoint=False``, even one killed before its first checkpoint)."""
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
            return run_dir if latest_checkpoint(run_dir) or not need_checkpoint else None
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


def exported_gguf(run_dir: Path, manifest: dict[str, Any], quant: str) -> Path:
    """The GGUF the export wrote for ``quant``, checked against the manifest's record of it: a file
    that is gone, or replaced (another model's GGUF, a truncated copy), is an error, not a chat."""
    item = ((manifest.get("export") or {}).get("ggufs") or {}).get(quant) or {}
    if not isinstance(item, dict) or not isinstance(item.get("file"), str):
        raise QuicktuneError(f"{run_dir / MANIFEST}: export.ggufs.{quant}: no file recorded",
                             hint=f"Export it again: quicktune export {run_dir} --quant {quant}")
    path = run_dir / item["file"]
    hint = f"Export it again: delete it, then quicktune export {run_dir} --quant {quant}"
    if not path.is_file():
        raise QuicktuneError(f"{path}: missing (the export wrote it; the manifest lists it)", hint=hint)
    recorded, found = item.get("bytes"), path.stat().st_size
    if isinstance(recorded, int) and recorded != found:
        raise QuicktuneError(
            f"{path} is not the file the export wrote: {found:,} bytes, the manifest records {recorded:,} "
            "(replaced by another model's GGUF, or cut short?)",
            hint=hint,
        )
    return path


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
