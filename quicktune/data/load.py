"""Read data files into raw records, each tagged with the file and line it came from.

JSONL, JSON and CSV are parsed here with the standard library rather than through
``datasets.load_dataset``: that loader stops at the first bad line and reports a
pyarrow error without its line number, while a user needs every bad line, by number.
Parquet has no lines; its rows are numbered from 1 and read with pyarrow. A Hugging Face Hub dataset
(``hf://OWNER/NAME``) is read from the Hub cache by ``quicktune.data.hub``, each row named by its index
in the split (``hf://OWNER/NAME[train]:row 17``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.errors import DataError
from quicktune.hubref import is_hub_ref
from quicktune.runs.files import sha256_file

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_JSON_COLUMNS = ("messages", "conversations")  # CSV cells that hold JSON lists


@dataclass(frozen=True, slots=True)
class RawRecord:
    origin: str
    value: Any  # a dict for a good record
    error: str | None = None  # why the line could not be read at all


def read_records(path: str | Path) -> Iterator[RawRecord]:
    if is_hub_ref(path):
        yield from _read_hub(str(path))
        return
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")


def _read_hub(ref: str) -> Iterator[RawRecord]:
    """A Hub dataset's rows (``quicktune.data.hub``): its split's files in the cache, read here one after the
    other, each row named by its index in the split."""
    from quicktune.data.hub import hub_rows, in_snapshot, open_split  # datasets, huggingface_hub: for the Hub only

    split = open_split(ref)
    unread = sorted({in_snapshot(f, split.folder) for f in split.files if f.suffix.lower() not in SUFFIXES})
    if unread:
        raise DataError(f"{split.dataset.label()}: quicktune reads {', '.join(SUFFIXES)} files, and this split is "
                        f"{', '.join(unread[:5])}{' ...' if len(unread) > 5 else ''}",
                        hint="Convert the split to JSONL or Parquet (load_dataset(...).to_json(FILE)) and name the "
                        "file in data.train.")
    records = (record for file in split.files for record in read_records(file))
    for origin, value, error in hub_rows(split, records):
        yield RawRecord(origin, value, error)


def source_identity(path: str) -> dict[str, Any]:
    """What a run's manifest records of one data.train / data.eval entry, to tell later whether its rows changed:
    a file's sha256; a Hub dataset's commit (revision) and a sha256 of the files its rows came from."""
    if is_hub_ref(path):
        from quicktune.data.hub import source_identity as hub_identity

        return hub_identity(path)
    return {"sha256": sha256_file(path)}


def data_size(paths: list[str]) -> tuple[int, int]:
    """(rows, tokens) in ``paths``, tokens at 4 characters each, as ``quicktune plan`` estimates a file's (its
    bytes / 4): read from the Hub cache for a Hub dataset (its rows' JSON text), counted in the file otherwise."""
    rows = characters = 0
    for path in paths:
        if is_hub_ref(path):
            for record in read_records(path):
                rows += 1
                characters += len(json.dumps(record.value, ensure_ascii=False)) + 1
        else:
            characters += Path(path).stat().st_size
            with Path(path).open("rb") as handle:
                rows += sum(1 for line in handle if line.strip())
    return rows, characters // 4


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            origin = f"{path}:{number}"
            try:
                value = json.loads(line)
            except UnicodeDecodeError:
                yield RawRecord(origin, None, "not valid UTF-8")
            except json.JSONDecodeError as exc:
                yield RawRecord(origin, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            else:
                yield RawRecord(origin, value)


def _decoded(path: Path) -> tuple[str | None, RawRecord | None]:
    """The file as UTF-8 text, or the record that says on which line it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return None, RawRecord(f"{path}:{line}", None, "not valid UTF-8")


def _read_json(path: Path) -> Iterator[RawRecord]:
    text, undecodable = _decoded(path)
    if undecodable is not None:
        yield undecodable
        return
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if index >= len(text) or text[index] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRecord(f"{path}:{exc.lineno}", None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            return
        yield RawRecord(f"{path}:1", None, f"expected a JSON list of records, got {type(value).__name__}")
        return
    index, line = _skip_space(text, index + 1), 1
    line_counted_to = 0
    while index < len(text) and text[index] != "]":
        line += text.count("\n", line_counted_to, index)
        line_counted_to = index
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            yield RawRecord(f"{path}:{exc.lineno}", None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            return  # the rest of the list cannot be found reliably
        yield RawRecord(f"{path}:{line}", value)
        index = _skip_space(text, end)
        if index < len(text) and text[index] == ",":
            index = _skip_space(text, index + 1)
        elif index < len(text) and text[index] != "]":
            line += text.count("\n", line_counted_to, index)
            yield RawRecord(f"{path}:{line}", None, "invalid JSON: expected ',' or ']' between records")
            return


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _read_csv(path: Path) -> Iterator[RawRecord]:
    text, undecodable = _decoded(path)
    if undecodable is not None:
        yield undecodable
        return
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        start = 2  # line 1 is the header
        for row in reader:
            origin = f"{path}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield RawRecord(origin, None, "more cells than header columns")
                continue
            record: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
            for column in _JSON_COLUMNS:
                cell = record.get(column)
                if isinstance(cell, str):
                    try:
                        record[column] = json.loads(cell)
                    except json.JSONDecodeError as exc:
                        yield RawRecord(origin, None, f"{column}: cell is not valid JSON: {exc.msg}")
                        break
            else:
                yield RawRecord(origin, record)


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    number = 0
    try:  # a batch at a time: a large file (a Hub dataset's) is never in memory whole, and a limit reads no further
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                number += 1
                yield RawRecord(f"{path}:row {number}", value)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        after = f" after row {number}" if number else ""
        raise DataError(f"{path}: not a readable Parquet file{after}: {exc}") from None
