"""Datasets from the Hugging Face Hub as data.train / data.eval entries: how a recipe names one.

Two spellings, one meaning:

- a string, ``hf://OWNER/NAME`` with options as a query:
  ``hf://OWNER/NAME?subset=en&split=train&limit=2000&columns=question:instruction,answer:output``;
- a mapping in the list: ``{hf: OWNER/NAME, split: train, limit: 2000, columns: {question: instruction}}``.

The recipe keeps the string (``HubDataset.ref``: the options in one fixed order), so every data
command, ``--set data.train=hf://...`` and the resolved recipe.yaml of a run read the same text.
Pure: what the Hub holds is read in ``quicktune.data.hub``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PREFIX = "hf://"
# The record fields quicktune's formats read (quicktune.data.formats, quicktune.data.preference).
COLUMN_NAMES = ("messages", "conversations", "instruction", "input", "output", "system", "text", "prompt",
                "chosen", "rejected")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED = ",:&=?#%"  # they separate the options of an hf:// string
_QUERY_KEYS = ("subset", "split", "revision", "limit", "sample", "seed", "columns")


def is_hub_ref(entry: Any) -> bool:
    """Whether a data.train / data.eval entry names a Hub dataset (``hf://...``) rather than a file."""
    return isinstance(entry, str) and entry.startswith(PREFIX)


class HubDataset(BaseModel):
    """One Hub dataset entry: which rows of which split of which dataset, and what its columns are called."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hf: str = Field(description="The dataset's id on the Hub, OWNER/NAME.")
    subset: str | None = Field(None, min_length=1, description="The dataset's configuration (load_dataset's name).")
    split: str = Field("train", min_length=1, description="The split to read (train, test, ...).")
    revision: str | None = Field(None, min_length=1, description="A commit sha, branch or tag; default: main.")
    limit: int | None = Field(None, gt=0, description="Read the first N rows of the split only.")
    sample: int | None = Field(None, gt=0, description="N rows drawn at random (seed) from the rows read.")
    seed: int | None = Field(None, ge=0, description="Picks the rows of sample (default 0).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="The dataset's column -> the field quicktune reads, for columns not named as quicktune's "
        "formats name them (question: instruction, answer: output); a renamed column replaces the dataset's own "
        "column of that name, and the other columns stay as they are.",
    )

    @field_validator("hf")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        value = value.removeprefix(PREFIX).removeprefix("datasets/")
        if not _REPO.match(value):
            raise ValueError(f"{value!r} is not a Hub dataset id: expected OWNER/NAME, e.g. yahma/alpaca-cleaned")
        return value

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        problems = [f"{source}: {target!r} is not a field quicktune reads ({', '.join(COLUMN_NAMES)})"
                    for source, target in value.items() if target not in COLUMN_NAMES]
        targets = list(value.values())
        problems += [f"{target}: named by more than one column" for target in sorted(set(targets))
                     if targets.count(target) > 1]
        problems += [f"{source!r}: a column name quicktune can write in an hf:// entry has none of {_RESERVED!r}"
                     for source in value if not str(source).strip() or set(str(source)) & set(_RESERVED)]
        if problems:
            raise ValueError("; ".join(problems))
        return {str(k): v for k, v in value.items()}

    @model_validator(mode="after")
    def _seed_needs_sample(self) -> HubDataset:
        if self.seed is not None and self.sample is None:
            raise ValueError("seed picks the rows of sample; without sample it does nothing: remove it or set sample")
        if self.sample is not None and self.limit is not None and self.sample > self.limit:
            raise ValueError(f"sample {self.sample} is more rows than limit {self.limit} reads")
        return self

    def ref(self) -> str:
        """The entry as the recipe keeps it: ``hf://OWNER/NAME`` and its options in one fixed order."""
        query = []
        for key in _QUERY_KEYS:
            value = getattr(self, key)
            if key == "columns":
                value = ",".join(f"{k}:{v}" for k, v in value.items()) or None
            elif key == "split" and value == "train":
                value = None
            if value is not None:
                query.append(f"{key}={quote(str(value), safe='') if key != 'columns' else value}")
        return PREFIX + self.hf + ("?" + "&".join(query) if query else "")

    def label(self) -> str:
        """How a row's origin names the dataset: ``hf://OWNER/NAME[train]`` (``[SUBSET/train]`` with a subset)."""
        where = f"{self.subset}/{self.split}" if self.subset else self.split
        return f"{PREFIX}{self.hf}[{where}]"


def parse_hub_ref(text: str) -> HubDataset:
    """An ``hf://OWNER/NAME?key=value&...`` string as a ``HubDataset``; ValueError saying what is wrong."""
    if not is_hub_ref(text):
        raise ValueError(f"{text!r} does not start with {PREFIX}")
    repo, _, query = text[len(PREFIX):].partition("?")
    fields: dict[str, Any] = {"hf": repo}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else ():
        if key not in _QUERY_KEYS:
            raise ValueError(f"{text}: unknown option {key!r}; expected {', '.join(_QUERY_KEYS)}")
        if key in fields:
            raise ValueError(f"{text}: option {key!r} given twice")
        if key == "columns":
            pairs = [item.partition(":") for item in value.split(",") if item]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"{text}: columns is COLUMN:FIELD,COLUMN:FIELD (e.g. question:instruction)")
            fields[key] = {k: v for k, _, v in pairs}
        else:
            fields[key] = value
    return _validated(fields, text)


def hub_entry(value: Any) -> Any:
    """A data.train / data.eval entry as the recipe keeps it: a mapping ``{hf: ...}`` or an ``hf://`` string
    becomes the canonical string (ValueError saying what is wrong); anything else is returned as it is."""
    if isinstance(value, dict):
        if "hf" not in value:
            raise ValueError(f"a Hub dataset entry needs hf: OWNER/NAME (got keys {', '.join(map(str, value))}); "
                             "a file is written as its path")
        return _validated(value, f"hf: {value.get('hf')}").ref()
    if is_hub_ref(value):
        return parse_hub_ref(value).ref()
    return value


def _validated(fields: dict[str, Any], what: str) -> HubDataset:
    try:
        return HubDataset.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                message = f"unknown option; expected one of {', '.join(HubDataset.model_fields)}"
            elif error["type"] == "value_error":
                message = str(error["ctx"]["error"])
            else:
                message = error["msg"]
            problems.append(f"{loc}: {message}" if loc else message)
        raise ValueError(f"{what}: " + "; ".join(problems)) from None
