"""The GGUFs a run exported: which one to use, and that it is still the file the export wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.runs.folder import MANIFEST, run_label

# Bits per weight, most first: the order "best" follows when the fidelity check has not ranked them.
QUANT_ORDER = ("f16", "bf16", "q8_0", "q5_k_m", "q4_k_m")


def pick_quantization(run_dir: Path, manifest: dict[str, Any], wanted: str | None = None) -> str:
    """Which exported GGUF ``chat`` and ``eval --gguf`` use: ``wanted``, or else the best of the
    quantizations the user asked for (those with a Modelfile): the highest same-top-token rate in
    the export's fidelity check when every one was checked, otherwise the most bits per weight."""
    export = manifest.get("export") or {}
    ggufs = export.get("ggufs") or {}
    if not ggufs:
        raise QuicktuneError(f"{run_label(run_dir)} has not been exported yet", hint=f"Run: quicktune export {run_dir}")
    if wanted:
        if wanted not in ggufs:
            raise QuicktuneError(
                f"{run_label(run_dir)} has no {wanted} GGUF (exported: {', '.join(ggufs)})",
                hint=f"Add it with: quicktune export {run_dir} --quant {wanted}",
            )
        return wanted
    asked = [q for q in export.get("modelfiles") or {} if q in ggufs] or list(ggufs)
    rank = {q: QUANT_ORDER.index(q) if q in QUANT_ORDER else len(QUANT_ORDER) for q in asked}
    checked = {row.get("name"): row.get("same_top_token") for row in (export.get("fidelity") or {}).get("ggufs", [])}
    if all(checked.get(q) is not None for q in asked):
        return max(asked, key=lambda q: (checked[q], -rank[q]))
    return min(asked, key=rank.__getitem__)


def exported_gguf(run_dir: Path, manifest: dict[str, Any], quant: str) -> Path:
    """The GGUF the export wrote for ``quant``, checked against the manifest's record of it: a file
    that is gone, or replaced (another model's GGUF, a truncated copy), is an error, not a chat."""
    item = ((manifest.get("export") or {}).get("ggufs") or {}).get(quant) or {}
    if not isinstance(item, dict) or not isinstance(item.get("file"), str):
        raise QuicktuneError(f"{run_dir / MANIFEST}: export.ggufs.{quant}: no file recorded",
                             hint=f"Export it again: quicktune export {run_dir} --quant {quant}")
    path = run_dir / item["file"]
    hint = f"Export it again: delete it, then quicktune export {run_dir} --quant {quant}"
    if not path.is_file():
        raise QuicktuneError(f"{path}: missing (the export wrote it; the manifest lists it)", hint=hint)
    recorded, found = item.get("bytes"), path.stat().st_size
    if isinstance(recorded, int) and recorded != found:
        raise QuicktuneError(
            f"{path} is not the file the export wrote: {found:,} bytes, the manifest records {recorded:,} "
            "(replaced by another model's GGUF, or cut short?)",
            hint=hint,
        )
    return path

