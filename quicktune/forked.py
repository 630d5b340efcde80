"""Run one pure function in a forked child process while the caller does other work.

Used where two CPU-bound parts of a job do not depend on each other (``data check``: the
duplicate and leakage search, and tokenization). A forked child shares the parent's memory
copy-on-write, so large inputs are not pickled; only the result comes back, through a pipe.

Where a child cannot help or cannot be had (not Linux, one usable CPU, the child failed or
died), ``result()`` calls the function in the caller's process instead: the answer is the
same either way, only the time differs. An exception in the child is not carried over: the
function runs again in-process, so the caller sees the real exception with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Linux with two or more usable CPUs (macOS forks badly once system frameworks are loaded)."""
    return sys.platform.startswith("linux") and usable_cpus() >= 2


class Forked:
    """``fn(*args)`` started now in a forked child when ``start`` is true and forking can help."""

    def __init__(self, fn: Callable[..., Any], *args: Any, start: bool = True) -> None:
        self._fn, self._args = fn, args
        self._process = self._reader = None
        if start and can_fork():
            import multiprocessing

            context = multiprocessing.get_context("fork")
            self._reader, writer = context.Pipe(duplex=False)
            self._process = context.Process(target=_child, args=(writer, fn, args), daemon=True)
            self._process.start()
            writer.close()

    @property
    def in_child(self) -> bool:
        return self._process is not None

    def result(self) -> Any:
        if self._process is None:
            return self._fn(*self._args)
        try:
            ok, value = self._reader.recv()
        except (EOFError, OSError):  # the child died without an answer (killed, out of memory)
            ok, value = False, None
        finally:
            self.close()
        return value if ok else self._fn(*self._args)

    def close(self) -> None:
        """Stop the child if it is still running (the caller failed or no longer needs it)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        self._reader.close()
        if process.is_alive():
            process.terminate()
        process.join()


def _child(writer, fn: Callable[..., Any], args: tuple) -> None:
    try:
        answer = (True, fn(*args))
    except BaseException:
        answer = (False, None)
    try:
        writer.send(answer)
    except Exception:
        writer.send((False, None))
    writer.close()
