"""Preference pairs for ``method: dpo`` and ``method: orpo``: read, checked, tokenized.

TRL's preference format, one pair per record:

- explicit prompt: ``{"prompt": ..., "chosen": ..., "rejected": ...}`` where the prompt is a string
  (one user message) or a message list ending with the user, and each answer is a string or a list
  holding one assistant message;
- implicit prompt: ``{"chosen": [...], "rejected": [...]}``, two whole conversations that share
  every message but the last (the assistant's answer).

Every broken record is reported as ``file:line: field: what is wrong`` (missing fields, an empty
answer, chosen equal to rejected, a prompt that does not end with the user), train and eval files
together, before anything is trained. Duplicates are dropped like conversation duplicates
(``data.dedupe``), leakage is a prompt of the eval pairs that a training pair has too.

Tokens are built here, as for SFT (``masking``): the chat template renders the prompt with the
generation prompt and each whole conversation; the answer is the text between the two up to and
including the end-of-turn token. The trainer gets ``prompt_ids``/``chosen_ids``/``rejected_ids``,
so TRL never re-renders or re-tokenizes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quicktune.data.formats import (
    LOOKS,
    TRL_TURNS,
    Invalid,
    check_turns,
    detect_format,
    format_for,
    parse_turns,
    require_dict,
    strip_message_edges,
)
from quicktune.data.load import read_records
from quicktune.data.masking import IGNORE, Rendered, Tokenized, label_tokens
from quicktune.data.pipeline import (
    Chosen,
    DataSettings,
    RowKind,
    Split,
    prepare_rows,
    recipe_tokenizer,
    select_rows,
    stop_token,
)
from quicktune.data.records import Example, Message, Problems, message_dicts
from quicktune.data.report import DataReport, FileSummary, PreparedData, RenderedExample, token_stats
from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.errors import DataError
from quicktune.recipe import Recipe

MAX_LONG_SHOWN = 10


@dataclass(frozen=True, slots=True)
class PreferencePair:
    origin: str  # "path:line"
    prompt: tuple[Message, ...]  # ends with the user's message
    chosen: str
    rejected: str

    def conversation(self, answer: str) -> list[dict[str, str]]:
        """The prompt answered with ``answer``, as the chat template renders it."""
        return message_dicts((*self.prompt, Message("assistant", answer)))

    def as_example(self) -> Example:
        """The prompt answered with the chosen answer: what task metrics and the export's checks use."""
        return Example(origin=self.origin, messages=(*self.prompt, Message("assistant", self.chosen)))


@dataclass(frozen=True, slots=True)
class TokenizedPair:
    origin: str
    prompt_ids: list[int]
    chosen_ids: list[int]  # the answer and its end-of-turn token
    rejected_ids: list[int]
    chosen: Rendered
    rejected: Rendered

    @property
    def full_length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def trained_tokens(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)

    def for_trainer(self) -> dict[str, list[int]]:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


@dataclass
class PreparedPairs(PreparedData):
    """``PreparedData`` whose rows are preference pairs: ``train``/``eval`` hold each prompt with its
    chosen answer (for task metrics, the system prompt and the export's held-out checks)."""

    train_pairs: list[PreferencePair] | None = None
    eval_pairs: list[PreferencePair] | None = None


def holds_pairs(path: str | Path) -> bool:
    """Whether a data file's first readable record is a preference pair."""
    for raw in read_records(path):
        if raw.error is None:
            return detect_format(raw.value) == "preference"
    return False


# --- parsing ----------------------------------------------------------------------------------------


def _turns(value: Any, label: str) -> list[Message]:
    """A list of messages in a pair (``formats.parse_turns``, as TRL spells them)."""
    return parse_turns(value, label, TRL_TURNS, expected="a string or a list of messages")


def _answer(value: Any, label: str) -> str:
    """A completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        turns = _turns(value, label)
        if len(turns) != 1 or turns[0].role != "assistant":
            raise Invalid(f"{label}: expected one assistant message (the answer), got {len(turns)} message(s)"
                           + (f" starting with {turns[0].role}" if turns else ""))
        text = turns[0].content
    if not text.strip():
        raise Invalid(f"{label}: empty answer")
    return text


def _prompt_and_answers(record: dict[str, Any]) -> tuple[list[Message], Any, Any]:
    """A pair's prompt messages, and its chosen and rejected answers as given (strings or lists):
    an explicit prompt, or the shared start of two whole conversations."""
    missing = [key for key in ("chosen", "rejected") if record.get(key) is None]
    if missing:
        raise Invalid(f"{missing[0]}: missing field")
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) > 1):
            raise Invalid("prompt: missing field (or give chosen and rejected as whole conversations)")
        left, right = _turns(chosen, "chosen"), _turns(rejected, "rejected")
        if left[:-1] != right[:-1]:
            raise Invalid("chosen, rejected: the two conversations differ before their last message, "
                           "so they do not answer the same prompt")
        return left[:-1], [chosen[-1]], [rejected[-1]]
    if isinstance(record["prompt"], str):
        if not record["prompt"].strip():
            raise Invalid("prompt: empty")
        return [Message("user", record["prompt"])], chosen, rejected
    return _turns(record["prompt"], "prompt"), chosen, rejected


def parse_pair(value: Any, origin: str, system_prompt: str | None = None) -> PreferencePair:
    """One record as a ``PreferencePair`` (the system prompt added where the prompt has none);
    the first problem is raised as ``Invalid``, naming its field."""
    prompt, chosen, rejected = _prompt_and_answers(require_dict(value))
    good, bad = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if good.strip() == bad.strip():
        raise Invalid("chosen, rejected: the same answer, so there is nothing to prefer")
    if system_prompt and (not prompt or prompt[0].role != "system"):
        prompt.insert(0, Message("system", system_prompt))
    check_turns([*prompt, Message("assistant", good)], "prompt")
    return PreferencePair(origin, tuple(prompt), good, bad)


def load_pairs(
    paths: list[str], fmt: str | dict[str, str], system_prompt: str | None, split: str, problems: Problems
) -> tuple[list[PreferencePair], list[FileSummary]]:
    """Every file's pairs, and one summary per file; broken records (and files pinned to another
    format) go into ``problems``."""
    pairs: list[PreferencePair] = []
    summaries = []
    for path in paths:
        pinned = format_for(fmt, path)
        if pinned not in ("auto", "preference"):
            problems.add(path, f"data.format says {pinned}, but method dpo/orpo trains preference pairs")
            continue
        rows = _read_pair_file(path, system_prompt, problems)
        pairs += rows
        summaries.append(
            FileSummary(path, "preference", len(rows), split, "detected" if pinned == "auto" else "data.format")
        )
    return pairs, summaries


def _read_pair_file(path: str, system_prompt: str | None, problems: Problems) -> list[PreferencePair]:
    """One file's pairs; each broken record goes into ``problems``, saying what it looks like instead."""
    pairs, seen = [], False
    for raw in read_records(path):
        seen = True
        if raw.error is not None:
            problems.add(raw.origin, raw.error)
            continue
        try:
            pairs.append(parse_pair(raw.value, raw.origin, system_prompt))
        except Invalid as exc:
            other = detect_format(raw.value)
            looks = f" — this record looks like {LOOKS[other]}" if other not in (None, "preference") else ""
            problems.add(raw.origin, f"{exc}{looks}")
            if looks:
                problems.hint("Preference training needs prompt/chosen/rejected pairs (README, Preference "
                              "training); conversations are trained with method: lora or qlora.")
    if not seen:
        problems.add(path, "no records found (the file is empty)")
    return pairs


# --- tokens -----------------------------------------------------------------------------------------


def _render_side(tokenizer, pair: PreferencePair, answer: str, prefix: str) -> Rendered:
    full = tokenizer.render(pair.conversation(answer))
    if not full.startswith(prefix):
        raise DataError(
            f"{pair.origin}: the chat template renders the prompt differently once it is answered, "
            "so the answer's tokens cannot be marked",
            hint="Set model.chat_template to a family template.",
        )
    end = len(full.rstrip())
    return Rendered(full[:end], ((len(prefix), end),))


def tokenize_pairs(tokenizer, pairs: list[PreferencePair]) -> list[TokenizedPair]:
    out = []
    for pair in pairs:
        prefix = tokenizer.render(message_dicts(pair.prompt), add_generation_prompt=True)
        sides = [_render_side(tokenizer, pair, answer, prefix) for answer in (pair.chosen, pair.rejected)]
        encodings = tokenizer.encode_batch([side.text for side in sides])
        starts = []
        for side, encoding in zip(sides, encodings):
            labels = label_tokens(encoding, side.spans)
            starts.append(next((i for i, label in enumerate(labels) if label != IGNORE), len(labels)))
        chosen_ids, rejected_ids = (e.ids for e in encodings)
        # Both sides tokenize the prompt alike unless a token merges across the answer's first character.
        start = min(*starts, _common_prefix(chosen_ids, rejected_ids))
        out.append(TokenizedPair(pair.origin, chosen_ids[:start], chosen_ids[start:], rejected_ids[start:], *sides))
    return out


def _common_prefix(one: list[int], two: list[int]) -> int:
    for index, (a, b) in enumerate(zip(one, two)):
        if a != b:
            return index
    return min(len(one), len(two))


def _as_tokenized(pair: TokenizedPair, max_seq_length: int) -> Tokenized:
    """The longer side of a pair as a training row, for the token statistics ``data check`` shows."""
    answer, rendered = (pair.chosen_ids, pair.chosen) if len(pair.chosen_ids) >= len(pair.rejected_ids) else (
        pair.rejected_ids, pair.rejected)
    ids = pair.prompt_ids + answer
    labels = [IGNORE] * len(pair.prompt_ids) + answer
    return Tokenized(ids[:max_seq_length], labels[:max_seq_length], rendered, len(ids))


def rendered_side(tokenizer, pair: TokenizedPair, side: str) -> RenderedExample:
    rendered = pair.chosen if side == "chosen" else pair.rejected
    (encoding,) = tokenizer.encode_batch([rendered.text])
    labels = label_tokens(encoding, rendered.spans)
    return RenderedExample(
        origin=f"{pair.origin}, {side}",
        text=rendered.text,
        trained_spans=list(rendered.spans),
        tokens=[(rendered.text[s:e], label != IGNORE) for (s, e), label in zip(encoding.offsets, labels)],
    )


# --- the one path from files to training pairs ------------------------------------------------------


def _dedupe_key(pair: PreferencePair) -> str:
    asked = "\n".join(m.content for m in pair.prompt if m.role != "system")
    return f"{asked}\n{pair.chosen}\n{pair.rejected}"


def _prompt_key(pair: PreferencePair) -> str:
    return "\n".join(m.content for m in pair.prompt if m.role == "user")


def _strip_edges(pairs: list[PreferencePair]) -> tuple[list[PreferencePair], int]:
    """The pairs with no whitespace at the edges of a message or answer, and how many changed."""
    examples, changed = strip_message_edges(
        [Example(p.origin, (*p.prompt, Message("assistant", p.chosen), Message("assistant", p.rejected)))
         for p in pairs]
    )
    out = [PreferencePair(p.origin, e.messages[:-2], e.messages[-2].content, e.messages[-1].content)
           for p, e in zip(pairs, examples)]
    return out, changed


class Pairs(RowKind):
    """Preference rows: prompt/chosen/rejected pairs, compared by prompt and both answers."""

    def read(self, paths, fmt, system_prompt, split, problems):
        return load_pairs(paths, fmt, system_prompt, split, problems)

    def strip_edges(self, rows):
        return _strip_edges(rows)

    def check_settings(self, settings: DataSettings) -> None:
        if settings.dedupe == "semantic":
            raise DataError("data.dedupe: semantic compares conversations; preference pairs are de-duplicated "
                            "exact or near (set data.dedupe: exact or near)")

    def select(self, loaded, evaluation, settings: DataSettings) -> Chosen:
        return select_rows(
            loaded, evaluation, settings.dedupe, None, settings.eval_fraction, settings.seed,
            dedupe_key=_dedupe_key, prompt_key=_prompt_key,
        )

    def warnings(self, chosen: Chosen, edged: int, settings: DataSettings) -> list[str]:
        warnings = []
        if edged:
            warnings.append(f"{edged} message(s) start or end with whitespace, which the chat template "
                            "trims: quicktune strips it")
        if chosen.near and settings.dedupe != "near":
            warnings.append(f"{len(chosen.near)} near-duplicate pair(s) kept; set data.dedupe: near to drop them")
        if chosen.leaks:
            warnings.append(f"{len(chosen.leaks)} eval pair(s) have the same or nearly the same prompt as a "
                            "training pair: held-out preference accuracy will overstate how well the model "
                            "generalises")
        return warnings

    def examples(self, rows: list[PreferencePair]) -> list[Example]:
        return [p.as_example() for p in rows]

    def tokenize(self, tokenizer, rows, settings: DataSettings) -> list[TokenizedPair]:
        return tokenize_pairs(tokenizer, rows)

    def describe_tokens(self, report, tokenizer, train, train_tokens, eval_tokens, max_seq_length) -> None:
        _describe_pair_tokens(report, tokenizer, train_tokens, eval_tokens, max_seq_length)

    def prepared(self, data: PreparedData, split: Split) -> PreparedPairs:
        return PreparedPairs(
            data.train, data.eval, data.train_tokens, data.eval_tokens, data.report, split.train, split.evaluation
        )


PAIRS = Pairs()


def prepare_pairs(
    train_paths: list[str],
    *,
    eval_paths: list[str] = (),
    eval_fraction: float = 0.0,
    fmt: str | dict[str, str] = "auto",
    system_prompt: str | None = None,
    export_system: str | None = None,
    dedupe: str = "exact",
    seed: int = 3407,
    tokenizer: ChatTokenizer | None = None,
    max_seq_length: int = 2048,
) -> PreparedPairs:
    """Load, check, de-duplicate, split and (with a tokenizer) tokenize preference pairs."""
    settings = DataSettings(
        train_paths=list(train_paths),
        eval_paths=list(eval_paths),
        eval_fraction=eval_fraction,
        fmt=fmt,
        system_prompt=system_prompt,
        export_system=export_system,
        dedupe=dedupe,
        seed=seed,
        max_seq_length=max_seq_length,
    )
    return prepare_rows(PAIRS, settings, tokenizer)


def _describe_pair_tokens(
    report: DataReport,
    tokenizer: ChatTokenizer,
    train_tokens: list[TokenizedPair],
    eval_tokens: list[TokenizedPair],
    max_seq_length: int,
) -> None:
    """Writes into ``report`` the token statistics (each pair's longer side), the stop token, warnings
    about pairs that will be cut, and the first training pair as rendered; raises for a pair with an
    answer of no tokens."""
    stops = stop_token_ids(tokenizer)
    report.train_tokens = token_stats([_as_tokenized(p, max_seq_length) for p in train_tokens], max_seq_length, stops)
    report.eval_tokens = token_stats([_as_tokenized(p, max_seq_length) for p in eval_tokens], max_seq_length, stops)
    report.stop = stop_token(tokenizer, tokenizer.end_of_turn())
    for split, tokenized in (("training", train_tokens), ("eval", eval_tokens)):
        _check_lengths(report, split, tokenized, max_seq_length)
    if train_tokens:
        report.example = rendered_side(tokenizer, train_tokens[0], "chosen")
        report.example_rejected = rendered_side(tokenizer, train_tokens[0], "rejected")


def _check_lengths(report: DataReport, split: str, tokenized: list[TokenizedPair], max_seq_length: int) -> None:
    """Warns (in ``report``) of one split's pairs longer than ``max_seq_length``; raises for a pair
    with an answer of no tokens."""
    long = [p for p in tokenized if p.full_length > max_seq_length]
    if long:
        shown = ", ".join(f"{p.origin} ({p.full_length})" for p in long[:MAX_LONG_SHOWN])
        more = f" and {len(long) - MAX_LONG_SHOWN} more" if len(long) > MAX_LONG_SHOWN else ""
        report.warnings.append(
            f"{len(long)} {split} pair(s) are longer than max_seq_length {max_seq_length} tokens and will be cut, "
            f"the answers compared without their ends: {shown}{more}"
        )
    no_answer = [p for p in tokenized if not p.chosen_ids or not p.rejected_ids]
    if no_answer:
        raise DataError(f"{len(no_answer)} {split} pair(s) have an answer with no tokens",
                        problems=[p.origin for p in no_answer[:MAX_LONG_SHOWN]])


def prepare_pairs_for_recipe(
    recipe: Recipe, *, train_paths: list[str] = (), eval_paths: list[str] = (), tokenize: bool = True
) -> PreparedPairs:
    """``prepare_pairs`` with a recipe's tokenizer and data settings; given files replace the recipe's."""
    tokenizer = recipe_tokenizer(recipe) if tokenize else None
    # pairs are compared by their text only: data.semantic_threshold is not theirs
    settings = replace(DataSettings.from_recipe(recipe, train_paths, eval_paths), semantic_threshold=None)
    return prepare_rows(PAIRS, settings, tokenizer)
