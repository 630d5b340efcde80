"""Checkpoints, resuming, and the staging folders a run swaps in: what survives a kill."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.runs.files import write_atomic
from quicktune.runs.folder import MANIFEST, read_manifest, run_label, versions


def checkpoint_dirs(run_dir: Path) -> list[Path]:
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
    return next((p for p in reversed(checkpoint_dirs(run_dir)) if checkpoint_complete(p)), None)


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
    candidates += [p for p in checkpoint_dirs(run_dir) if not checkpoint_complete(p)]
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

