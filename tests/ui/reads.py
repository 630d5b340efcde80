"""What this test process opens or lists under a folder while a server (in a thread of this process) answers:
Python's audit hooks see every ``open()`` and directory listing in any thread, and each path is resolved, so a
read through a symlink is seen where it lands."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EVENTS = {"open", "os.listdir", "os.scandir"}
_watched: dict[str, list[str]] = {}  # folder (resolved) -> paths read under it
_inside_hook = threading.local()
_installed = False


def _hook(event: str, args: tuple) -> None:
    if event not in EVENTS or not _watched or getattr(_inside_hook, "busy", False) or not args:
        return
    path = args[0]
    if not isinstance(path, str | bytes | os.PathLike):
        return  # a file descriptor
    _inside_hook.busy = True
    try:
        real = os.path.realpath(os.fsdecode(path))
        for folder, seen in list(_watched.items()):
            if real == folder or real.startswith(folder + os.sep):
                seen.append(f"{event} {real}")
    except Exception:  # a hook must never break the code it watches
        pass
    finally:
        _inside_hook.busy = False


@contextmanager
def reads_under(folder: Path) -> Iterator[list[str]]:
    """Yields the list of what is opened or listed under ``folder`` (symlinks resolved) until the block ends."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)  # for the rest of the process: there is no removing a hook
        _installed = True
    key = os.path.realpath(folder)
    seen: list[str] = []
    _watched[key] = seen
    try:
        yield seen
    finally:
        del _watched[key]
