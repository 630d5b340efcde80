"""What a saved LoRA adapter changes, and whether quicktune can merge it: read from its config and
the safetensors headers, with no tensor loaded. Training checks it before the first step, the
export before the merge (``quicktune.export.merge`` applies the plan)."""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

ADAPTER_PREFIX = "base_model.model."


HEAD = "lm_head.weight"


# adapter_config.json keys, and the values this merge implements. A key not listed here is
# accepted only while it is off (None, False, empty): a new PEFT feature that is switched on
# must fail the merge, not be merged as if it were plain LoRA.
_MEANINGLESS_FOR_MERGE = {
    "base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping", "peft_version",
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "lora_dropout",
    "modules_to_save", "modules_to_tie", "target_modules_to_tie", "ensure_weight_tying", "loftq_config",
    "megatron_config", "megatron_core", "qalora_group_size", "use_rslora", "use_dora", "r", "lora_alpha",
    "rank_pattern", "alpha_pattern",
}  # fmt: skip


_REQUIRED_VALUES = {
    "peft_type": ("LORA",),
    "bias": ("none",),
    "fan_in_fan_out": (False,),
    # PiSSA, OLoRA, CorDA and LoftQ start from changed base weights the adapter does not carry.
    "init_lora_weights": (True, False, "gaussian"),
}


# Suffix of an adapter key -> (role, layout) of the LoRA piece it holds.
_LORA_PIECES = (
    (".lora_A.weight", "A", "linear"),
    (".lora_B.weight", "B", "linear"),
    (".lora_embedding_A", "A", "embedding"),
    (".lora_embedding_B", "B", "embedding"),
    (".lora_magnitude_vector", "magnitude", None),
)


@dataclass
class LoraDelta:
    """The low-rank change of one weight: which adapter keys hold it and how to apply it."""

    module: str
    layout: str | None = None  # "linear" or "embedding"
    A: str | None = None
    B: str | None = None
    magnitude: str | None = None  # DoRA
    scale: float = 0.0


@dataclass
class Update:
    """How one merged tensor is made. Adapter keys name the tensors to read, when they are needed."""

    source: str | None = None  # PEFT's saved copy of the base tensor, loaded over the base
    replace: str | None = None  # a module trained in full (modules_to_save)
    lora: LoraDelta | None = None


@dataclass
class AdapterPlan:
    updates: dict[str, Update]  # base tensor name -> update
    head_follows_embedding: bool = False  # PEFT tied the lm_head to the embedding's trained weights


def check_config(config: dict[str, Any], where: str = "adapter") -> None:
    """Refuse any setting whose effect on the weights this merge does not reproduce."""
    problems = []
    for key, allowed in _REQUIRED_VALUES.items():
        value = config.get(key, allowed[0])
        if value not in allowed:
            problems.append(f"{key}: {value!r} (this merge implements {', '.join(map(repr, allowed))})")
    for key, value in config.items():
        if key not in _REQUIRED_VALUES and key not in _MEANINGLESS_FOR_MERGE and value not in (None, False, {}, [], ""):
            problems.append(f"{key}: {value!r} (a setting this merge does not implement)")
    if problems:
        raise QuicktuneError(f"{where}: the adapter uses settings quicktune cannot merge", problems=problems,
                             hint="Train with the recipe's lora keys only (r, alpha, target_modules, use_dora, "
                             "use_rslora), or merge this adapter with PEFT's merge_and_unload.")


def _pattern_value(pattern: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern rule: the first key that matches the end of the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(config: dict[str, Any], module: str) -> tuple[int, float]:
    rank = _pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return rank, (alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank)


def _saved_module(module: str, names: list[str]) -> bool:
    return any(module == name or module.endswith(f".{name}") for name in names)


def plan_adapter(config: dict[str, Any], shapes: dict[str, list[int]], where: str = "adapter") -> AdapterPlan:
    """Every adapter tensor (name -> shape) mapped to the base tensor it changes, or an error."""
    check_config(config, where)
    saved_modules = list(config.get("modules_to_save") or []) + list(config.get("modules_to_tie") or [])
    updates: dict[str, Update] = {}
    unknown = []
    for key in shapes:
        name = key.removeprefix(ADAPTER_PREFIX)
        piece = next((p for p in _LORA_PIECES if name.endswith(p[0])), None)
        if piece is not None:
            module = name[: -len(piece[0])]
            update = updates.setdefault(f"{module}.weight", Update())
            update.lora = update.lora or LoraDelta(module)
            if piece[2] is not None:
                if update.lora.layout not in (None, piece[2]):
                    unknown.append(f"{key}: linear and embedding LoRA on one module")
                update.lora.layout = piece[2]
            if getattr(update.lora, piece[1]) is not None:
                unknown.append(f"{key}: a second {piece[1]} for {module}")
            setattr(update.lora, piece[1], key)
        elif ".base_layer." in name:
            module, param = name.split(".base_layer.", 1)
            updates.setdefault(f"{module}.{param}", Update()).source = key
        elif "." in name and _saved_module(name.rsplit(".", 1)[0], saved_modules):
            updates.setdefault(name, Update()).replace = key
        elif name == HEAD and config.get("ensure_weight_tying"):
            updates.setdefault(name, Update()).replace = key  # the tied head's copy of the trained embedding
        else:
            unknown.append(key)
    if unknown:
        raise QuicktuneError(f"{where}: {len(unknown)} adapter tensor(s) quicktune does not know how to merge",
                             problems=unknown[:10], hint="Nothing was merged: a tensor left out would lose training.")

    problems = []
    for update in updates.values():
        lora = update.lora
        if lora is None:
            continue
        if lora.A is None or lora.B is None:
            problems.append(f"{lora.module}: has {'lora_A' if lora.A else 'lora_B' if lora.B else 'a magnitude'} "
                            "without the rest of its LoRA pair")
            continue
        if update.replace is not None:
            problems.append(f"{lora.module}: both trained in full and by LoRA")
        rank, lora.scale = _scale(config, lora.module)
        a_shape, b_shape = shapes[lora.A], shapes[lora.B]
        if a_shape[0] != rank or b_shape[-1] != rank:
            problems.append(f"{lora.module}: rank {a_shape[0]} in the file, {rank} in the config")
    if problems:
        raise QuicktuneError(f"{where}: the adapter does not hold together", problems=problems[:10])
    return AdapterPlan(updates, head_follows_embedding=bool(config.get("ensure_weight_tying")))


def base_shards(base_dir: Path) -> list[str]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise QuicktuneError(f"{base_dir}: no safetensors weights to merge into")


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header: no tensor read, no torch imported."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def check_mergeable(peft_model) -> AdapterPlan:
    """Before training: what ``save_pretrained`` will write for this model must merge.

    The same plan the export makes, from the same PEFT state dict and config, so a recipe
    whose adapter could not be merged stops before the hours of training, not after.
    """
    from peft.utils import get_peft_model_state_dict

    name = peft_model.active_adapter
    with warnings.catch_warnings():  # PEFT announces the embedding layers it will save; not news here
        warnings.simplefilter("ignore")
        state = get_peft_model_state_dict(peft_model, adapter_name=name)
    as_json = lambda value: sorted(value) if isinstance(value, (set, frozenset)) else str(value)  # noqa: E731
    config = json.loads(json.dumps(peft_model.peft_config[name].to_dict(), default=as_json))
    return plan_adapter(config, {key: list(value.shape) for key, value in state.items()}, "the adapter to train")


def read_plan(adapter_dir: Path) -> AdapterPlan:
    """The merge plan of a saved adapter, from its config and file header (cheap: for --dry-run too)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return plan_adapter(config, tensor_shapes(adapter_dir / "adapter_model.safetensors"), str(adapter_dir))


def check_adapter_base(adapter_dir: Path, base_dir: Path) -> None:
    """The adapter fits the base model's weights (names and shapes, read from the file headers):
    an adapter trained on another model is refused before anything loads or is written."""
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    plan = read_plan(adapter_dir)
    pieces = tensor_shapes(adapter_dir / "adapter_model.safetensors")
    base = {name: shape for shard in base_shards(base_dir) for name, shape in tensor_shapes(base_dir / shard).items()}
    problems = []
    for name, update in sorted(plan.updates.items()):
        if name not in base:
            if name != HEAD:  # a tied head is read from the embedding (see _layout)
                problems.append(f"{name}: not a weight of the base model")
            continue
        lora = update.lora
        if lora is not None and lora.layout == "linear" and lora.A in pieces and lora.B in pieces:
            change = [pieces[lora.B][0], pieces[lora.A][-1]]
            if change != list(base[name]):
                problems.append(f"{name}: the adapter's change is {change}, the base weight {list(base[name])}")
    if problems:
        raise QuicktuneError(
            f"{adapter_dir}: this adapter was trained on another model than {base_dir}",
            problems=problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else []),
            hint="Use the run folder the adapter came from, or export.merge_base naming the model it was trained on.",
        )
