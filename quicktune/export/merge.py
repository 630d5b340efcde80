"""Merge a LoRA adapter into its base model's weights, one safetensors shard at a time.

Every tensor PEFT saves for the methods quicktune trains has a rule here, and the merged
weights compute what PEFT's own forward computed (``s = alpha / r``, ``alpha / sqrt(r)``
for rsLoRA, both per module when the config has ``rank_pattern``/``alpha_pattern``):

- ``lora_A``/``lora_B`` on a linear layer: ``W + s * B @ A``;
- ``lora_embedding_A``/``lora_embedding_B`` on an embedding: ``W + s * (B @ A)^T`` (PEFT
  stores them transposed: A is ``[r, vocab]``, B ``[dim, r]``);
- ``lora_magnitude_vector`` (DoRA): ``m * V / ||V||`` with ``V = W + delta``; the norm runs
  over each output row of a linear weight and over the vocabulary for each embedding column,
  as PEFT's ``dora.py`` computes it (it detaches the norm, so it is a constant of the merge);
- a ``modules_to_save`` copy (trained in full) replaces the base tensor;
- ``<module>.base_layer.<param>``, PEFT's copy of a targeted embedding's base weight, is what
  PEFT loads back over the base, so the merge starts from it.

A tied lm_head (no ``lm_head.weight`` in the checkpoint) reads the input embedding. When the
adapter changes one of the two and PEFT did not tie the change to both
(``ensure_weight_tying``), the merged model gets its own ``lm_head.weight`` and
``tie_word_embeddings: false``: the only way to keep what was trained. Any other key in the
adapter file, or a config setting this merge does not implement, is an error naming it.

Tensors are read from the memory-mapped shards (base and adapter) and written one at a
time, so peak RAM stays near the largest tensor in float32 whatever the model's size. The
tokenizer files are the base's own (training tokenized with them) and the chat template the
adapter's. The merged folder appears whole or not at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.adapters import HEAD, AdapterPlan, Update, base_shards, check_adapter_base, read_plan, tensor_shapes
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


MODEL_FILES = ("generation_config.json",)


def merged_tensor(base, update: Update, read):
    """The merged value of one tensor, in the base tensor's dtype. ``read(key)`` loads an adapter tensor."""
    dtype = base.dtype
    if update.replace is not None:
        return read(update.replace).to(dtype)
    # One float32 copy, changed in place: no copy of the change itself (an embedding's can be
    # gigabytes). A copy even of a float32 tensor: safetensors hands out views of its memory map.
    import torch

    weight = (read(update.source) if update.source is not None else base).to(torch.float32, copy=True)
    lora = update.lora
    if lora is None:
        return weight.to(dtype)
    a, b = read(lora.A).float(), read(lora.B).float()
    if lora.layout == "embedding":
        a, b = b.T, a.T  # PEFT stores embedding LoRA as A [r, vocab] and B [dim, r]: the change is (B @ A)^T
    if [b.shape[0], a.shape[1]] != list(weight.shape):
        raise QuicktuneError(f"{lora.module}: the adapter's change is {[b.shape[0], a.shape[1]]}, "
                             f"the base weight {list(weight.shape)}: the adapter was trained on another model")
    weight.addmm_(b, a, alpha=lora.scale)
    if lora.magnitude is not None:
        # DoRA: each output row (linear) or each embedding column rescaled to its trained length.
        norm = weight.norm(p=2, dim=0 if lora.layout == "embedding" else 1, keepdim=True)
        weight.mul_(read(lora.magnitude).float().reshape(norm.shape) / norm)
    return weight.to(dtype)


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


@dataclass
class Output:
    """One tensor of a merged shard: its name, the base tensor it starts from, and its update."""

    name: str
    base: str
    update: Update | None = None


def merge_shard(source: Path, target: Path, outputs: list[Output], read) -> None:
    """One safetensors shard, written tensor by tensor: memory holds one tensor at a time.

    The safetensors layout is a little-endian u64 header length, a JSON header (names,
    dtypes, shapes, byte offsets; padded to 8 bytes) and the tensors' bytes in order.
    Merging never changes a tensor's dtype or shape, so the header is known up front.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as reader:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for out in outputs:
            piece = reader.get_slice(out.base)
            size = math.prod(piece.get_shape()) * _ITEM_BYTES[piece.get_dtype()]
            header[out.name] = {"dtype": piece.get_dtype(), "shape": piece.get_shape(),
                                "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        with open(target, "wb") as out_file:
            out_file.write(struct.pack("<Q", len(blob)))
            out_file.write(blob)
            for out in outputs:
                tensor = reader.get_tensor(out.base)
                if out.update is not None:
                    merged = merged_tensor(tensor, out.update, read)
                    if merged.shape != tensor.shape:
                        raise QuicktuneError(f"{out.name}: the adapter's tensor is {list(merged.shape)}, "
                                             f"the base's {list(tensor.shape)}")
                    tensor = merged
                out_file.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
                del tensor


def _tensor_names(folder: Path, shards: list[str]) -> dict[str, str]:
    return {name: shard for shard in shards for name in tensor_shapes(folder / shard)}


def _only_replaces(update: Update | None) -> bool:
    return update is not None and update.replace is not None and update.lora is None and update.source is None


def _layout(plan: AdapterPlan, names: dict[str, str], same, tied: bool) -> tuple[dict[str, list[Output]], bool]:
    """Each shard's outputs, and whether the merged model unties its lm_head from the embedding.

    ``same(key, key)`` says whether two adapter tensors are equal; ``tied``, whether the base's
    config ties the head to the embedding.
    """
    updates = dict(plan.updates)
    head = None
    embeddings = [n for n in names if n.endswith("embed_tokens.weight")]
    if tied and HEAD in names and (HEAD in updates or any(n in updates for n in embeddings)):
        # A checkpoint that stores the tied head anyway: transformers would tie it again on load
        # and read the changed embedding, so the config must say untied.
        return _layout(plan, names, same, tied=False)[0], True
    if HEAD not in names and len(embeddings) == 1:  # a tied lm_head: it reads the input embedding's tensor
        embedding = embeddings[0]
        head_update, embedding_update = updates.pop(HEAD, None), updates.get(embedding)
        if head_update is not None or embedding_update is not None:
            # ensure_weight_tying: PEFT kept the head on the embedding's trained weights (and may
            # have saved the head's copy of them, which must be the very same values).
            follows = plan.head_follows_embedding and (
                head_update is None
                or (_only_replaces(head_update) and _only_replaces(embedding_update)
                    and same(head_update.replace, embedding_update.replace))
            )
            if not follows:
                # PEFT's forward used the embedding's base weight for the head (or its own change):
                # the head gets a tensor of its own, started from the weight it read.
                head = head_update or Update()
                if head.source is None and embedding_update is not None:
                    head.source = embedding_update.source
                head = Output(HEAD, embedding, head)
    missing = sorted(set(updates) - set(names))
    if missing:
        raise QuicktuneError(f"the adapter changes weights the base model does not have: {missing[:3]}",
                             hint="Merge into the base model the adapter was trained on (export.merge_base).")
    outputs: dict[str, list[Output]] = {shard: [] for shard in dict.fromkeys(names.values())}
    for name, shard in names.items():
        outputs[shard].append(Output(name, name, updates.get(name)))
        if head is not None and name == head.base:
            outputs[shard].append(head)
    return outputs, head is not None


def _untied_config(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config, tie_word_embeddings=False)
    for key, value in config.items():
        if isinstance(value, dict) and "tie_word_embeddings" in value:
            config[key] = dict(value, tie_word_embeddings=False)
    return config


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    from safetensors import safe_open

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    check_adapter_base(adapter_dir, base_dir)
    plan = read_plan(adapter_dir)
    shards = base_shards(base_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        text_config = config.get("text_config") or {}
        tied = config.get("tie_word_embeddings", text_config.get("tie_word_embeddings")) is not False
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as adapter:
            outputs, untie = _layout(plan, _tensor_names(base_dir, shards),
                                     lambda one, other: adapter.get_tensor(one).equal(adapter.get_tensor(other)), tied)
            for shard in shards:
                merge_shard(base_dir / shard, staging / shard, outputs[shard], adapter.get_tensor)
        _write_model_files(base_dir, staging, outputs, untie)
        for name in MODEL_FILES:
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


def _write_model_files(base_dir: Path, staging: Path, outputs: dict[str, list[Output]], untie: bool) -> None:
    """config.json and the shard index: the base's own, changed only where the lm_head was untied."""
    index = base_dir / "model.safetensors.index.json"
    for source in (base_dir / "config.json", index):
        if source.is_file() and not untie:
            shutil.copy2(source, staging / source.name)
    if untie:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        (staging / "config.json").write_text(json.dumps(_untied_config(config), indent=2) + "\n", encoding="utf-8")
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
            data["weight_map"] = {out.name: shard for shard, outs in outputs.items() for out in outs}
            (staging / index.name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
