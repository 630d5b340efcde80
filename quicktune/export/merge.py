"""Merge a LoRA adapter into its base model's weights, one safetensors shard at a time.

For every linear layer the adapter wraps, ``W' = W + s * B @ A`` with ``s = alpha / r``
(``alpha / sqrt(r)`` for rsLoRA), computed in float32 and stored in the base weight's
dtype. Tensors are read from the memory-mapped shard and written one at a time, so
peak RAM stays near the largest tensor (in float32) plus the adapter, whatever the
model's size. The tokenizer files are
the base's own (training tokenized with them) and the chat template the adapter's. The
merged folder appears whole or not at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

# tokenizer.model (SentencePiece) is what llama.cpp's converter reads for Gemma, Phi-3 and
# Mistral v0.3; adapters saved by transformers 5 do not carry it, so it comes from the base.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
)
# The tokenizer files are the base's own where it has them: quicktune built the training
# ids from the base's tokenizer.json, and llama.cpp's converter reads these files as the
# model's authors published them (a copy re-saved by transformers 5 loses e.g. Gemma's
# added_tokens_decoder and SentencePiece's legacy flag). The chat template is the trained one.
TRAINED_FILES = ("chat_template.jinja",)
MODEL_FILES = ("config.json", "generation_config.json")


def _base_shards(base_dir: Path) -> list[str]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise QuicktuneError(f"{base_dir}: no safetensors weights to merge into")


def _lora_pairs(adapter_dir: Path) -> tuple[dict[str, tuple], float]:
    """Base weight name -> (A, B) tensors, and the scale."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise QuicktuneError("merging a DoRA adapter is not supported yet; train with lora.use_dora: false")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, list] = {}
    for key, value in tensors.items():
        for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(part):
                module = key[: -len(part)].removeprefix("base_model.model.")
                pairs.setdefault(f"{module}.weight", [None, None])[slot] = value
    incomplete = [name for name, (a, b) in pairs.items() if a is None or b is None]
    if incomplete:
        raise QuicktuneError(f"{adapter_dir}: adapter has lora_A without lora_B (or the reverse): {incomplete[:3]}")
    return {name: (a, b) for name, (a, b) in pairs.items()}, scale


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def merge_shard(source: Path, target: Path, pairs: dict[str, tuple], scale: float, merged: set[str]) -> None:
    """One safetensors shard, written tensor by tensor: memory holds one tensor at a time.

    The safetensors layout is a little-endian u64 header length, a JSON header (names,
    dtypes, shapes, byte offsets; padded to 8 bytes) and the tensors' bytes in order.
    Merging never changes a tensor's dtype or shape, so the header is known up front.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as reader:
        names = list(reader.keys())
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in names:
            piece = reader.get_slice(name)
            size = math.prod(piece.get_shape()) * _ITEM_BYTES[piece.get_dtype()]
            header[name] = {"dtype": piece.get_dtype(), "shape": piece.get_shape(), "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        with open(target, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            for name in names:
                tensor = reader.get_tensor(name)
                if name in pairs:
                    lora_a, lora_b = pairs[name]
                    delta = (lora_b.float() @ lora_a.float()) * scale
                    tensor = (tensor.float() + delta).to(tensor.dtype)
                    merged.add(name)
                out.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
                del tensor


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    pairs, scale = _lora_pairs(adapter_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        merged: set[str] = set()
        for shard in _base_shards(base_dir):
            merge_shard(base_dir / shard, staging / shard, pairs, scale, merged)
        missing = sorted(set(pairs) - merged)
        if missing:
            raise QuicktuneError(f"the adapter targets weights the base model does not have: {missing[:3]}")
        for name in ("model.safetensors.index.json", *MODEL_FILES):
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, staging / name)
        for name in TOKENIZER_FILES:
            order = (adapter_dir, base_dir) if name in TRAINED_FILES else (base_dir, adapter_dir)
            source = next((folder / name for folder in order if (folder / name).is_file()), None)
            if source is not None:
                shutil.copy2(source, staging / name)
        if out_dir.exists():
            raise QuicktuneError(f"{out_dir} already exists; quicktune does not overwrite a merged model")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the merged model is an ordinary folder
        for item in staging.iterdir():
            os.chmod(item, 0o644)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
