"""The files ``quicktune data synth`` writes beside each other, and how a run resumes from them.

- ``OUT.jsonl``: the new rows, in the seeds' format, one appended (then flushed and fsync'd) as soon as it
  is kept: a crash or Ctrl-C loses no kept row.
- ``OUT.rejected.jsonl``: one line per rejected row (``row``, ``reason``, ``detail``, the ``reply``), appended
  the same way.
- ``OUT.jsonl.synth.json``: the lineage (the endpoint's URL and model, never a key; the seeds file and its
  sha256; counts; each run's settings and times; ``next_row``), rewritten whole with ``runs.write_atomic``.

A crash while a line was being written leaves a last line without its newline: ``repair_tail`` completes
it when it is whole JSON and cuts it off otherwise, before anything is appended.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.data.load import read_records
from quicktune.errors import DataError
from quicktune.runs import write_atomic

LINEAGE_SUFFIX = ".synth.json"
_TAIL_CHUNK = 1 << 16


@dataclass(frozen=True)
class SynthFiles:
    """Where one output's rows, rejections and lineage live."""

    output: Path
    rejected: Path
    lineage: Path

    @classmethod
    def beside(cls, output: str | Path) -> SynthFiles:
        """``OUT.jsonl`` -> ``OUT.rejected.jsonl`` and ``OUT.jsonl.synth.json``; the output must be .jsonl."""
        output = Path(output)
        if output.suffix.lower() != ".jsonl":
            raise DataError(f"-o {output}: data synth appends rows one per line: name a .jsonl file")
        return cls(output, output.with_name(f"{output.stem}.rejected.jsonl"),
                   output.with_name(output.name + LINEAGE_SUFFIX))


def append_line(path: Path, value: dict[str, Any]) -> None:
    """Appends ``value`` as one JSON line and makes it durable (flush + fsync) before returning."""
    line = json.dumps(value, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())


def repair_tail(path: Path) -> str | None:
    """Makes ``path`` end with a newline: a last line cut off by a crash is completed when it is whole
    JSON, else removed. Returns what was done (for a note), or None when the file was whole."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        start = _last_line_start(handle, size)
        handle.seek(start)
        tail = handle.read()
        try:
            json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            handle.truncate(start)
            done = f"{path}: removed a last line cut off mid-write ({len(tail)} bytes)"
        else:
            handle.write(b"\n")
            done = f"{path}: its last line had no newline; added one"
        handle.flush()
        os.fsync(handle.fileno())
    return done


def _last_line_start(handle, size: int) -> int:
    """Where the last line of an open binary file of ``size`` bytes starts."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        handle.seek(start)
        newline = handle.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def read_rejections(path: Path) -> list[dict[str, Any]]:
    """The rejected rows recorded so far (none when the file is not there)."""
    if not path.is_file():
        return []
    rows = []
    for record in read_records(path):
        if record.error is not None or not isinstance(record.value, dict):
            raise DataError(f"{record.origin}: {record.error or 'not a JSON object'}",
                            hint=f"{path.name} is data synth's list of rejected rows: delete that line (or the file).")
        rows.append(record.value)
    return rows


def read_lineage(path: Path) -> dict[str, Any] | None:
    """The lineage written by an earlier run, or None when there is none."""
    if not path.is_file():
        return None
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})",
                        hint="It is data synth's lineage of the output beside it; delete it to start afresh.") from None
    if not isinstance(lineage, dict):
        raise DataError(f"{path}: expected a JSON object")
    return lineage


def write_lineage(path: Path, lineage: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
