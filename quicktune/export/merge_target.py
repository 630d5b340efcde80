"""The weights a QLoRA adapter is merged into, when ``export.merge_target`` is ``dequantized``.

A QLoRA adapter was trained on top of ``dequant(quant(W))``, not on ``W``. Merged into the
original 16-bit ``W``, every wrapped layer differs from the trained model by the
quantization error ``W - dequant(quant(W))``; merged into the de-quantized weights, the
merged model is the trained one up to rounding. So this module loads the base in 4 bits
exactly as training did (through the training backend, same quantization settings) and
writes a 16-bit safetensors folder whose quantized layers hold their de-quantized weights.

Pitfall (bitsandbytes on a CPU with AVX512-BF16): the first inference forward pass of a
``Linear4bit`` repacks its weight into another layout, after which ``dequantize_4bit``
returns garbage. The model loaded here never runs a forward pass, and a repacked layer
is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from quicktune.adapters import base_shards
from quicktune.backend import load_backend
from quicktune.errors import QuicktuneError

# What a pre-quantized (``-bnb-4bit``) checkpoint stores beside each packed ``<layer>.weight``.
_QUANT_STATE = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def load_four_bit(base_dir: Path, *, max_seq_length: int, dtype: str):
    """The base loaded through the training backend exactly as ``method: qlora`` loads it, and its
    4-bit layers by name. No forward pass is run on it."""
    backend = load_backend()
    model, _ = backend.load_model(str(base_dir), max_seq_length=max_seq_length, load_in_4bit=True, dtype=dtype,
                                  full=False)
    import bitsandbytes as bnb

    layers = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    if not layers:
        raise QuicktuneError(f"{base_dir}: loading it in 4 bits quantized no layer; there is nothing to de-quantize")
    return model, layers


def dequantize(name: str, layer):
    """A 4-bit layer's weight, de-quantized, on the CPU, in the dtype it was quantized from."""
    import bitsandbytes.functional as bnb_functional

    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise RuntimeError(f"{name}: the 4-bit weight was repacked by a forward pass; it cannot be de-quantized")
    return bnb_functional.dequantize_4bit(layer.weight.data, state).cpu()


def write_dequantized_base(base_dir: Path, out_dir: Path, *, max_seq_length: int, dtype: str) -> Path:
    """A copy of ``base_dir`` whose 4-bit layers hold their de-quantized weights.

    Every other tensor is copied as it is, and a layer keeps the dtype of the original 16-bit
    weight; a pre-quantized checkpoint loses its quantization state tensors and stores its
    layers in the dtype they were quantized from. One shard is in memory at a time, beside
    the 4-bit model. The folder appears whole or not at all.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    model, layers = load_four_bit(base_dir, max_seq_length=max_seq_length, dtype=dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        weight_map, written = {}, set()
        for shard in base_shards(base_dir):
            tensors = {}
            with safe_open(str(base_dir / shard), framework="pt") as reader:
                for name in reader.keys():  # noqa: SIM118 safetensors' safe_open has keys() but is not iterable
                    layer, _, tail = name.rpartition(".weight.")
                    if layer in layers and (tail in _QUANT_STATE or tail.startswith("quant_state.")):
                        continue
                    tensor = reader.get_tensor(name)
                    layer = name.removesuffix(".weight")
                    if name.endswith(".weight") and layer in layers:
                        weight = dequantize(layer, layers[layer])
                        tensor = weight.to(tensor.dtype if tensor.is_floating_point() else weight.dtype)
                        written.add(layer)
                    tensors[name] = tensor
            save_file(tensors, str(staging / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
            del tensors
        del model
        missing = sorted(set(layers) - written)
        if missing:
            raise QuicktuneError(
                f"{base_dir}: the 4-bit model has layers its checkpoint does not name: {missing[:3]}",
                hint="Merge into the original weights instead: --set export.merge_target=original",
            )
        for item in base_dir.iterdir():
            if item.is_file() and item.suffix != ".safetensors" and item.name != "model.safetensors.index.json":
                shutil.copy2(item, staging / item.name)
        _drop_quantization_config(staging / "config.json")
        if (base_dir / "model.safetensors.index.json").is_file():
            index = {"metadata": {}, "weight_map": weight_map}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        os.chmod(staging, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _drop_quantization_config(config_path: Path) -> None:
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
