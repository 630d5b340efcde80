"""One process per run folder: an advisory lock the kernel drops when its holder exits."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from quicktune.errors import QuicktuneError
from quicktune.runs.files import now
from quicktune.runs.folder import run_label

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

