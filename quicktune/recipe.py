"""Recipes: the YAML that says what to train, on what, and how to export it.

A recipe is a built-in name (``quicktune recipes``) or a path to a YAML file.
Values come, lowest precedence first, from the schema defaults, the recipe named by
``extends:`` (recursively), the recipe itself, and ``--set key.path=value``
overrides. Every problem is reported at once, each with the file and line that set
the offending key.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from quicktune.errors import QuicktuneError, RecipeError
from quicktune.hubref import hub_entry, is_hub_ref

QUANTIZATIONS = ("q4_k_m", "q5_k_m", "q8_0", "f16", "bf16")
TEMPLATE_FAMILIES = ("auto", "chatml", "llama3", "mistral", "gemma", "phi3")
DATA_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "text", "preference")
PREFERENCE_METHODS = ("dpo", "orpo")  # trained on prompt/chosen/rejected pairs (quicktune.train.preference)
# Methods that train an adapter on a 16-bit or a 4-bit base, as model.load_in_4bit says (qlora: always 4-bit).
ADAPTER_ON_EITHER_BASE = (*PREFERENCE_METHODS, "grpo")
# method grpo's built-in rewards (quicktune.rewards scores them); regex:PATTERN and max_length:N take an argument.
BUILT_IN_REWARDS = ("exact", "exact_match", "normalized_match", "json_valid", "json_fields")
ARGUMENT_REWARDS = ("regex", "max_length")
# TRL DPOTrainer loss types (trl 1.15 DPOConfig.loss_type); label_smoothing belongs to the two that read it.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero",
              "apo_down", "sigmoid_norm")
_SMOOTHED_LOSSES = ("robust", "exo_pair")
# Input embeddings and output heads as transformers names them: modules Unsloth moves out of LoRA's target_modules.
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
                               "tok_embeddings"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _one_or_many_validator(*fields: str) -> Any:
    """A section's before-validator for its list ``fields``: one string there is a list of one (``train: a.jsonl``
    reads as ``train: [a.jsonl]``); any other value goes on to the list's own validation."""
    return field_validator(*fields, mode="before")(staticmethod(_as_list))


class ModelSection(_Section):
    base: str = Field(description="Hub id, local folder, local .gguf file, or pkg://<package>/<file>.")
    max_seq_length: int = Field(2048, gt=0, le=131072)
    load_in_4bit: bool | None = Field(None, description="Defaults to true for qlora, false otherwise.")
    chat_template: Literal["auto", "chatml", "llama3", "mistral", "gemma", "phi3"] = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class LoraSection(_Section):
    r: int = Field(16, gt=0, le=1024)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    use_dora: bool = False
    use_rslora: bool = False
    last_layers: int | None = Field(
        None, gt=0,
        description="LoRA on the last N decoder layers only (null: every layer). The layers below keep the base's "
        "weights; without gradient checkpointing backpropagation stops above them, so a step costs less and keeps "
        "fewer activations (with it, the recomputation needs the gradient through every layer).",
    )

    _one_or_many = _one_or_many_validator("target_modules")


class DataSection(_Section):
    train: list[str] = Field(min_length=1)
    eval: list[str] = Field(default_factory=list)
    format: str | dict[str, str] = Field(
        "auto",
        description="auto: each file's format is detected from its first record; one name pins every file; "
        "a mapping {file: format} pins those files and detects the rest.",
    )
    eval_fraction: float = Field(0.0, ge=0.0, lt=0.5)
    system_prompt: str | None = None
    shared_instruction: Literal["keep", "system"] = Field(
        "keep",
        description="An instruction at least 80% of the rows put before (or after) what they ask in the user turn "
        "(data check names it): keep trains it there, so users must type it; system moves it into the system turn "
        "(after data.system_prompt or the row's own), which the Modelfile's SYSTEM and chat send, so users type the "
        "input alone. Rows without it are kept as they are.",
    )
    train_on_responses_only: bool = True
    dedupe: Literal["none", "exact", "near", "semantic"] = "exact"
    semantic_threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Prompt-embedding cosine at or above which two rows (or a train and an eval prompt) count as "
        "asking the same thing in other words (quicktune/data/semantic.py; 0.85 suggested); null, the default, "
        "leaves the check off.",
    )

    _one_or_many = _one_or_many_validator("train", "eval")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _hub_entries(cls, value: Any) -> Any:
        """Hub datasets (``hf://OWNER/NAME`` or ``{hf: OWNER/NAME, split: ...}``) as the one string the recipe keeps."""
        return [hub_entry(v) for v in value] if isinstance(value, list) else hub_entry(value)

    @field_validator("format", mode="before")
    @classmethod
    def _known_formats(cls, value: Any, info: ValidationInfo) -> Any:
        names = ", ".join(DATA_FORMATS)
        if isinstance(value, str):
            if value not in DATA_FORMATS:
                raise ValueError(f"unknown format {value!r}; expected one of {names}, or a mapping of file to format")
            return value
        if not isinstance(value, dict):
            raise ValueError(f"expected a format name ({names}) or a mapping of data file to format")
        files = [*info.data.get("train", []), *info.data.get("eval", [])]
        problems = []
        value = {hub_entry(name) if is_hub_ref(name) else name: fmt for name, fmt in value.items()}
        for name, fmt in value.items():
            if fmt not in DATA_FORMATS:
                problems.append(f"{name}: unknown format {fmt!r}; expected one of {names}")
            if "train" in info.data and not any(Path(str(name)) == Path(f) for f in files):
                problems.append(f"{name} is not one of data.train or data.eval ({', '.join(files)})")
        if problems:
            raise ValueError("; ".join(problems))
        return {str(name): fmt for name, fmt in value.items()}

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataSection:
        if self.eval and self.eval_fraction:
            raise ValueError("set either data.eval (files) or data.eval_fraction, not both")
        if self.dedupe == "semantic" and self.semantic_threshold is None:
            raise ValueError("data.dedupe: semantic needs data.semantic_threshold (null turns the semantic check off)")
        return self


class TrainingSection(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="When set, overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    batch_size: int = Field(2, gt=0)
    grad_accumulation: int = Field(4, gt=0)
    seed: int = 3407
    packing: bool | Literal["auto"] = Field(
        "auto", description="auto: on with Unsloth on CUDA (padding-free), off elsewhere."
    )
    gradient_checkpointing: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="The trainer's mixed precision (autocast; weights and the adapter stay as model.dtype loads "
        "them). auto: bf16 on a CUDA card that has it, else fp16; fp32 on the CPU, where bf16 autocast did not win "
        "on the demo even with AMX (bench/README.md, 'Training speed'). fp16 needs CUDA.",
    )
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    logging_every: int = Field(1, gt=0)
    gpus: int | None = Field(
        None, ge=1, le=64, description="Processes to train on, one per GPU, through accelerate launch (DDP); without "
        "CUDA they are CPU processes. The global batch (batch_size x grad_accumulation) stays the same. "
        "`train --gpus N` overrides it; null: one."
    )

    @model_validator(mode="after")
    def _batch_splits_over_gpus(self) -> TrainingSection:
        try:
            split_batch(self.batch_size, self.grad_accumulation, self.gpus or 1)
        except QuicktuneError as exc:
            raise ValueError(f"{exc.message}: {exc.hint}") from None
        return self
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Also send the training logs to TensorBoard or Weights & Biases, as the trainer reports them "
        "(TensorBoard's event files go under RUN/checkpoints/runs/: `tensorboard --logdir RUN`); the package must "
        "be installed (checked when training starts).",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _reporters(cls, value: Any) -> Any:
        return [] if value in (None, "none") else _as_list(value)


class ExportSection(_Section):
    quantizations: list[Literal["q4_k_m", "q5_k_m", "q8_0", "f16", "bf16"]] = Field(
        default_factory=lambda: ["q4_k_m"], min_length=1
    )
    system: str | None = Field(None, description="Modelfile SYSTEM; defaults to data.system_prompt.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    num_ctx: int | None = Field(
        None, gt=0,
        description="Chat context in tokens; default max(model.max_seq_length, 2048), at most the base model's.",
    )
    merge_base: str | None = Field(
        None,
        description="16-bit weights to merge a QLoRA adapter into; defaults to model.base without -bnb-4bit.",
    )
    merge_target: Literal["original", "dequantized"] | None = Field(
        None,
        description="What a QLoRA adapter is merged into: the 4-bit base as trained, de-quantized (the default "
        "for qlora: closest to the trained model, bench/README.md), or the original 16-bit weights "
        "(export.merge_base). lora and full runs merge into the weights they trained: original.",
    )

    _one_or_many = _one_or_many_validator("quantizations")


class PreferenceSection(_Section):
    """method dpo / orpo. The reference model of DPO is where training starts: the ``--from`` run's
    adapter (a frozen copy), else the base model; ORPO has none."""

    beta: float = Field(0.1, gt=0, description="dpo: how far from the reference (higher: closer); "
                        "orpo: the weight of the odds-ratio term beside the SFT loss on the chosen answer.")
    loss_type: Literal[DPO_LOSSES] = Field("sigmoid", description="dpo only: TRL's DPO loss (sigmoid is DPO).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="dpo with loss_type robust or exo_pair only.")
    sft_weight: float = Field(0.0, ge=0.0, description="dpo only: weight of an SFT loss on the chosen answer added "
                              "to the DPO loss (RPO; TRL's loss_type 'sft'), which keeps the chosen answers likely; "
                              "0 adds none.")


class RewardSpec(_Section):
    """One reward of method grpo: a built-in name (``quicktune.rewards.BUILT_IN``; ``regex:PATTERN``,
    ``max_length:N``) or ``path/to/file.py:function`` (resolved against the recipe's folder)."""

    name: str = Field(min_length=1, description="exact, normalized_match, json_valid, json_fields, regex:PATTERN, "
                      "max_length:N, or path/to/rewards.py:function (TRL's signature).")
    weight: float = Field(1.0, description="This reward's weight in the sum each completion is scored by.")

    @field_validator("name")
    @classmethod
    def _known_kind(cls, name: str) -> str:
        problem = reward_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name


class GrpoSection(_Section):
    """method grpo: a group of sampled answers per prompt, scored by the rewards, each answer pushed
    up or down by how it scores against its group (no reward model; a reference model only with beta > 0).
    The defaults suit a 7-8B QLoRA on a 24 GB card; the CPU demo (smollm2-demo-grpo) sets smaller ones."""

    rewards: list[RewardSpec] = Field(default_factory=list, description="What scores each sampled answer (at least "
                                      "one); their weighted sum is the answer's reward.")
    num_generations: int = Field(8, ge=2, description="Answers sampled per prompt (the group each is compared with).")
    max_completion_length: int = Field(256, ge=1, description="Tokens each sampled answer may take.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers (higher: more varied "
                               "groups, so more signal; too high: nonsense).")
    beta: float = Field(0.0, ge=0, description="KL weight against the starting model (0: no reference model is "
                        "kept, as TRL's default; DeepSeek-R1 used 0.001).")


class EvalSection(_Section):
    metric: Literal["exact_match", "normalized_match", "json_valid", "json_fields", "ends_with_eos"] = Field(
        "normalized_match", description="The headline metric of `quicktune eval` (all are reported)."
    )
    probes: list[Literal["general"]] = Field(
        default_factory=list,
        description="Probe sets `quicktune run` asks the base model and the trained run after training (the "
        "forgetting check, as `quicktune eval RUN --probe general`); quicktune/evaluate/probes/ has them.",
    )


class Recipe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    hardware: str = Field("", description="One line: the card it is for and the VRAM it needs.")
    extends: str | None = None
    method: Literal["qlora", "lora", "full", "dpo", "orpo", "grpo"] = "qlora"
    model: ModelSection
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    export: ExportSection = Field(default_factory=ExportSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _method_matches_loading(self) -> Recipe:
        if self.model.load_in_4bit is None:
            self.model.load_in_4bit = self.method == "qlora"
        elif self.method == "qlora" and not self.model.load_in_4bit:
            raise ValueError("method qlora trains on a 4-bit base: set model.load_in_4bit: true or method: lora")
        elif self.method not in ("qlora", *ADAPTER_ON_EITHER_BASE) and self.model.load_in_4bit:
            raise ValueError(f"method {self.method} trains 16-bit weights: set method: qlora for a 4-bit base")
        return self

    @model_validator(mode="after")
    def _preference_keys_fit_method(self) -> Recipe:
        section = self.preference
        if self.method not in PREFERENCE_METHODS:
            if section != PreferenceSection():
                raise ValueError(f"preference: used only by method dpo or orpo (this recipe's method is {self.method})")
            return self
        if self.method == "orpo" and section.loss_type != "sigmoid":
            raise ValueError("preference.loss_type: ORPO's loss is fixed (SFT loss + beta x odds ratio); "
                             "loss_type is for method dpo")
        if section.sft_weight and self.method == "orpo":
            raise ValueError("preference.sft_weight: ORPO's loss already holds the SFT loss on the chosen answer "
                             "(beta weighs the odds-ratio term beside it); sft_weight is for method dpo")
        if section.label_smoothing and (self.method == "orpo" or section.loss_type not in _SMOOTHED_LOSSES):
            raise ValueError(f"preference.label_smoothing: read only by method dpo with loss_type "
                             f"{' or '.join(_SMOOTHED_LOSSES)} (here: {self.method}, {section.loss_type})")
        if not self.data.train_on_responses_only:
            raise ValueError(f"data.train_on_responses_only: method {self.method} always trains on the answers of "
                             "each pair only (the prompt is context); remove the key")
        if self.training.packing is True:
            raise ValueError(f"training.packing: method {self.method} trains prompt/answer pairs, which TRL does not "
                             "pack; remove the key")
        if section.loss_type == "exo_pair" and not section.label_smoothing:
            raise ValueError("preference.label_smoothing: loss_type exo_pair needs a value above 0 (its paper: 1e-3)")
        return self

    @model_validator(mode="after")
    def _grpo_keys_fit_method(self) -> Recipe:
        if self.method != "grpo":
            if self.grpo != GrpoSection():
                raise ValueError(f"grpo: used only by method grpo (this recipe's method is {self.method})")
            return self
        if not self.grpo.rewards:
            raise ValueError("grpo.rewards: method grpo needs at least one reward to score the sampled answers, "
                             "e.g. [{name: exact}] or [{name: rewards.py:my_reward}]")
        if not self.data.train_on_responses_only:
            raise ValueError("data.train_on_responses_only: method grpo trains on the sampled answers only (the "
                             "prompt is context); remove the key")
        if self.training.packing is True:
            raise ValueError("training.packing: method grpo trains sampled answers, which TRL does not pack; "
                             "remove the key")
        for key in ("eval_every", "early_stopping_patience"):
            if getattr(self.training, key) is not None:
                raise ValueError(f"training.{key}: method grpo does not evaluate while it trains (an eval would "
                                 "sample a whole group for every held-out prompt); `quicktune eval` scores each "
                                 f"reward on the held-out rows after training. Remove the key (--set training.{key}="
                                 "null)")
        return self

    @model_validator(mode="after")
    def _merge_target_fits_method(self) -> Recipe:
        export = self.export
        if export.merge_target is None:
            quantized = bool(self.model.load_in_4bit) and not export.merge_base
            export.merge_target = "dequantized" if quantized else "original"
        elif export.merge_target == "dequantized" and not self.model.load_in_4bit:
            raise ValueError(f"export.merge_target dequantized: method {self.method} trained no 4-bit weights; "
                             "use original")
        elif export.merge_target == "dequantized" and export.merge_base:
            raise ValueError("export.merge_base names 16-bit weights to merge into; with merge_target: dequantized "
                             "the adapter is merged into the de-quantized 4-bit base instead: set one of them")
        return self

    # Where each key was set ("file:line" or "--set ..."), for errors found after validation.
    _where: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr("<recipe>")
    _notes: list[str] = PrivateAttr(default_factory=list)  # what loading changed, for the user to read

    @property
    def notes(self) -> list[str]:
        """What loading left out or implied (keys a method overriding them makes moot), one line each."""
        return self._notes

    @model_validator(mode="before")
    @classmethod
    def _null_sections_take_defaults(cls, data: Any) -> Any:
        """``lora: null`` (``--set lora=null``) is the section left out: its defaults."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _DEFAULTED_SECTIONS)}
        return data

    def __eq__(self, other: object) -> bool:  # the settings, not where they were written
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  (mutable, as before)

    def where(self, loc: tuple[str, ...]) -> str:
        """The file and line (or --set flag) that set the key at ``loc``, or its nearest section."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self._where:
                return self._where[loc[:end]]
        return self._source

    def to_yaml(self) -> str:
        # A recipe that trains no preference pairs keeps the YAML (and the sha256 resume matches on) it always had.
        unused = None if self.method in PREFERENCE_METHODS else {"preference"}
        if self.method != "grpo":  # likewise for a recipe that is not GRPO's
            unused = {*(unused or ()), "grpo"}
        if self.method == "full":  # no LoRA settings: the resolved recipe of a full run must load again
            unused = {*(unused or ()), "lora"}
        data = self.model_dump(mode="json", exclude=unused)
        if not data["training"]["report_to"]:  # likewise for a recipe that reports nowhere else
            del data["training"]["report_to"]
        if "lora" in data and data["lora"]["last_layers"] is None:  # and for an adapter on every layer
            del data["lora"]["last_layers"]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading


@dataclass
class _Layer:
    """One YAML file's contents with the line each key path was set on."""

    data: dict[str, Any]
    lines: dict[tuple[str, ...], str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the extends chain, the recipe it extends first


def builtin_recipe_dir() -> Path:
    return Path(str(resources.files("quicktune") / "recipes"))


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names mapped to their files, found recursively."""
    root = builtin_recipe_dir()
    return {p.stem: p for p in sorted(root.rglob("*.yaml"))}


def find_recipe_file(ref: str, relative_to: Path | None = None) -> Path:
    """A recipe reference is a path to a YAML file or a built-in recipe name."""
    candidate = Path(ref).expanduser()
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise RecipeError(f"recipe file not found: {candidate}")
        return candidate.resolve()
    builtins = builtin_recipes()
    if ref in builtins:
        return builtins[ref]
    close = difflib.get_close_matches(ref, builtins, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `quicktune recipes` to list the built-in ones"
    raise RecipeError(f"no recipe named {ref!r} and no such file", hint=hint)


def _yaml_layer(path: Path) -> _Layer:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a recipe must be a mapping of sections (model:, data:, ...)")
    layer = _Layer(data=data)
    duplicates: list[str] = []
    _collect_lines(node, (), path, layer.lines, duplicates)
    if duplicates:
        raise RecipeError(f"{path}: duplicate keys", problems=duplicates)
    return layer


def _collect_lines(node: Any, prefix: tuple[str, ...], path: Path, out: dict, duplicates: list[str]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        where = f"{path}:{key_node.start_mark.line + 1}"
        dotted = ".".join((*prefix, key))
        if key in seen:
            duplicates.append(f"{where}: {dotted}: key appears twice")
        seen.add(key)
        out[(*prefix, key)] = where
        _collect_lines(value_node, (*prefix, key), path, out, duplicates)


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make file paths in a layer absolute, relative to the file that named them."""
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("train", "eval"):
            value = section.get(key)
            if isinstance(value, str):
                section[key] = _absolute(value, base_dir)
            elif isinstance(value, list):
                section[key] = [_absolute(v, base_dir) if isinstance(v, str) else v for v in value]
        section["format"] = _absolute_keys(section.get("format"), base_dir)
        if section["format"] is None:
            del section["format"]
    grpo = data.get("grpo")
    rewards = grpo.get("rewards") if isinstance(grpo, dict) else None
    for reward in rewards if isinstance(rewards, list) else ():
        name = reward.get("name") if isinstance(reward, dict) else None
        file, colon, function = name.partition(":") if isinstance(name, str) else ("", "", "")
        if colon and file.endswith(".py"):  # your own reward: its file relative to the recipe that names it
            reward["name"] = f"{_absolute(file, base_dir)}:{function}"
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        base = model["base"]
        if base.startswith((".", "/", "~")):
            model["base"] = _absolute(base, base_dir)


def _absolute(value: str, base_dir: Path) -> str:
    if is_hub_ref(value):  # a Hub dataset, not a file
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _absolute_keys(formats: Any, base_dir: Path) -> Any:
    """``data.format: {file: format}`` names files the way data.train does: relative to the recipe."""
    if not isinstance(formats, dict):
        return formats
    return {_absolute(k, base_dir) if isinstance(k, str) else k: v for k, v in formats.items()}


# Values that replace, never merge with, what an extended recipe set: a file -> format
# mapping belongs to the files the recipe names.
_REPLACED = {("data", "format")}


def deep_merge(low: dict[str, Any], high: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``high`` over ``low``, as a new mapping: a mapping in both is merged key by key (except at the ``_REPLACED``
    key paths; ``path`` is where ``low`` and ``high`` sit in the recipe), any other value of ``high`` wins."""
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and (*path, key) not in _REPLACED:
            merged[key] = deep_merge(merged[key], value, (*path, key))
        else:
            merged[key] = value
    return merged


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> _Layer:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"recipes extend each other in a loop: {chain}")
    layer = _yaml_layer(path)
    _resolve_paths(layer.data, path.parent)
    layer.data.setdefault("name", path.stem)
    layer.files = [str(path)]
    parent_ref = layer.data.get("extends")
    if parent_ref is None:
        return layer
    if not isinstance(parent_ref, str):
        raise RecipeError(f"{layer.lines.get(('extends',), path)}: extends: expected a recipe name or path")
    try:
        parent_file = find_recipe_file(parent_ref, relative_to=path.parent)
    except RecipeError as exc:
        raise RecipeError(f"{layer.lines.get(('extends',), path)}: extends: {exc.message}", hint=exc.hint) from None
    parent = _load_chain(parent_file, (*seen, path))
    parent.data.pop("name", None)  # a child is never named after its parent
    return _Layer(data=deep_merge(parent.data, layer.data), lines={**parent.lines, **layer.lines},
                  files=[*parent.files, *layer.files])


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``training.max_steps=30`` -> (("training", "max_steps"), 30). Values are YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    keys = tuple(part.strip() for part in key.split("."))
    if not sep or not all(keys):
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, for example training.max_steps=30")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # "Be brief: answer in JSON" is text, not a mapping
    return keys, value


def _apply_override(data: dict[str, Any], keys: tuple[str, ...], value: Any, text: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        path = keys[: depth + 1]
        if key in _field_names(path[:-1]) and not _field_names(path):
            raise RecipeError(f"--set {text}: {'.'.join(path)} is a value, not a section")
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {text}: {'.'.join(path)} is a value, not a section")
        node = child
    node[keys[-1]] = value


def load_recipe(ref: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a built-in or file recipe, apply its ``extends`` chain and ``--set`` overrides."""
    path = find_recipe_file(ref)
    layer = _load_chain(path)
    for text in overrides:
        keys, value = parse_override(text)
        if keys[:1] == ("data",) and keys[1:2] in (("train",), ("eval",)):
            value = _absolute(value, Path.cwd()) if isinstance(value, str) else value
            if isinstance(value, list):
                value = [_absolute(v, Path.cwd()) if isinstance(v, str) else v for v in value]
        if keys == ("data", "format"):
            value = _absolute_keys(value, Path.cwd())
        _apply_override(layer.data, keys, value, text)
        layer.lines[keys] = f"--set {text}"
        for end in range(1, len(keys)):  # a section the flag made (--set typo.key=1) is the flag's too
            layer.lines.setdefault(keys[:end], f"--set {text}")
    notes = _settle_method(layer)
    recipe = validate_recipe(layer.data, lines=layer.lines, source=str(path))
    recipe._notes = notes
    return recipe


# Sections that take their defaults when set to null, and the sections a method makes moot.
_DEFAULTED_SECTIONS = ("lora", "training", "export", "preference", "grpo", "eval")
_MOOT_SECTIONS = {
    "lora": lambda method: method == "full",
    "preference": lambda method: method not in PREFERENCE_METHODS,
    "grpo": lambda method: method != "grpo",
}
# Single keys a method makes moot: grpo does not evaluate while it trains.
_MOOT_KEYS = {
    ("training", "eval_every"): lambda method: method == "grpo",
    ("training", "early_stopping_patience"): lambda method: method == "grpo",
}


def _settle_method(layer: _Layer) -> list[str]:
    """Keys that ``method`` makes moot and that were set below it (by a recipe it extends, the built-in recipe a
    --set method= overrides): left out, or (model.load_in_4bit) set by the method. What was set at the
    method's own level or above (the same file, a --set) stays, for validation to refuse. Returns the notes."""
    data, lines = layer.data, layer.lines
    method = data.get("method", "qlora")
    if not isinstance(method, str):
        return []
    level = _level(lines.get(("method",)), layer.files)
    said = f"method {method} ({_short_where(lines.get(('method',)))})"
    notes = []
    for section, moot in _MOOT_SECTIONS.items():
        values = data.get(section)
        if not moot(method) or not isinstance(values, dict):
            continue
        dropped = sorted(key for key in values if _level(lines.get((section, key)), layer.files) < level)
        for key in dropped:
            del values[key]
        if dropped:
            files = sorted({Path(lines[(section, key)].rpartition(":")[0]).name for key in dropped})
            notes.append(f"{said} makes {', '.join(f'{section}.{key}' for key in dropped)} (set in "
                         f"{', '.join(files)}) moot: left out")
        if dropped and not values:
            data.pop(section, None)
    for (section, key), moot in _MOOT_KEYS.items():
        values = data.get(section)
        where = lines.get((section, key))
        if moot(method) and isinstance(values, dict) and key in values and _level(where, layer.files) < level:
            del values[key]
            notes.append(f"{said} makes {section}.{key} (set in {Path(where.rpartition(':')[0]).name}) moot: left out")
    model = data.get("model")
    four_bit = model.get("load_in_4bit") if isinstance(model, dict) else None
    wanted = True if method == "qlora" else False if method not in ADAPTER_ON_EITHER_BASE else None
    if (four_bit is not None and wanted is not None and four_bit != wanted
            and _level(lines.get(("model", "load_in_4bit")), layer.files) < level):
        del model["load_in_4bit"]
        notes.append(f"{said} sets model.load_in_4bit: {str(wanted).lower()} "
                     f"({_short_where(lines.get(('model', 'load_in_4bit')))} set {str(four_bit).lower()})")
    return notes


def _level(where: str | None, files: list[str]) -> int:
    """How high a key's setting stands: -1 a default, then the extends chain from its root, then --set."""
    if where is None:
        return -1
    if where.startswith("--set "):
        return len(files)
    path = where.rpartition(":")[0]
    return files.index(path) if path in files else -1


def _short_where(where: str | None) -> str:
    if where is None:
        return "the default"
    if where.startswith("--set "):
        return where
    path, _, line = where.rpartition(":")
    return f"{Path(path).name}:{line}"


def with_added_train_files(ref: str, overrides: list[str], files: list[str]) -> list[str]:
    """``train --add-data FILE``: ``overrides`` and one more, ``data.train=[...]``, that lists the recipe's
    training files (after ``overrides``) and then ``files``; the resolved recipe.yaml of the run records
    them like any other key. A file that is missing or already in data.train is refused."""
    if not files:
        return list(overrides)
    recipe = load_recipe(ref, overrides)
    try:  # a Hub dataset (hf://OWNER/NAME?...) as data.train keeps it
        added = [hub_entry(name) if is_hub_ref(name) else _absolute(name, Path.cwd()) for name in files]
    except ValueError as exc:
        raise RecipeError(f"--add-data {exc}") from None
    for name, path in zip(files, added):
        if not is_hub_ref(path) and not Path(path).is_file():
            raise RecipeError(f"--add-data {name}: no such file")
        if path in recipe.data.train or added.count(path) > 1:
            raise RecipeError(f"--add-data {name}: already in data.train ({recipe.where(('data', 'train'))})",
                              hint="Each training file is read once: leave out --add-data for it.")
    return [*overrides, "data.train=" + json.dumps([*recipe.data.train, *added])]


def validate_recipe(data: dict[str, Any], *, lines: dict | None = None, source: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        found = [_describe(error, lines or {}, source) for error in exc.errors()]
        problems = [f"{where}: {text}" for where, text in sorted(found, key=lambda item: _line_order(item[0], source))]
        raise RecipeError(f"{source}: {len(problems)} problem(s) in the recipe", problems=problems) from None
    recipe._where, recipe._source = dict(lines or {}), source
    found = [(recipe.where(loc), f"{'.'.join(loc)}: {text}") for loc, text in _unhonoured_keys(recipe)]
    if found:
        problems = [f"{where}: {text}" for where, text in sorted(found, key=lambda item: _line_order(item[0], source))]
        raise RecipeError(f"{source}: {len(problems)} problem(s) in the recipe", problems=problems)
    return recipe


def _unhonoured_keys(recipe: Recipe) -> list[tuple[tuple[str, ...], str]]:
    """Keys that validate but that quicktune could not honour as written: refused, with the reason."""
    found = []
    if recipe.model.trust_remote_code:
        found.append((("model", "trust_remote_code"),
                      ("quicktune trains only architectures transformers ships, which llama.cpp can convert to GGUF; "
                       "a model that needs its own code could be trained but not exported: remove the key")))
    if recipe.model.revision is not None and _local_model(recipe.model.base):
        found.append((("model", "revision"),
                      (f"pins a commit of a hub model, and model.base ({recipe.model.base}) is a local file or "
                       "folder, which has no revisions: remove the key")))
    if recipe.training.early_stopping_patience and not (recipe.data.eval or recipe.data.eval_fraction):
        found.append((("training", "early_stopping_patience"),
                      ("stops training when the eval loss stops improving, and the recipe has no eval data: "
                       "set data.eval or data.eval_fraction, or remove the key")))
    if (recipe.training.gpus or 1) > 1 and recipe.method in ADAPTER_ON_EITHER_BASE:
        found.append((("training", "gpus"), (f"method {recipe.method} trains on one process; several processes "
                                             "(accelerate launch) train lora, qlora and full: remove the key")))
    if recipe.method != "full" and not recipe.lora.target_modules:
        found.append((("lora", "target_modules"), ("names no module, so the adapter would have nothing to train: "
                                                   "list the linear projections to adapt (q_proj, v_proj, ...)")))
    elif recipe.method != "full" and set(recipe.lora.target_modules) <= EMBEDDING_MODULES:
        found.append((("lora", "target_modules"),
                      (f"names only embedding layers ({', '.join(recipe.lora.target_modules)}); Unsloth trains those "
                       "in full, not with LoRA, and is then left with no module for the adapter (\"target_modules "
                       "empty\"): add the linear projections to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                       "up_proj, down_proj), or train every weight with method: full")))
    if recipe.method == "full":
        found.extend((("lora", key), ("method full trains every weight, so LoRA settings do nothing: remove the key "
                                      "(the section: --set lora=null), or train an adapter with method: lora"))
                     for key in sorted(recipe.lora.model_fields_set))
    return found


def reward_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a grpo reward (None when it can): a built-in, ``regex:PATTERN`` with a pattern
    that compiles, ``max_length:N`` with N a positive integer, or ``FILE.py:FUNCTION``. Whether the file and
    the function exist is checked before training (quicktune.rewards), where the recipe's folder is known."""
    import re

    kind, colon, argument = name.partition(":")
    if not colon:
        if name in BUILT_IN_REWARDS:
            return None
        close = difflib.get_close_matches(name, [*BUILT_IN_REWARDS, *(f"{k}:..." for k in ARGUMENT_REWARDS)], n=1)
        return (f"not a built-in reward{f' (did you mean {close[0]}?)' if close else ''}; built in: "
                f"{', '.join(BUILT_IN_REWARDS)}, regex:PATTERN, max_length:N; or your own as FILE.py:FUNCTION")
    if kind == "regex":
        try:
            re.compile(argument)
        except re.error as exc:
            return f"the pattern does not compile: {exc}"
        return None if argument else "regex: needs a pattern after the colon"
    if kind == "max_length":
        return None if argument.isdigit() and int(argument) > 0 else "max_length:N needs N, a count of characters > 0"
    if not kind.endswith(".py") or not argument.isidentifier():
        return "your own reward is FILE.py:FUNCTION (a Python file, relative to the recipe, and a function in it)"
    return None


def _local_model(base: str) -> bool:
    return base.startswith(("pkg://", "/", ".", "~")) or base.endswith(".gguf") or Path(base).expanduser().exists()


def check_data_files(recipe: Recipe) -> None:
    """Every data file the recipe names exists; else the recipe line (or --set) that named it is the error."""
    problems = [
        f"{recipe.where(('data', key))}: data.{key}: file not found: {path}"
        for key in ("train", "eval")
        for path in getattr(recipe.data, key)
        if not is_hub_ref(path) and not Path(path).is_file()
    ]
    hint = "Data paths are relative to the recipe file that names them."
    if len(problems) == 1:
        raise RecipeError(problems[0], hint=hint)
    if problems:
        raise RecipeError(f"{len(problems)} data files not found", problems=problems, hint=hint)


def _line_order(where: str, source: str) -> tuple[int, str, int]:
    """The recipe's own lines first, in file order; then the recipes it extends; then --set flags."""
    if where.startswith("--set "):
        return (2, "", 0)
    path, _, line = where.rpartition(":")
    if not line.isdigit():
        path, line = where, "0"
    return (0 if path == source else 1, path, int(line))


def _describe(error: dict[str, Any], lines: dict[tuple[str, ...], str], source: str) -> tuple[str, str]:
    loc = tuple(str(part) for part in error["loc"])
    where = source
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            where = lines[loc[:end]]
            break
    dotted = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
        choices = _field_names(loc[:-1])
        close = _suggest(loc[-1], choices)
        if close:
            message += f" (did you mean {'.'.join((*loc[:-1], close[0]))}?)"
        elif choices:
            message += f" (expected one of: {', '.join(choices)})"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
        if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
            message += f" (got {error['input']!r})"
    return where, f"{dotted}: {message}"


def _suggest(key: str, choices: list[str]) -> list[str]:
    """A close spelling, or the field whose initials the key is (lr -> learning_rate)."""
    initials = [c for c in choices if "_" in c and "".join(w[0] for w in c.split("_")) == key]
    return initials or difflib.get_close_matches(key, choices, n=1)


def _field_names(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields.get(part)
        sub = getattr(annotation, "annotation", None) if annotation else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return list(model.model_fields)


def split_batch(batch_size: int, grad_accumulation: int, processes: int) -> tuple[int, int]:
    """(rows per process per micro-batch, accumulation steps) that keep the global batch."""
    if processes == 1:
        return batch_size, grad_accumulation
    if grad_accumulation % processes == 0:
        return batch_size, grad_accumulation // processes
    if batch_size % processes == 0:
        return batch_size // processes, grad_accumulation
    raise QuicktuneError(
        f"training.batch_size x grad_accumulation = {batch_size} x {grad_accumulation} rows per step cannot be "
        f"split evenly over {processes} processes",
        hint=f"Make training.grad_accumulation or training.batch_size a multiple of {processes}.",
    )


def too_many_layers(recipe: Recipe, wanted: int, total: int) -> RecipeError:
    """The error for ``lora.last_layers`` above the base model's decoder layers (``total``), named at the
    recipe line (or --set) that set it: training and ``quicktune plan`` refuse it with the same words."""
    return RecipeError(
        f"{recipe.where(('lora', 'last_layers'))}: lora.last_layers is {wanted}, and {recipe.model.base} has "
        f"{total} decoder layers",
        hint=f"Set it to at most {total}, or remove it to put LoRA on every layer.",
    )
