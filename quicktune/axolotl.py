"""Recipes to and from Axolotl's YAML config (``quicktune recipes export --axolotl`` / ``recipes import``).

The mapping follows Axolotl 0.19.0's pydantic schema (``axolotl/utils/schemas/*.py``): the
top-level ``AxolotlInputConfig`` and the ``SFTDataset`` entries of ``datasets`` /
``test_datasets``. That schema ignores keys it does not know (pydantic's default), so a typo
passes its validation silently: the tests check every key written here against its field
names as well.

Recipe values Axolotl cannot express (the export section, the eval metric, a GGUF base, a
system prompt inserted into rows, ...) are listed when exporting and kept under a top-level
``quicktune:`` key, which Axolotl drops when it validates; ``recipes import`` reads them back,
so recipe -> Axolotl -> recipe gives the same resolved recipe. No torch here.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quicktune.data.formats import detect_format, format_for
from quicktune.data.load import read_records
from quicktune.data.tokenizer import cache_dir, gguf_cache_key
from quicktune.errors import QuicktuneError, RecipeError
from quicktune.hubref import HubDataset, is_hub_ref, parse_hub_ref
from quicktune.models import resolve_model
from quicktune.plan import find_arch
from quicktune.recipe import (
    PREFERENCE_METHODS,
    LoraSection,
    Recipe,
    TrainingSection,
    deep_merge,
    split_batch,
    validate_recipe,
)
from quicktune.runs import write_atomic
from quicktune.templates import FAMILY_TEMPLATES

AXOLOTL_SCHEMA_VERSION = "0.19.0"
_PREFERENCE_ROWS = {  # why the dataset of an rl: config other than grpo is not imported
    "kto": "rl {rl}: KTO rows (one answer each, labelled desirable or not) have no quicktune equivalent; quicktune "
           "trains preference pairs (method dpo or orpo: prompt, chosen, rejected)",
    "dpo": "rl {rl}: Axolotl reads these rows with its {type!r} preference strategy, which quicktune does not map; "
           "quicktune's method dpo/orpo reads TRL's pairs (prompt, chosen, rejected as text or message lists): "
           "convert the rows and name the file (or hf:// dataset) in data.train",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")  # a path that names a Hub dataset
BLOCK = "quicktune"

_DS_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SHAREGPT_ROLES = {"user": ["human", "user"], "assistant": ["gpt", "assistant", "model", "chatgpt"],
                   "system": ["system"]}
_LAYOUTS = {  # quicktune chat format -> Axolotl chat_template dataset fields
    "messages": {"field_messages": "messages", "message_property_mappings": {"role": "role", "content": "content"}},
    "sharegpt": {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"},
                 "roles": _SHAREGPT_ROLES},
}
_OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}
# Axolotl's names for the same update rule, read back as quicktune's.
_OPTIMIZERS_IN = {**_OPTIMIZERS, "adamw_torch_fused": "adamw_torch", "adamw_bnb_8bit": "adamw_8bit"}
_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
_DTYPES = {  # recipe model.dtype -> Axolotl's precision keys
    "auto": {"bf16": "auto"}, "bfloat16": {"bf16": True}, "float16": {"fp16": True},
    "float32": {"bf16": False, "fp16": False},
}
# Axolotl's own defaults (0.19.0 schema) for the keys imported here, used when a config leaves one out.
AXOLOTL_DEFAULTS = {
    "sequence_len": 512, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "num_epochs": 1.0,
    "lr_scheduler": "cosine", "optimizer": "adamw_torch_fused", "weight_decay": 0.0, "lora_dropout": 0.0,
    "gradient_checkpointing": False, "warmup_ratio": 0.0, "seed": 42,
}


# Every recipe key, and where the export puts it: an Axolotl key, the `quicktune:` block, or a refusal.
# tests/test_axolotl.py compares this with the recipe schema, so a new recipe key gets a decision here.
RECIPE_KEYS = {
    "name": "kept", "description": "kept", "hardware": "kept", "extends": "resolved: the export is the whole recipe",
    "method": "adapter (grpo: rl: grpo and adapter)", "model.base": "base_model",
    "model.max_seq_length": "sequence_len",
    "model.load_in_4bit": "load_in_4bit", "model.chat_template": "chat_template, chat_template_jinja",
    "model.trust_remote_code": "trust_remote_code", "model.revision": "kept", "model.dtype": "bf16, fp16",
    "lora.r": "lora_r", "lora.alpha": "lora_alpha", "lora.dropout": "lora_dropout",
    "lora.target_modules": "lora_target_modules", "lora.use_dora": "peft_use_dora",
    "lora.use_rslora": "peft_use_rslora", "lora.last_layers": "peft_layers_to_transform",
    "data.train": "datasets (hf://OWNER/NAME: path, split, name, revision; field_messages / field for a renamed "
                  "column; limit, sample and other columns kept)",
    "data.eval": "test_datasets (as data.train)", "data.format": "datasets[].type, kept when pinned",
    "data.eval_fraction": "val_set_size", "data.system_prompt": "kept",
    "data.shared_instruction": "keep: the rows as they are; refused: system (quicktune moves it while preparing rows)",
    "data.train_on_responses_only": "roles_to_train, train_on_eos, train_on_inputs",
    "data.dedupe": "dataset_exact_deduplication", "data.semantic_threshold": "kept",
    "training.epochs": "num_epochs", "training.max_steps": "max_steps", "training.learning_rate": "learning_rate",
    "training.lr_scheduler": "lr_scheduler", "training.warmup_ratio": "warmup_ratio",
    "training.weight_decay": "weight_decay", "training.optimizer": "optimizer",
    "training.precision": "kept (Axolotl's bf16 / fp16 are model.dtype's)",
    "training.batch_size": "micro_batch_size", "training.grad_accumulation": "gradient_accumulation_steps",
    "training.seed": "seed",
    "training.packing": "sample_packing", "training.gradient_checkpointing": "gradient_checkpointing",
    "training.eval_every": "eval_steps", "training.save_every": "save_steps",
    "training.early_stopping_patience": "early_stopping_patience", "training.logging_every": "logging_steps",
    "training.gpus": "kept (accelerate launch --num_processes)", "training.report_to": "kept",
    "export": "kept", "eval": "kept", "preference": "refused: dpo/orpo are not mapped",
    "grpo.num_generations": "trl.num_generations",
    "grpo.max_completion_length": "trl.max_completion_length", "grpo.temperature": "trl.temperature",
    "grpo.beta": "trl.beta",
    "grpo.rewards": "trl.reward_funcs, trl.reward_weights (FILE.py:FUNCTION as module.FUNCTION); built-ins kept",
}
# grpo's keys under Axolotl's trl: section (0.19 schema), both ways.
GRPO_TRL_KEYS = ("num_generations", "max_completion_length", "temperature", "beta")


# --------------------------------------------------------------------------- recipe -> Axolotl


@dataclass
class AxolotlExport:
    config: dict[str, Any]
    no_equivalent: list[str] = field(default_factory=list)  # "recipe.key: why", for the user


def _file_format(recipe: Recipe, path: str) -> str:
    fmt = format_for(recipe.data.format, path)
    if fmt != "auto":
        return fmt
    records = read_records(path)
    first = next((r for r in records if r.error is None), None)
    records.close()  # a Hub dataset is streamed: read no further
    found = detect_format(first.value) if first else None
    if found is None:
        raise QuicktuneError(f"{path}: cannot tell its data format from the first record",
                             hint="Pin it with data.format, or run `quicktune data check` on the file.")
    return found


def _dataset(path: str, fmt: str, responses_only: bool) -> dict[str, Any]:
    if is_hub_ref(path):
        return _hub_dataset(path, fmt, responses_only)[0]
    suffix = Path(path).suffix.lower()
    return {"path": path, "ds_type": _DS_TYPES.get(suffix, "json"), **_dataset_type(fmt, responses_only)}


def _dataset_type(fmt: str, responses_only: bool) -> dict[str, Any]:
    """The keys of a dataset entry that say how Axolotl reads its rows."""
    entry: dict[str, Any] = {}
    if fmt in _LAYOUTS:
        entry["type"] = "chat_template"
        entry.update(copy.deepcopy(_LAYOUTS[fmt]))  # no YAML anchors between datasets
        entry["roles_to_train"] = ["assistant"] if responses_only else ["system", "user", "assistant"]
        entry["train_on_eos"] = "turn" if responses_only else "all"
    elif fmt == "alpaca":
        entry["type"] = "alpaca"
    else:
        entry.update(type="completion", field="text")
    return entry


def _hub_dataset(ref: str, fmt: str, responses_only: bool) -> tuple[dict[str, Any], list[str]]:
    """An ``hf://`` entry as Axolotl's dataset entry (path OWNER/NAME, split, name, revision; the column holding
    the messages or text as field_messages / field), and what of it Axolotl cannot say."""
    source = parse_hub_ref(ref)
    entry: dict[str, Any] = {"path": source.hf, "split": source.split}
    if source.subset is not None:
        entry["name"] = source.subset
    if source.revision is not None:
        entry["revision"] = source.revision
    entry.update(_dataset_type(fmt, responses_only))
    columns = dict(source.columns)
    holder = {"messages": "messages", "sharegpt": "conversations", "text": "text"}.get(fmt)
    for column, target in source.columns.items():
        if target == holder:  # the column that holds the messages (or the text) is named in the entry
            entry["field" if fmt == "text" else "field_messages"] = column
            del columns[column]
    lost = [f"columns {', '.join(f'{k}: {v}' for k, v in columns.items())}"] if columns else []
    lost += [f"{key} {getattr(source, key)}" for key in ("limit", "sample", "seed") if getattr(source, key) is not None]
    return entry, lost


def _base_model(spec: str) -> tuple[str, str | None]:
    """What Axolotl loads for a recipe's base, and why it differs from model.base when it does."""
    source = resolve_model(spec)
    if source.kind == "dir":
        return str(source.path), None
    if source.kind == "hub":
        return spec, None
    folder = cache_dir() / "models" / gguf_cache_key(source.path)
    state = "exists" if (folder / "config.json").is_file() else "is written by the first `quicktune train` of it"
    return str(folder), (f"a GGUF file; Axolotl loads Hugging Face weights, so base_model is the folder quicktune "
                         f"converts it into ({state})")


def _layer_count(base: str, why: str) -> int:
    """The base's decoder layers, from its config.json, GGUF or quicktune's table (never downloads)."""
    try:
        return find_arch(base).layers
    except QuicktuneError as exc:
        raise QuicktuneError(f"{why}, and {exc.message}", hint=exc.hint) from None


def _as_last_layers(layers: Any, base: Any) -> tuple[int | None, str]:
    """peft_layers_to_transform as lora.last_layers: (N, "") when it names the base's last N layers,
    else (None, why not)."""
    if not (isinstance(layers, list) and layers and all(type(i) is int for i in layers)):
        return None, "expected a list of layer indices"
    try:
        total = _layer_count(str(base), "quicktune reads it as the base's last layers (lora.last_layers)")
    except QuicktuneError as exc:
        return None, exc.message
    if sorted(layers) != list(range(total - len(layers), total)):
        return None, (f"quicktune puts LoRA on the last N of the base's {total} layers (lora.last_layers); "
                      f"{layers} are not those")
    return len(layers), ""


@dataclass
class _ExportDraft:
    """The export as it is written: Axolotl's keys, in the order they are written; the recipe values quicktune
    keeps for itself (the ``quicktune: recipe`` block); the values Axolotl gets only an approximation of (``quicktune:
    as_written``, read back by ``recipes import``); and the notes listed for the user."""

    config: dict[str, Any]
    keep: dict[str, Any]
    notes: list[str]
    lossy: list[dict[str, Any]] = field(default_factory=list)

    def kept(self, section: str) -> dict[str, Any]:
        """The kept values of one recipe section, made on first use."""
        return self.keep.setdefault(section, {})

    def lossy_value(self, key: str, value: Any, written: dict[str, Any], why: str) -> None:
        """Records that recipe ``key`` = ``value`` was written as the Axolotl keys ``written``, and why."""
        self.lossy.append({"key": key, "value": value, "axolotl": written})
        self.notes.append(f"{key}: {why}")


def to_axolotl(recipe: Recipe) -> AxolotlExport:
    """The Axolotl config that trains what ``recipe`` trains, as far as Axolotl can say it."""
    draft = _start_export(recipe)
    _export_model(recipe, draft)
    _export_lora(recipe, draft)
    _export_data(recipe, draft)
    _export_training(recipe.training, draft)
    _export_grpo(recipe, draft)
    draft.config["output_dir"] = f"./outputs/{recipe.name}"
    draft.config[BLOCK] = {"recipe": draft.keep, "as_written": draft.lossy}
    return AxolotlExport(draft.config, draft.notes)


def _start_export(recipe: Recipe) -> _ExportDraft:
    """Reads the recipe's method and its quicktune-only keys (name, description, hardware, export, eval); returns
    a draft with an empty config that keeps them. Raises QuicktuneError for a preference method (not mapped)."""
    if recipe.method in PREFERENCE_METHODS:  # grpo is mapped (_export_grpo)
        raise QuicktuneError(f"method {recipe.method}: the Axolotl export maps supervised recipes (lora, qlora, full); "
                             "preference training (Axolotl's rl: dpo / orpo) is not mapped yet")
    keep = {"name": recipe.name, "description": recipe.description, "hardware": recipe.hardware,
            "export": recipe.export.model_dump(mode="json"), "eval": recipe.eval.model_dump(mode="json")}
    notes = ["name, description, hardware, export.*, eval.*: quicktune's own (GGUF export, Ollama, eval metric)"]
    return _ExportDraft(config={}, keep=keep, notes=notes)


def _export_model(recipe: Recipe, draft: _ExportDraft) -> None:
    """Reads recipe.model and recipe.method; writes base_model, trust_remote_code, adapter, load_in_4bit, the
    precision keys, sequence_len and the chat template (model.revision is kept: Axolotl's schema has no key)."""
    m, config = recipe.model, draft.config
    base, why = _base_model(m.base)
    config["base_model"] = base
    if why:
        draft.lossy_value("model.base", m.base, {"base_model": base}, why)
    if m.trust_remote_code:
        config["trust_remote_code"] = True
    if m.revision:  # Axolotl's loaders read cfg.revision_of_model, but its schema drops the key
        draft.kept("model")["revision"] = m.revision
        draft.notes.append("model.revision: Axolotl 0.19's schema has no revision key (revision_of_model is dropped)")
    if recipe.method == "grpo":  # an adapter on the base as loaded
        config["adapter"] = "qlora" if m.load_in_4bit else "lora"
    elif recipe.method != "full":
        config["adapter"] = recipe.method
    config["load_in_4bit"] = bool(m.load_in_4bit)
    config.update(_DTYPES[m.dtype])
    config["sequence_len"] = m.max_seq_length
    if m.chat_template == "auto":
        config["chat_template"] = "tokenizer_default"
    else:
        config["chat_template"] = "jinja"  # quicktune's family template, word for word
        config["chat_template_jinja"] = FAMILY_TEMPLATES[m.chat_template]


def _export_grpo(recipe: Recipe, draft: _ExportDraft) -> None:
    """Reads recipe.grpo (method grpo only); writes rl: grpo and Axolotl's trl section: the group size, answer
    length, temperature and beta, and the user's own rewards as dotted module.function paths with their weights.
    The built-in rewards have no Axolotl equivalent: the whole rewards list is kept in the quicktune block."""
    if recipe.method != "grpo":
        return
    g, config = recipe.grpo, draft.config
    config["rl"] = "grpo"
    trl = {key: getattr(g, key) for key in GRPO_TRL_KEYS}
    own = [(r, *r.name.rpartition(":")[::2]) for r in g.rewards if r.name.partition(":")[0].endswith(".py")]
    if own:
        trl["reward_funcs"] = [f"{Path(file).stem}.{function}" for _, file, function in own]
        trl["reward_weights"] = [r.weight for r, _, _ in own]
        draft.notes.append("grpo.rewards: your reward files are written as module.function; Axolotl imports the "
                           f"module from where it runs: copy {', '.join(sorted({Path(f).name for _, f, _ in own}))} "
                           "beside the config")
    built_in = [r.name for r in g.rewards if not r.name.partition(":")[0].endswith(".py")]
    if built_in:
        draft.kept("grpo")["rewards"] = [r.model_dump(mode="json") for r in g.rewards]
        draft.notes.append(f"grpo.rewards {', '.join(built_in)}: quicktune's built-in rewards have no Axolotl "
                           "equivalent (kept for quicktune; for Axolotl write them as your own reward functions)")
    draft.notes.append("grpo: Axolotl's GRPO reads prompts through a dataset transform (datasets[].type: "
                       "module.function returning a prompt); the datasets are written as chat data")
    config["trl"] = trl
    # Axolotl (as TRL) counts a batch in answers: each of training.batch_size prompts num_generations times.
    config["micro_batch_size"] = config.get("micro_batch_size", recipe.training.batch_size) * g.num_generations


def _export_lora(recipe: Recipe, draft: _ExportDraft) -> None:
    """Reads recipe.lora (nothing for method full); writes lora_r, lora_alpha, lora_dropout, lora_target_modules,
    peft_use_dora, peft_use_rslora and peft_layers_to_transform (the indices of the base's last N layers)."""
    if recipe.method == "full":
        return
    lo, config = recipe.lora, draft.config
    config.update(lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                  lora_target_modules=list(lo.target_modules))
    if lo.use_dora:
        config["peft_use_dora"] = True
    if lo.use_rslora:
        config["peft_use_rslora"] = True
    if lo.last_layers is not None:  # Axolotl (PEFT) names the layers: the last N of the base
        total = _layer_count(recipe.model.base, "lora.last_layers: the Axolotl export writes the layers' indices")
        config["peft_layers_to_transform"] = list(range(total - min(lo.last_layers, total), total))


def _export_data(recipe: Recipe, draft: _ExportDraft) -> None:
    """Reads recipe.data and the first record of each data file it names (for its format); writes datasets,
    test_datasets, val_set_size, train_on_inputs and dataset_exact_deduplication; keeps data.format,
    data.system_prompt and data.semantic_threshold."""
    d, config = recipe.data, draft.config
    if d.shared_instruction != "keep":
        raise QuicktuneError(
            f"data.shared_instruction: {d.shared_instruction}: quicktune moves the instruction the rows share into "
            "their system turn while it prepares them; Axolotl reads the files as they are and would train it in the "
            "user turn", hint="Export with --set data.shared_instruction=keep, or write the instruction into the "
            "rows' system turn in the data file.")
    formats = {path: _file_format(recipe, path) for path in (*d.train, *d.eval)}
    config["datasets"] = [_dataset(p, formats[p], d.train_on_responses_only) for p in d.train]
    if d.eval:
        config["test_datasets"] = [_dataset(p, formats[p], d.train_on_responses_only) for p in d.eval]
    for key, written in (("train", "datasets"), ("eval", "test_datasets")):
        lost = [f"{p}: {', '.join(why)}" for p in getattr(d, key) if is_hub_ref(p)
                for why in [_hub_dataset(p, formats[p], d.train_on_responses_only)[1]] if why]
        if lost:
            draft.lossy_value(f"data.{key}", getattr(d, key), {written: copy.deepcopy(config[written])},
                              f"Axolotl reads the whole split as its own columns; it has no equivalent of "
                              f"{'; '.join(lost)}")
    config["val_set_size"] = d.eval_fraction
    config["train_on_inputs"] = not d.train_on_responses_only
    if d.format != "auto":
        draft.kept("data")["format"] = d.format
    draft.notes.extend(_format_notes(formats))
    if d.system_prompt is not None:
        draft.kept("data")["system_prompt"] = d.system_prompt
        draft.notes.append("data.system_prompt: inserted into every row without one; Axolotl has no such key "
                           "(default_system_message only changes ChatML's default)")
    config["dataset_exact_deduplication"] = d.dedupe != "none"
    if d.dedupe in ("near", "semantic"):
        draft.lossy_value("data.dedupe", d.dedupe, {"dataset_exact_deduplication": True},
                          "Axolotl removes exact duplicates only")
    draft.kept("data")["semantic_threshold"] = d.semantic_threshold
    draft.notes.append("data.semantic_threshold: quicktune's check for rows that say the same thing in other words")


def _format_notes(formats: dict[str, str]) -> list[str]:
    """Reads each data file's format; returns a note for each file Axolotl renders otherwise than quicktune."""
    notes = []
    for path, fmt in formats.items():
        if fmt == "alpaca":
            notes.append(f"data ({Path(path).name}, alpaca): Axolotl's alpaca type renders its own Alpaca prompt, "
                         "not the chat template quicktune renders these rows with")
        elif fmt == "sharegpt":
            notes.append(f"data ({Path(path).name}, sharegpt): a row's top-level `system` field is read by quicktune "
                         "only; Axolotl matches speaker names case-sensitively")
    return notes


def _export_training(t: TrainingSection, draft: _ExportDraft) -> None:
    """Reads recipe.training; writes the schedule, optimizer, batch, seed, packing, checkpointing and step-count
    keys; keeps training.gpus, training.packing (auto) and training.report_to."""
    config = draft.config
    config["num_epochs"] = t.epochs
    if t.max_steps:
        config["max_steps"] = t.max_steps
    config.update(learning_rate=t.learning_rate, lr_scheduler=t.lr_scheduler, warmup_ratio=t.warmup_ratio,
                  weight_decay=t.weight_decay)
    if t.optimizer == "auto":
        config["optimizer"] = "adamw_8bit"
        draft.lossy_value("training.optimizer", "auto", {"optimizer": "adamw_8bit"},
                          "auto picks adamw_8bit on a GPU and adamw_torch on the CPU; written as adamw_8bit")
    else:
        config["optimizer"] = _OPTIMIZERS[t.optimizer]
    _export_batch(t, draft)
    if t.packing == "auto":
        draft.kept("training")["packing"] = "auto"
        draft.notes.append("training.packing: auto packs on CUDA with Unsloth only; Axolotl's sample_packing is left "
                           "unset")
    else:
        config["sample_packing"] = bool(t.packing)
    config["gradient_checkpointing"] = t.gradient_checkpointing
    for ours, theirs in (("eval_every", "eval_steps"), ("save_every", "save_steps"),
                         ("early_stopping_patience", "early_stopping_patience")):
        if getattr(t, ours) is not None:
            config[theirs] = getattr(t, ours)
    config["logging_steps"] = t.logging_every
    if t.report_to:
        draft.kept("training")["report_to"] = list(t.report_to)
        draft.notes.append("training.report_to: Axolotl reports through its own keys (wandb_project, use_tensorboard)")


def _export_batch(t: TrainingSection, draft: _ExportDraft) -> None:
    """Reads training.batch_size, grad_accumulation, gpus and seed; writes micro_batch_size and
    gradient_accumulation_steps per process (as Axolotl reads them) and seed; keeps training.gpus."""
    batch, accumulation = split_batch(t.batch_size, t.grad_accumulation, t.gpus or 1)
    draft.config.update(micro_batch_size=batch, gradient_accumulation_steps=accumulation, seed=t.seed)
    if not t.gpus:
        return
    draft.kept("training")["gpus"] = t.gpus
    draft.notes.append(f"training.gpus: Axolotl takes the process count from `accelerate launch --num_processes "
                       f"{t.gpus}`; micro_batch_size and gradient_accumulation_steps are per process")
    if batch != t.batch_size:
        draft.lossy.append({"key": "training.batch_size", "value": t.batch_size,
                            "axolotl": {"micro_batch_size": batch}})
    if accumulation != t.grad_accumulation:
        draft.lossy.append({"key": "training.grad_accumulation", "value": t.grad_accumulation,
                            "axolotl": {"gradient_accumulation_steps": accumulation}})


class _QuotingDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, but a string holding a character that is not printable (NUL, U+0085, U+2028, a tab)
    is always double-quoted, where each is an escape: PyYAML writes some of them bare (a path ending in U+0085
    read back with a space in its place)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    quoted = any(not ch.isprintable() and ch != "\n" for ch in value)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if quoted else None)


_QuotingDumper.add_representer(str, _represent_str)


def _comment(text: str) -> str:
    """``text`` for one comment line: a line break (or any character that is not printable: NUL, U+2028) is
    written as its escape, so a value (a file name, a reward pattern, the recipe's path) cannot end the comment
    and add a key to the config."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def axolotl_yaml(export: AxolotlExport, source: str) -> str:
    header = [(f"# Axolotl config written by `quicktune recipes export {_comment(source)} --axolotl` (Axolotl "
               f"{AXOLOTL_SCHEMA_VERSION} schema)."), "# Recipe keys with no exact Axolotl equivalent:"]
    header += [f"#   {_comment(note)}" for note in export.no_equivalent]
    header.append(f"# `{BLOCK}:` keeps them for `quicktune recipes import`; Axolotl drops keys it does not know.")
    body = yaml.dump(export.config, Dumper=_QuotingDumper, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def write_new(path: Path, text: str, force: bool) -> None:
    """Never replace a file that is there unless asked; the file appears whole or not at all."""
    if path.exists() and not force:
        raise QuicktuneError(f"{path} already exists", hint="Choose another name, or add --force to replace it.")
    write_atomic(path, text)


def export_axolotl(recipe: Recipe, out: Path, source: str, force: bool = False) -> AxolotlExport:
    export = to_axolotl(recipe)
    write_new(out, axolotl_yaml(export, source), force)
    return export


# --------------------------------------------------------------------------- Axolotl -> recipe


@dataclass
class AxolotlImport:
    recipe: Recipe
    yaml_text: str
    unmapped: list[str] = field(default_factory=list)  # "file:line: key: why"
    defaults: list[str] = field(default_factory=list)  # keys left to Axolotl's defaults, or read as Axolotl reads them


class _Reader:
    """An Axolotl config with the line of every key, and what has been consumed from it."""

    def __init__(self, path: Path):
        self.path = path
        text = path.read_text(encoding="utf-8")
        try:
            node = yaml.compose(text)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            raise RecipeError(f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(self.data, dict):
            raise RecipeError(f"{path}:1: an Axolotl config is a mapping of keys (base_model:, datasets:, ...)")
        self.lines: dict[tuple, int] = {}
        self._walk(node, ())
        self.unmapped: list[str] = []

    def _walk(self, node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[(*prefix, str(key.value))] = key.start_mark.line + 1
                self._walk(value, (*prefix, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*prefix, index)] = item.start_mark.line + 1
                self._walk(item, (*prefix, index))

    def where(self, *keys) -> str:
        for end in range(len(keys), 0, -1):
            if keys[:end] in self.lines:
                return f"{self.path}:{self.lines[keys[:end]]}"
        return str(self.path)

    def skip(self, keys: tuple, why: str) -> None:
        dotted = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k)) for i, k in enumerate(keys))
        self.unmapped.append(f"{self.where(*keys)}: {dotted}: {why}")


def _dataset_in(
    entry: Any, index: int, key: str, reader: _Reader, base_dir: Path
) -> tuple[str, str, bool | None] | None:
    """(path, format, responses_only or None) of one dataset entry, or None when it cannot be mapped."""
    at = (key, index)
    if not isinstance(entry, dict):
        reader.skip(at, "expected a mapping with path and type")
        return None
    rl = reader.data.get("rl")
    if rl is not None and rl != "grpo":  # the entry is read by one of Axolotl's preference prompt strategies
        why = _PREFERENCE_ROWS["kto" if rl == "kto" else "dpo"]
        reader.skip((*at, "type"), why.format(rl=rl, type=entry.get("type")))
        return None
    known = {"path", "ds_type", "type", "field_messages", "message_property_mappings", "roles", "roles_to_train",
             "train_on_eos", "field", "split", "message_field_role", "message_field_content", "name", "revision"}
    for extra in entry:
        if extra not in known and entry[extra] is not None:
            reader.skip((*at, extra), "no quicktune equivalent")
    raw = entry.get("path")
    if not isinstance(raw, str):
        reader.skip((*at, "path"), "missing: a local file or a Hugging Face Hub dataset (OWNER/NAME)")
        return None
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else (base_dir / path)
    hub = not path.is_file() and _HUB_ID.match(raw) is not None
    if not path.is_file() and not hub:
        reader.skip((*at, "path"), f"{raw} is neither a local file nor a Hugging Face Hub dataset id (OWNER/NAME)")
        return None
    for key in ("name", "revision"):  # a Hub dataset's subset and commit
        if not hub and entry.get(key) is not None:
            reader.skip((*at, key), "a local file has no subsets or revisions")
    if not hub and entry.get("split") not in (None, "train"):
        reader.skip((*at, "split"), "a local file is read whole")
    kind = entry.get("type")
    columns: dict[str, str] = {}
    if kind == "chat_template":
        chat = _chat_dataset(entry, at, reader, renames=hub)
        if chat is None:
            return None
        fmt, responses_only, columns = chat
    elif kind == "alpaca":
        fmt, responses_only = "alpaca", None
    elif kind == "completion" and (entry.get("field") in (None, "text") or hub):
        fmt, responses_only = "text", None
        if entry.get("field") not in (None, "text"):
            columns = {str(entry["field"]): "text"}
    else:
        reader.skip((*at, "type"), f"dataset type {kind!r}: quicktune maps chat_template, alpaca and completion")
        return None
    if not hub:
        return str(path.resolve()), fmt, responses_only
    try:
        source = HubDataset(hf=raw, split=entry.get("split") or "train", subset=entry.get("name"),
                            revision=entry.get("revision"), columns=columns)
    except ValidationError as exc:
        reader.skip(at, f"not a Hub dataset quicktune can name: {exc.errors()[0]['msg']}")
        return None
    return source.ref(), fmt, responses_only


def _chat_dataset(
    entry: dict[str, Any], at: tuple[str, int], reader: _Reader, *, renames: bool = False
) -> tuple[str, bool | None, dict[str, str]] | None:
    """Reads a chat_template dataset entry's message fields, roles and roles_to_train; returns (format,
    responses_only or None, columns), or None when quicktune cannot read its messages (listed as not imported).
    With ``renames`` (a Hub dataset) the messages may sit under any column: ``columns`` renames it."""
    mapping = entry.get("message_property_mappings") or {
        "role": entry.get("message_field_role") or "role",
        "content": entry.get("message_field_content") or "content",
    }
    if not isinstance(mapping, dict):
        reader.skip((*at, "message_property_mappings"), "expected a mapping of role and content to fields")
        return None
    layout = (entry.get("field_messages") or "messages", mapping.get("role"), mapping.get("content"))
    columns: dict[str, str] = {}
    turn_keys = {("role", "content"): "messages", ("from", "value"): "sharegpt"}.get(layout[1:])
    if renames and turn_keys is not None and isinstance(layout[0], str):
        wanted = "messages" if turn_keys == "messages" else "conversations"
        columns = {layout[0]: wanted} if layout[0] != wanted else {}
        layout = (wanted, *layout[1:])
    fmt = {("messages", "role", "content"): "messages", ("conversations", "from", "value"): "sharegpt"}.get(layout)
    if fmt is None:
        reader.skip((*at, "field_messages"), f"messages under {layout[0]!r} with role {layout[1]!r} and content "
                                              f"{layout[2]!r}: quicktune reads messages (role/content) or "
                                              "conversations (from/value)")
        return None
    roles = entry.get("roles")
    if roles is not None and fmt == "sharegpt" and roles != _SHAREGPT_ROLES:
        reader.skip((*at, "roles"), "quicktune maps speakers human/user, gpt/assistant/model/chatgpt, system")
    responses_only = None
    trained = entry.get("roles_to_train")
    if isinstance(trained, list):
        responses_only = list(trained) == ["assistant"]
        if not responses_only and "assistant" not in trained:
            reader.skip((*at, "roles_to_train"), "quicktune trains the answers, or every token")
    return fmt, responses_only, columns


@dataclass
class _ImportDraft:
    """The recipe as it is read from an Axolotl config: the recipe mapping so far, the Axolotl keys consumed, the
    config line of each recipe key (for the recipe's own errors) and the keys read with Axolotl's defaults."""

    reader: _Reader
    recipe: dict[str, Any] = field(default_factory=lambda: {"model": {}, "lora": {}, "data": {}, "training": {}})
    used: set[str] = field(default_factory=lambda: {BLOCK})
    lines: dict[tuple[str, ...], str] = field(default_factory=dict)
    defaults: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> dict[str, Any]:
        return self.reader.data

    def take(self, key: str, target: tuple[str, ...] | None = None) -> Any:
        """The config's value of ``key`` (Axolotl's default where it leaves a key out, noted in ``defaults``),
        marked as used; ``target`` is the recipe key whose errors name ``key``'s line."""
        self.used.add(key)
        if target is not None:
            self.lines[target] = self.reader.where(key)
        if self.cfg.get(key) is None and key in AXOLOTL_DEFAULTS:
            self.defaults.append(f"{key}: {AXOLOTL_DEFAULTS[key]!r}")
            return AXOLOTL_DEFAULTS[key]
        return self.cfg.get(key)


def from_axolotl(path: Path) -> AxolotlImport:
    """A quicktune recipe from an Axolotl config; every key it cannot map is listed with its line."""
    draft = _ImportDraft(_Reader(path))
    block = draft.cfg.get(BLOCK) if isinstance(draft.cfg.get(BLOCK), dict) else {}
    _import_model(draft)
    _import_lora(draft)
    _import_data(draft, path.parent)
    _import_schedule(draft)
    _import_run_settings(draft)
    _import_grpo(draft, path.parent)
    _apply_block(draft.recipe, block, draft.cfg, draft.reader)
    _import_last_layers(draft)
    if not (draft.recipe.get("data") or {}).get("train"):
        raise _no_training_data(draft.reader)
    draft.recipe.setdefault("name", _name_from(path))
    _skip_unmapped(draft)
    loaded = validate_recipe(draft.recipe, lines=draft.lines, source=str(path))
    text = loaded.to_yaml()
    return AxolotlImport(loaded, text, sorted(draft.reader.unmapped, key=_by_line), draft.defaults)


def _import_model(draft: _ImportDraft) -> None:
    """Reads base_model, sequence_len, trust_remote_code, bf16 and fp16, then the method and chat template
    steps; writes the recipe's model section."""
    model = draft.recipe["model"]
    model["base"] = draft.take("base_model", ("model", "base"))
    model["max_seq_length"] = draft.take("sequence_len", ("model", "max_seq_length"))
    if draft.take("trust_remote_code") is not None:
        model["trust_remote_code"] = draft.cfg["trust_remote_code"]
    _import_method(draft)
    bf16, fp16 = draft.take("bf16"), draft.take("fp16")
    model["dtype"] = ("float16" if fp16 else "bfloat16" if bf16 is True
                      else "float32" if bf16 is False and fp16 is False else "auto")
    _import_chat_template(draft)


def _import_method(draft: _ImportDraft) -> None:
    """Reads adapter, load_in_4bit and load_in_8bit; writes the recipe's method and model.load_in_4bit."""
    recipe, reader = draft.recipe, draft.reader
    adapter = draft.take("adapter", ("method",))
    four_bit = bool(draft.take("load_in_4bit", ("model", "load_in_4bit")))
    if draft.take("load_in_8bit"):
        reader.skip(("load_in_8bit",), "quicktune loads 16-bit (lora) or 4-bit (qlora) weights")
    if isinstance(adapter, str) and adapter in ("lora", "qlora"):
        recipe["method"] = "qlora" if adapter == "qlora" or four_bit else "lora"
    elif adapter is None:
        recipe["method"] = "full"
    else:
        recipe["method"] = "qlora" if four_bit else "lora"
        reader.skip(("adapter",), f"adapter {adapter!r}: quicktune trains lora or qlora adapters")
    recipe["model"]["load_in_4bit"] = four_bit


def _import_grpo(draft: _ImportDraft, base_dir: Path) -> None:
    """Reads rl and Axolotl's trl section; writes method grpo and the recipe's grpo section: the group size,
    answer length, temperature and beta, and each trl.reward_funcs dotted path as FILE.py:FUNCTION (the module's
    file beside the config) with its trl.reward_weights. Lists what does not map: another rl method, a reward
    model id, a trl key quicktune has no equivalent for."""
    rl = draft.take("rl", ("method",))
    trl = draft.cfg.get("trl") if isinstance(draft.cfg.get("trl"), dict) else {}
    if rl is None:
        return
    if rl != "grpo":
        draft.reader.skip(("rl",), f"rl {rl!r}: quicktune imports supervised configs and rl: grpo")
        return
    draft.used.add("trl")
    adapter = draft.recipe.get("method")
    if adapter == "full":
        draft.reader.skip(("rl",), "rl: grpo without an adapter: quicktune trains GRPO as a LoRA or QLoRA adapter")
    draft.recipe["method"] = "grpo"
    grpo = {key: trl[key] for key in GRPO_TRL_KEYS if trl.get(key) is not None}
    funcs = trl.get("reward_funcs") or []
    weights = trl.get("reward_weights") or [1.0] * len(funcs)
    rewards = []
    for index, (dotted, weight) in enumerate(zip(funcs, weights, strict=False)):
        module, _, function = str(dotted).rpartition(".")
        if not module or "/" in str(dotted):
            draft.reader.skip(("trl", "reward_funcs", index), f"{dotted!r}: a reward model or not a module.function "
                              "path; quicktune scores with functions only")
            continue
        rewards.append({"name": f"{base_dir / (module.replace('.', '/') + '.py')}:{function}", "weight": weight})
    if rewards:
        grpo["rewards"] = rewards
    for key in trl:
        if key not in (*GRPO_TRL_KEYS, "reward_funcs", "reward_weights"):
            draft.reader.skip(("trl", key), "no quicktune equivalent")
    draft.recipe["grpo"] = grpo
    answers, group = draft.recipe["training"].get("batch_size"), grpo.get("num_generations", 8)
    if isinstance(answers, int) and isinstance(group, int) and group > 0:  # Axolotl's batch counts answers
        if answers % group:
            draft.reader.skip(("micro_batch_size",), f"{answers} answers a step is no whole number of groups of "
                              f"{group}: training.batch_size (prompts) left at its default")
            del draft.recipe["training"]["batch_size"]
        else:
            draft.recipe["training"]["batch_size"] = answers // group


def _import_chat_template(draft: _ImportDraft) -> None:
    """Reads chat_template and chat_template_jinja; writes model.chat_template: the quicktune family whose
    template the jinja is word for word, else auto (the tokenizer's own)."""
    model, reader = draft.recipe["model"], draft.reader
    template, jinja = draft.take("chat_template", ("model", "chat_template")), draft.take("chat_template_jinja")
    template = template if isinstance(template, str) or template is None else repr(template)
    model["chat_template"] = "auto"
    if template == "jinja" or (template is None and jinja):
        family = next((name for name, text in FAMILY_TEMPLATES.items() if text == jinja), None)
        if family:
            model["chat_template"] = family
        else:
            reader.skip(("chat_template_jinja",), "a custom template: quicktune uses a family template or the "
                                                  "tokenizer's own; put it in the tokenizer's chat_template")
    elif template not in (None, "tokenizer_default"):
        reader.skip(("chat_template",), f"Axolotl's built-in {template!r} template is not one of quicktune's; "
                                        "using the tokenizer's own (model.chat_template: auto)")


def _import_lora(draft: _ImportDraft) -> None:
    """Reads the lora_* and peft_use_* keys and lora_target_linear (for an adapter method); writes the recipe's
    lora section."""
    if draft.recipe["method"] == "full":
        return
    lora = draft.recipe["lora"]
    for theirs, ours in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                         ("lora_target_modules", "target_modules"), ("peft_use_dora", "use_dora"),
                         ("peft_use_rslora", "use_rslora")):
        value = draft.take(theirs, ("lora", ours))
        if value is not None:
            lora[ours] = value
    if draft.take("lora_target_linear") and "target_modules" not in lora:
        lora["target_modules"] = LoraSection().target_modules
        draft.defaults.append("lora_target_linear: read as the 7 attention and MLP projections of a Llama-style model")


def _import_data(draft: _ImportDraft, base_dir: Path) -> None:
    """Reads datasets, test_datasets (their files relative to ``base_dir``, and each file's first record),
    val_set_size, train_on_inputs and dataset_exact_deduplication; writes the recipe's data section."""
    data, reader = draft.recipe["data"], draft.reader
    datasets = _import_datasets(draft, base_dir)
    data["train"] = [p for p, _, _ in datasets["datasets"]]
    data["eval"] = [p for p, _, _ in datasets["test_datasets"]]
    draft.lines[("data", "train")] = reader.where("datasets")
    draft.lines[("data", "eval")] = reader.where("test_datasets")
    split = draft.take("val_set_size", ("data", "eval_fraction"))
    if split:
        if isinstance(split, (int, float)) and split >= 1:
            reader.skip(("val_set_size",), "a row count: quicktune takes a fraction (data.eval_fraction)")
        else:
            data["eval_fraction"] = split
    inputs = draft.take("train_on_inputs")
    per_dataset = {r for _, _, r in (*datasets["datasets"], *datasets["test_datasets"]) if r is not None}
    if len(per_dataset) > 1:
        reader.skip(("datasets",), "roles_to_train differs between datasets: quicktune has one setting for all")
    data["train_on_responses_only"] = per_dataset.pop() if len(per_dataset) == 1 else not inputs
    dedupe = draft.take("dataset_exact_deduplication")
    data["dedupe"] = "exact" if dedupe else "none"
    # A Hub dataset is not read here (it may not be downloaded yet): its format is found from its rows, which the
    # columns of Axolotl's type name as quicktune's formats do (instruction/output, messages, conversations, text).
    pinned = {p: f for p, f, _ in (*datasets["datasets"], *datasets["test_datasets"]) if not is_hub_ref(p)
              and f != detect_format(next((r.value for r in read_records(p) if r.error is None), None))}
    data["format"] = pinned or "auto"


def _import_datasets(draft: _ImportDraft, base_dir: Path) -> dict[str, list[tuple[str, str, bool | None]]]:
    """Reads datasets and test_datasets; returns, under each key, (path, format, responses_only or None) of each
    entry quicktune can train on (the others are listed as not imported)."""
    datasets: dict[str, list[tuple[str, str, bool | None]]] = {"datasets": [], "test_datasets": []}
    for key in datasets:
        entries = draft.take(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            draft.reader.skip((key,), "expected a list of datasets")
            continue
        for index, entry in enumerate(entries):
            found = _dataset_in(entry, index, key, draft.reader, base_dir)
            if found:
                datasets[key].append(found)
    return datasets


def _no_training_data(reader: _Reader) -> RecipeError:
    """The error of a config none of whose datasets quicktune can train on, with each dataset's reason."""
    why = [line for line in reader.unmapped if line.split(": ", 2)[1].startswith(("datasets", "rl"))]
    return RecipeError(f"{reader.path}: none of its datasets can be imported, so the recipe would have no training "
                       "data (data.train)", problems=why or [f"{reader.where('datasets')}: datasets: none given"],
                       hint="Point data.train at local files or hf://OWNER/NAME datasets quicktune reads (alpaca, "
                       "sharegpt, messages or text rows), then `quicktune data check --recipe` it.")


def _import_schedule(draft: _ImportDraft) -> None:
    """Reads num_epochs, max_steps, learning_rate, lr_scheduler, warmup_steps, warmup_ratio, weight_decay and
    optimizer; writes them into the recipe's training section."""
    training, reader = draft.recipe["training"], draft.reader
    training["epochs"] = draft.take("num_epochs", ("training", "epochs"))
    if draft.take("max_steps") is not None:
        training["max_steps"] = draft.cfg["max_steps"]
        draft.lines[("training", "max_steps")] = reader.where("max_steps")
    training["learning_rate"] = draft.take("learning_rate", ("training", "learning_rate"))
    scheduler = draft.take("lr_scheduler", ("training", "lr_scheduler"))
    if isinstance(scheduler, str) and scheduler in _SCHEDULERS:
        training["lr_scheduler"] = scheduler
    else:
        reader.skip(("lr_scheduler",), f"{scheduler!r}: quicktune schedules {', '.join(_SCHEDULERS)}")
    if draft.take("warmup_steps") is not None:
        reader.skip(("warmup_steps",), "quicktune takes warmup as a fraction of the steps (training.warmup_ratio)")
    training["warmup_ratio"] = draft.take("warmup_ratio", ("training", "warmup_ratio"))
    training["weight_decay"] = draft.take("weight_decay", ("training", "weight_decay"))
    optimizer = draft.take("optimizer", ("training", "optimizer"))
    if isinstance(optimizer, str) and optimizer in _OPTIMIZERS_IN:
        training["optimizer"] = _OPTIMIZERS_IN[optimizer]
    else:
        reader.skip(("optimizer",), f"{optimizer!r}: quicktune trains with {', '.join(_OPTIMIZERS)}")


def _import_run_settings(draft: _ImportDraft) -> None:
    """Reads micro_batch_size, gradient_accumulation_steps, seed, sample_packing, gradient_checkpointing and the
    step counts (eval_steps, save_steps, early_stopping_patience, logging_steps); writes them into the recipe's
    training section."""
    training, reader = draft.recipe["training"], draft.reader
    training["batch_size"] = draft.take("micro_batch_size", ("training", "batch_size"))
    training["grad_accumulation"] = draft.take("gradient_accumulation_steps", ("training", "grad_accumulation"))
    training["seed"] = draft.take("seed", ("training", "seed"))
    packing = draft.take("sample_packing", ("training", "packing"))
    if packing is not None:
        training["packing"] = bool(packing)
    checkpointing = draft.take("gradient_checkpointing", ("training", "gradient_checkpointing"))
    if isinstance(checkpointing, bool):
        training["gradient_checkpointing"] = checkpointing
    else:
        reader.skip(("gradient_checkpointing",),
                    f"{checkpointing!r}: quicktune checkpoints on the device (true/false)")
    for theirs, ours in (("eval_steps", "eval_every"), ("save_steps", "save_every"),
                         ("early_stopping_patience", "early_stopping_patience"), ("logging_steps", "logging_every")):
        value = draft.take(theirs, ("training", ours))
        if isinstance(value, float) and not value.is_integer():
            reader.skip((theirs,), "a fraction of the run: quicktune counts steps")
        elif value is not None:  # anything but a number is reported at its line by the recipe's validation
            training[ours] = int(value) if isinstance(value, float) else value


def _import_last_layers(draft: _ImportDraft) -> None:
    """Reads peft_layers_to_transform against the recipe's base (which the quicktune: block may have restored);
    writes lora.last_layers when the indices are the base's last N layers."""
    layers = draft.take("peft_layers_to_transform")
    if layers is None:
        return
    recipe = draft.recipe
    base = recipe["model"].get("base") if isinstance(recipe.get("model"), dict) else None
    last, why = (None, "no adapter: a full fine-tune trains every layer") if recipe.get("method") == "full" \
        else _as_last_layers(layers, base)
    if last is None or not isinstance(recipe.get("lora"), dict):
        draft.reader.skip(("peft_layers_to_transform",), why or "the recipe's lora section is not a mapping")
    else:
        recipe["lora"]["last_layers"] = last
        draft.lines[("lora", "last_layers")] = draft.reader.where("peft_layers_to_transform")


def _skip_unmapped(draft: _ImportDraft) -> None:
    """Reads the config's keys no step used; lists each that holds a value as not imported (output_dir with
    where quicktune writes instead)."""
    cfg, reader = draft.cfg, draft.reader
    if cfg.get("output_dir") is not None:
        reader.skip(("output_dir",), "quicktune writes each run to runs/<recipe>/vN")
        draft.used.add("output_dir")
    for key, value in cfg.items():
        if key not in draft.used and value is not None:
            reader.skip((key,), "no quicktune equivalent")


def _apply_block(recipe: dict[str, Any], block: dict[str, Any], cfg: dict[str, Any], reader: _Reader) -> None:
    """Values quicktune kept for itself: taken as they are, or, for those Axolotl has a lossy
    translation of, only while the Axolotl keys still hold what quicktune wrote."""
    kept = block.get("recipe") if isinstance(block.get("recipe"), dict) else {}
    recipe.update(deep_merge(recipe, kept))
    written_as = block.get("as_written")
    for item in written_as if isinstance(written_as, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            continue
        written = item.get("axolotl") or {}
        if all(cfg.get(k) == v for k, v in written.items()):
            node = recipe
            *parents, last = item["key"].split(".")
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node[last] = item.get("value")
        else:
            changed = ", ".join(k for k, v in written.items() if cfg.get(k) != v)
            reader.skip((BLOCK,), f"{item['key']}: kept as {changed} now says, not quicktune's {item.get('value')!r}")


def _name_from(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "imported"
    return name if name[0].isalnum() else f"x{name}"


def _by_line(text: str) -> tuple[int, str]:
    where = text.split(": ", 1)[0]
    line = where.rpartition(":")[2]
    return (int(line) if line.isdigit() else 0, text)


def import_axolotl(path: Path, out: Path | None, force: bool = False) -> tuple[AxolotlImport, Path]:
    if not path.is_file():
        raise QuicktuneError(f"no such Axolotl config: {path}")
    imported = from_axolotl(path)
    target = out or Path(f"{imported.recipe.name}.yaml")
    header = (f"# quicktune recipe imported from the Axolotl config {path} by `quicktune recipes import`.\n"
              + "".join(f"# not imported: {line}\n" for line in imported.unmapped)
              + "".join(f"# read as Axolotl reads it: {line}\n" for line in imported.defaults))
    write_new(target, header + imported.yaml_text, force)
    return imported, target

