"""The one atomic write, file hashes, timestamps, and the disk-full error every writer shares. No torch here."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from quicktune.errors import QuicktuneError


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

