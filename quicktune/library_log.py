"""Keep other libraries' output out of the terminal: it goes to a log file in the run folder.

torch, transformers, TRL, Unsloth, bitsandbytes, datasets and llama.cpp print banners,
deprecation warnings and progress bars of their own, from Python (print, warnings,
logging, tqdm) and from C (llama.cpp, bitsandbytes' loader), and in child processes
(llama.cpp's converter). The one place all of them meet is the process's file
descriptors 1 and 2, so while a ``LibraryLog`` is open those point at the log file and
quicktune's consoles (quicktune/console.py) write to copies of the terminal's
descriptors taken before. Only quicktune's own progress and results reach the terminal.

The log starts where the run folder is not known yet (the runs folder, as
``.library-<pid>.log``) and ``move_into`` puts it in the run folder once it exists; a
file keeps its descriptor across a rename. What a user should know from it is said again
in quicktune's words (``NOTICES``) when the log is closed, and the log is named.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quicktune.console import console, err_console, print_library_log

LOG_NAME = "library.log"

# The notice about bitsandbytes' 4-bit CPU kernel: bitsandbytes warns when it is imported, 4-bit model or not.
FOUR_BIT_KERNEL = re.compile(r"Failed to load CPU gemm_4bit_forward")

# (pattern in the libraries' output, what it means for the user). Only what changes what the user
# gets or should do; the rest stays in the log.
NOTICES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        FOUR_BIT_KERNEL,
        (
            "bitsandbytes has no fast 4-bit CPU kernel on this machine: 4-bit layers run on its slower path "
            "(method: lora trains this model at about the same speed)"
        ),
    ),
    (
        re.compile(r"Unsloth could not be imported|Unsloth: .*(?:not|cannot) .*(?:supported|patch)", re.I),
        "Unsloth is not fully usable here: training runs on plain transformers + peft",
    ),
    (
        re.compile(r"out of memory|CUDA error", re.I),
        "a library reported running out of memory or a CUDA error: see the log",
    ),
)


@dataclass
class LibraryLog:
    path: Path
    _saved: dict[int, int] = field(default_factory=dict)
    # whether the command loaded 4-bit weights (None: not known): the 4-bit kernel notice is said only then
    four_bit: bool | None = None

    def move_into(self, run_dir: Path) -> Path:
        """Move the log (still being written) into ``run_dir``; an earlier log there is appended to."""
        target = Path(run_dir) / LOG_NAME
        if target == self.path:
            return target
        sys.stdout.flush()
        sys.stderr.flush()
        if target.exists():  # a resumed run: keep its earlier log, add this one
            with open(target, "ab") as out:
                out.write(self.path.read_bytes())
            fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            for number in (1, 2):
                os.dup2(fd, number)
            os.close(fd)
            self.path.unlink(missing_ok=True)
        else:
            os.replace(self.path, target)
        self.path = target
        return target

    def notices(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [said for pattern, said in NOTICES
                if pattern.search(text) and (pattern is not FOUR_BIT_KERNEL or self.four_bit is not False)]


_ACTIVE: list[LibraryLog] = []


@contextlib.contextmanager
def library_output_to_log(folder: Path) -> Iterator[LibraryLog]:
    """The open log when there is one (``run`` = train + export + eval is one log), else a new one."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    opened: list[LibraryLog] = []
    try:
        with _redirected(folder) as log:
            opened.append(log)
            _ACTIVE.append(log)
            try:
                yield log
            finally:
                _ACTIVE.pop()
    finally:  # also after an error or Ctrl-C: the log is where the details are
        if opened:
            print_library_log(opened[0].path, opened[0].notices())


@contextlib.contextmanager
def _redirected(folder: Path) -> Iterator[LibraryLog]:
    """Route descriptors 1 and 2 to a log under ``folder``; quicktune's consoles keep the terminal.

    With QUICKTUNE_VERBOSE=1 nothing is redirected and the log holds only a note saying so."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = LibraryLog(folder / f".library-{os.getpid()}.log")
    if os.environ.get("QUICKTUNE_VERBOSE") == "1":
        log.path.write_text("QUICKTUNE_VERBOSE=1: the libraries' output went to the terminal\n", encoding="utf-8")
        yield log
        return
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace", closefd=True)
    terminal_err = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace", closefd=True)
    fd = os.open(log.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    # what the consoles were set to (None: whatever sys.stdout / sys.stderr is at the time of a print)
    saved_files = (console._file, err_console._file)
    try:
        # quicktune's lines keep the terminal; where sys.stdout/stderr are not the process's descriptors
        # 1 and 2 (a caller capturing the output, such as Click's test runner) they keep going there
        copies = {1: terminal_out, 2: terminal_err}
        if _descriptor(sys.stdout) in copies:
            console.file = copies[_descriptor(sys.stdout)]
        if _descriptor(sys.stderr) in copies:
            err_console.file = copies[_descriptor(sys.stderr)]
        log._saved = {1: os.dup(1), 2: os.dup(2)}
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        yield log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for number, saved in log._saved.items():
            os.dup2(saved, number)
            os.close(saved)
        console._file, err_console._file = saved_files
        terminal_out.close()
        terminal_err.close()


def _descriptor(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
