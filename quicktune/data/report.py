"""What ``data check`` finds, as plain data: the report types that ``prepare`` fills for SFT and
preference rows alike, and ``console`` prints. No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quicktune.data.instruction import SharedInstruction
from quicktune.data.masking import IGNORE, Tokenized
from quicktune.data.records import Example
from quicktune.data.system_prompt import SystemPrompts

MAX_PAIRS_SHOWN = 10


@dataclass
class FileSummary:
    path: str
    format: str
    rows: int
    split: str = "train"  # or "eval"
    format_from: str = "detected"  # or "data.format" when the recipe pins it


@dataclass
class PairSummary:
    first: str  # origin "file:line"
    second: str
    similarity: float


def pair_summaries(pairs, first: list, second: list) -> list[PairSummary]:
    """The first MAX_PAIRS_SHOWN pairs as file:line origins: ``pair.first`` indexes ``first``,
    ``pair.second`` indexes ``second`` (rows with an ``origin``)."""
    return [PairSummary(first[p.first].origin, second[p.second].origin, round(p.similarity, 3))
            for p in pairs[:MAX_PAIRS_SHOWN]]


@dataclass
class TokenStats:
    max_seq_length: int
    rows: int
    total_tokens: int
    trained_tokens: int
    min: int
    mean: float
    p50: int
    p95: int
    max: int
    truncated_rows: int
    rows_without_stop: int  # last trained token is not an end-of-turn/eos token


@dataclass
class StopToken:
    text: str
    id: int | None
    pad_equals_eos: bool


@dataclass
class RenderedExample:
    origin: str
    text: str
    trained_spans: list[tuple[int, int]]
    tokens: list[tuple[str, bool]]  # (token text, trained?)


@dataclass
class DataReport:
    files: list[FileSummary]
    train_rows: int
    eval_rows: int
    eval_source: str  # "files", "fraction 0.1", or "none"
    dedupe: str
    exact_duplicates: int
    near_duplicates: int
    removed_duplicates: int
    duplicate_pairs: list[PairSummary]
    leakage: int
    leakage_pairs: list[PairSummary]
    semantic_threshold: float | None = None  # None: the semantic check was off
    semantic_duplicates: int = 0  # pairs not already exact or 5-gram duplicates
    semantic_pairs: list[PairSummary] = field(default_factory=list)
    semantic_leakage: int = 0  # eval rows whose prompt means the same as a train prompt (not already leakage)
    semantic_leakage_pairs: list[PairSummary] = field(default_factory=list)
    semantic_embeddings: str | None = None
    train_tokens: TokenStats | None = None
    eval_tokens: TokenStats | None = None
    system_prompt: SystemPrompts | None = None
    shared_instruction: SharedInstruction | None = None  # the instruction most rows share (data.shared_instruction)
    stop: StopToken | None = None
    example: RenderedExample | None = None
    example_rejected: RenderedExample | None = None  # preference pairs: the rejected side of the example
    warnings: list[str] = field(default_factory=list)
    rewards: dict[str, float | None] | None = None  # grpo: each reward's mean on the reference answers
    reward_rows: int = 0  # grpo: the reference answers the rewards were tried on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    train_tokens: list[Tokenized] | None
    eval_tokens: list[Tokenized] | None
    report: DataReport


def token_stats(tokenized: list[Tokenized], max_seq_length: int, stops: set[int]) -> TokenStats | None:
    if not tokenized:
        return None
    lengths = np.array([t.full_length for t in tokenized])
    return TokenStats(
        max_seq_length=max_seq_length,
        rows=len(tokenized),
        total_tokens=int(sum(len(t.input_ids) for t in tokenized)),
        trained_tokens=int(sum(t.trained_tokens for t in tokenized)),
        min=int(lengths.min()),
        mean=round(float(lengths.mean()), 1),
        p50=int(np.percentile(lengths, 50)),
        p95=int(np.percentile(lengths, 95)),
        max=int(lengths.max()),
        truncated_rows=sum(t.truncated for t in tokenized),
        rows_without_stop=sum(last_trained(t) not in stops for t in tokenized),
    )


def last_trained(tokenized: Tokenized) -> int | None:
    for label in reversed(tokenized.labels):
        if label != IGNORE:
            return label
    return None
