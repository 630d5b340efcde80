"""The data half of ``quicktune data synth``: the seed rows, a model's reply read as one row, and the check
every new row passes before it is kept. No HTTP here: ``quicktune.synth`` talks to the server.

A reply is kept when it

1. holds a JSON object (``extract_json``: the whole reply, a fenced block, or the first object in the
   text), else it is rejected as ``not parseable``;
2. parses as the seed file's format (``formats.normalise``, the parser ``data check`` uses), else ``format``;
3. fits: with a recipe, its tokens (chat template and ``data.system_prompt`` included) fit
   ``model.max_seq_length`` (``masking.tokenize_examples``, as ``data check -r`` counts them); without
   one, its text is at most ``MAX_CHARS`` characters; else ``too long``;
4. is neither the same text (``duplicate``) nor nearly the same (``near duplicate``, 5-gram Jaccard
   >= ``quality.NEAR_THRESHOLD``) as a seed, a training row, a row already in the output, or a row
   kept earlier in this run (``quality.leakage_pairs`` on ``quality.dialogue_text``, what ``data check``
   de-duplicates on);
5. does not ask what an eval row asks (``leaks eval``: ``quality.leakage_pairs`` on the prompts, the
   train/eval leakage check of ``data check``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune.data import quality
from quicktune.data.formats import detect_format, format_for, normalise
from quicktune.data.load import RawRecord, read_records
from quicktune.data.masking import tokenize_examples
from quicktune.data.records import Example, Problems
from quicktune.data.system_prompt import system_of
from quicktune.data.tokenizer import ChatTokenizer
from quicktune.errors import DataError

MAX_CHARS = 8192  # without a recipe: 2048 tokens (the default max_seq_length) at about 4 characters a token
REASONS = ("not parseable", "format", "too long", "duplicate", "near duplicate", "leaks eval")
FORMAT_KEYS = {  # what a new row holds: the format's own keys (a seed's other keys are not reproduced)
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output"),
    "text": ("text",),
}
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


# --- the seeds --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeds:
    """The seed file's rows: as written (``records``) and as examples, in one format."""

    path: Path
    fmt: str
    records: list[dict[str, Any]]
    examples: list[Example]

    def system(self, index: int) -> str | None:
        """The system prompt of seed ``index`` (None when it has none)."""
        return system_of(self.examples[index])


def read_seeds(path: str | Path, fmt: str | dict[str, str] = "auto") -> Seeds:
    """Reads and checks the seed file; every broken line is raised at once as a ``DataError`` naming
    file, line and field. Preference pairs are refused (synth writes conversations)."""
    path = Path(path)
    records = list(read_records(path))
    first = next((r.value for r in records if r.error is None), None)
    if detect_format(first) == "preference":
        raise DataError(f"{path}: holds preference pairs (prompt/chosen/rejected); data synth writes conversations",
                        hint="Give a file of conversations (messages, sharegpt, alpaca or text) as the seeds.")
    problems = Problems()
    detected, examples = normalise(records, format_for(fmt, path), problems, source=str(path))
    problems.raise_if_any(path.name)
    return Seeds(path, detected, [r.value for r in records], examples)


def read_rows(path: Path, fmt: str, system_prompt: str | None = None) -> list[Example]:
    """The rows of a file that must be in ``fmt`` (the output being resumed); a ``DataError`` names each
    broken line."""
    problems = Problems()
    _, examples = normalise(read_records(path), fmt, problems, source=str(path), system_prompt=system_prompt)
    if problems.items == [f"{path}: no records found (the file is empty)"]:
        return []
    problems.hint(f"{path.name} should hold only rows data synth wrote, in the seeds' format ({fmt}).")
    problems.raise_if_any(path.name)
    return examples


def without_system(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A seed row as a prompt shows it: the format's own keys, its system prompt left out."""
    row = {key: record[key] for key in FORMAT_KEYS[fmt] if key in record}
    if fmt == "messages" and isinstance(row.get("messages"), list):
        row["messages"] = [t for t in row["messages"] if not (isinstance(t, dict) and t.get("role") == "system")]
    if fmt == "sharegpt" and isinstance(row.get("conversations"), list):
        row["conversations"] = [t for t in row["conversations"]
                                if not (isinstance(t, dict) and str(t.get("from", "")).lower() == "system")]
    return row


def with_system(row: dict[str, Any], fmt: str, system: str | None, like: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a model's new row) with the format's keys only, any system prompt it made up removed, and
    ``system`` (the seeds') put where the seed ``like`` keeps it. A row without any of the format's keys
    is left as it is, for the format check to say what it looks like instead."""
    if not any(key in row for key in FORMAT_KEYS[fmt]):
        return row
    row = without_system(row, fmt)
    if not system or fmt == "text":
        return row
    if fmt == "messages" and isinstance(row.get("messages"), list):
        row["messages"] = [{"role": "system", "content": system}, *row["messages"]]
    elif fmt == "sharegpt" and isinstance(row.get("conversations"), list) and not like.get("system"):
        row["conversations"] = [{"from": "system", "value": system}, *row["conversations"]]
    elif fmt in ("sharegpt", "alpaca"):
        row = {**row, "system": system}
    return row


# --- a reply as a row ---------------------------------------------------------------------------------------


def extract_json(text: str) -> dict[str, Any] | None:
    """The JSON object in a model's reply: the whole reply, a ```json fenced block, or the first object
    in the text that reads as a data row (else the first object); None when there is none."""
    for candidate in (text.strip(), *(m.strip() for m in _FENCE.findall(text))):
        value = _loads(candidate)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    first = None
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and detect_format(value) is not None:
            return value
        first = first if first is not None else value
    return first if isinstance(first, dict) else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# --- the check ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the check made of one new row: kept (``reason`` None) or rejected for ``reason`` (one of
    ``REASONS``), ``detail`` saying what exactly; ``example`` is the row once it parsed."""

    reason: str | None
    detail: str = ""
    example: Example | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass
class LengthLimit:
    """The longest row kept: tokens under a recipe's tokenizer, else ``MAX_CHARS`` characters."""

    tokenizer: ChatTokenizer | None = None
    max_seq_length: int = 2048
    responses_only: bool = True

    def describe(self) -> str:
        if self.tokenizer is None:
            return f"{MAX_CHARS} characters (no --recipe)"
        return f"{self.max_seq_length} tokens (the recipe's model.max_seq_length)"

    def excess(self, example: Example) -> str | None:
        """Why ``example`` is too long, or None when it fits."""
        if self.tokenizer is None:
            chars = len(example.text) if example.text is not None else sum(len(m.content) for m in example.messages)
            return f"{chars} characters > {MAX_CHARS} (no --recipe to count tokens)" if chars > MAX_CHARS else None
        (tokens,) = tokenize_examples(self.tokenizer, [example], max_length=self.max_seq_length,
                                      responses_only=self.responses_only)
        if tokens.truncated:
            return f"{tokens.full_length} tokens > max_seq_length {self.max_seq_length}"
        return None


@dataclass
class RowCheck:
    """Checks new rows against everything known: ``pool`` (seeds, training rows, rows kept) for
    duplicates, ``evaluation`` for leakage. ``add`` puts a kept row into the pool."""

    fmt: str
    length: LengthLimit
    evaluation: list[Example] = field(default_factory=list)
    system_prompt: str | None = None  # data.system_prompt: what training adds to a row without one
    pool: list[Example] = field(default_factory=list)
    _texts: list[str] = field(default_factory=list, repr=False)
    _eval_prompts: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._texts = [quality.dialogue_text(e) for e in self.pool]
        self._eval_prompts = [quality.prompt_text(e) for e in self.evaluation]

    def add(self, examples: list[Example]) -> None:
        self.pool += examples
        self._texts += [quality.dialogue_text(e) for e in examples]

    def check(self, reply: str, row: dict[str, Any] | None, origin: str) -> Verdict:
        """The verdict on one new row: ``row`` is what ``extract_json`` (and ``with_system``) made of
        ``reply``, None when it found no JSON object."""
        if row is None:
            return Verdict("not parseable", _snippet(reply) or "an empty reply")
        problems = Problems()
        _, parsed = normalise([RawRecord(origin, row)], self.fmt, problems, source=origin,
                              system_prompt=self.system_prompt)
        if problems:
            return Verdict("format", problems.items[0].removeprefix(f"{origin}: "))
        (example,) = parsed
        too_long = self.length.excess(example)
        if too_long:
            return Verdict("too long", too_long, example)
        return self._duplicate(example) or self._leak(example) or Verdict(None, "", example)

    def _duplicate(self, example: Example) -> Verdict | None:
        text = quality.dialogue_text(example)
        pairs = quality.leakage_pairs(self._texts, [text])
        if not pairs:
            return None
        best = max(pairs, key=lambda p: p.similarity)
        other = self.pool[best.first]
        if quality.normalise(self._texts[best.first]) == quality.normalise(text):
            return Verdict("duplicate", f"the same as {other.origin}", example)
        return Verdict("near duplicate", f"{best.similarity:.2f} like {other.origin}", example)

    def _leak(self, example: Example) -> Verdict | None:
        pairs = quality.leakage_pairs([quality.prompt_text(example)], self._eval_prompts)
        if not pairs:
            return None
        best = max(pairs, key=lambda p: p.similarity)
        return Verdict("leaks eval", f"asks what {self.evaluation[best.second].origin} asks "
                       f"({best.similarity:.2f})", example)


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


# --- what a run did -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """One rejected row: its row number, the reason (one of ``REASONS``) and the detail."""

    row: int
    reason: str
    detail: str


@dataclass
class SynthSummary:
    """What one ``data synth`` run did, for the summary table: rows kept and rejected this run, the
    totals in the files, and the time it took."""

    output: Path
    rejected_file: Path
    lineage_file: Path
    wanted: int
    accepted: int = 0  # this run
    rejections: list[Rejection] = field(default_factory=list)  # this run
    total_rows: int = 0  # in the output, earlier runs included
    total_rejected: int = 0
    seconds: float = 0.0
    status: str = "running"  # finished, interrupted, failed, out of tries
    notes: list[str] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return self.accepted + len(self.rejections)

    def per_minute(self, rows: int) -> float:
        return rows * 60.0 / self.seconds if self.seconds > 0 else 0.0

    def reason_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(REASONS, 0)
        for rejection in self.rejections:
            counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
        return {reason: count for reason, count in counts.items() if count}
