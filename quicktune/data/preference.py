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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.data import quality
from quicktune.data.formats import LOOKS, Invalid, check_turns, detect_format, format_for, strip_message_edges
from quicktune.data.load import read_records
from quicktune.data.masking import IGNORE, Rendered, Tokenized, label_tokens
from quicktune.data.records import ROLES, Example, Message, Problems
from quicktune.data.report import (
    DataReport,
    FileSummary,
    PreparedData,
    RenderedExample,
    StopToken,
    pair_summaries,
    token_stats,
)
from quicktune.data.system_prompt import summarise, template_default
from quicktune.data.tokenizer import stop_token_ids
from quicktune.errors import DataError

MAX_LONG_SHOWN = 10


@dataclass(frozen=True, slots=True)
class PreferencePair:
    origin: str  # "path:line"
    prompt: tuple[Message, ...]  # ends with the user's message
    chosen: str
    rejected: str

    def conversation(self, answer: str) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.prompt] + [
            {"role": "assistant", "content": answer}
        ]

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


def _messages(value: Any, label: str) -> list[Message]:
    if not isinstance(value, list):
        raise Invalid(f"{label}: expected a string or a list of messages, got {type(value).__name__}")
    out = []
    for index, turn in enumerate(value):
        where = f"{label}[{index}]"
        if not isinstance(turn, dict):
            raise Invalid(f"{where}: expected an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role is None:
            raise Invalid(f"{where}.role: missing field")
        if role not in ROLES:
            raise Invalid(f"{where}.role: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if content is None:
            raise Invalid(f"{where}.content: missing field")
        if not isinstance(content, str):
            raise Invalid(f"{where}.content: expected a string, got {type(content).__name__}")
        out.append(Message(role, content))
    return out


def _answer(value: Any, label: str) -> str:
    """A completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        turns = _messages(value, label)
        if len(turns) != 1 or turns[0].role != "assistant":
            raise Invalid(f"{label}: expected one assistant message (the answer), got {len(turns)} message(s)"
                           + (f" starting with {turns[0].role}" if turns else ""))
        text = turns[0].content
    if not text.strip():
        raise Invalid(f"{label}: empty answer")
    return text


def parse_pair(value: Any, origin: str, system_prompt: str | None = None) -> PreferencePair:
    if not isinstance(value, dict):
        raise Invalid(f"expected a JSON object, got {type(value).__name__}")
    missing = [key for key in ("chosen", "rejected") if value.get(key) is None]
    if missing:
        raise Invalid(f"{missing[0]}: missing field")
    chosen, rejected = value["chosen"], value["rejected"]
    if value.get("prompt") is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) > 1):
            raise Invalid("prompt: missing field (or give chosen and rejected as whole conversations)")
        left, right = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if left[:-1] != right[:-1]:
            raise Invalid("chosen, rejected: the two conversations differ before their last message, "
                           "so they do not answer the same prompt")
        prompt = left[:-1]
        chosen, rejected = [chosen[-1]], [rejected[-1]]
    elif isinstance(value["prompt"], str):
        if not value["prompt"].strip():
            raise Invalid("prompt: empty")
        prompt = [Message("user", value["prompt"])]
    else:
        prompt = _messages(value["prompt"], "prompt")
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
    pairs: list[PreferencePair] = []
    summaries = []
    for path in paths:
        pinned = format_for(fmt, path)
        if pinned not in ("auto", "preference"):
            problems.add(path, f"data.format says {pinned}, but method dpo/orpo trains preference pairs")
            continue
        rows, seen = 0, False
        for raw in read_records(path):
            seen = True
            if raw.error is not None:
                problems.add(raw.origin, raw.error)
                continue
            try:
                pairs.append(parse_pair(raw.value, raw.origin, system_prompt))
                rows += 1
            except Invalid as exc:
                other = detect_format(raw.value)
                looks = f" — this record looks like {LOOKS[other]}" if other not in (None, "preference") else ""
                problems.add(raw.origin, f"{exc}{looks}")
                if looks:
                    problems.hint("Preference training needs prompt/chosen/rejected pairs (README, Preference "
                                  "training); conversations are trained with method: lora or qlora.")
        if not seen:
            problems.add(path, "no records found (the file is empty)")
        summaries.append(FileSummary(path, "preference", rows, split, "detected" if pinned == "auto" else "data.format"))
    return pairs, summaries


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
        prefix = tokenizer.render([{"role": m.role, "content": m.content} for m in pair.prompt],
                                  add_generation_prompt=True)
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
    examples, changed = strip_message_edges(
        [Example(p.origin, (*p.prompt, Message("assistant", p.chosen), Message("assistant", p.rejected))) for p in pairs]
    )
    out = [PreferencePair(p.origin, e.messages[:-2], e.messages[-2].content, e.messages[-1].content)
           for p, e in zip(pairs, examples)]
    return out, changed


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
    tokenizer=None,
    max_seq_length: int = 2048,
) -> PreparedPairs:
    """Load, check, de-duplicate, split and (with a tokenizer) tokenize preference pairs."""
    problems = Problems()
    loaded, files = load_pairs(list(train_paths), fmt, system_prompt, "train", problems)
    held, eval_files = load_pairs(list(eval_paths), fmt, system_prompt, "eval", problems)
    files += eval_files
    problems.raise_if_any(", ".join(Path(p).name for p in [*train_paths, *eval_paths]))
    warnings = []
    if tokenizer is not None and tokenizer.trims_messages():
        loaded, edged = _strip_edges(loaded)
        held, edged_eval = _strip_edges(held)
        if edged + edged_eval:
            warnings.append(f"{edged + edged_eval} message(s) start or end with whitespace, which the chat template "
                            "trims: quicktune strips it")

    if dedupe == "semantic":
        raise DataError("data.dedupe: semantic compares conversations; preference pairs are de-duplicated "
                        "exact or near (set data.dedupe: exact or near)")
    found = quality.find_duplicates([quality.normalise(_dedupe_key(p)) for p in loaded])
    exact, near = found.exact, found.near
    dropping = {"none": [], "exact": exact, "near": exact + near}[dedupe]
    train = [loaded[i] for i in quality.drop_duplicates(len(loaded), dropping)]
    removed = len(loaded) - len(train)
    if eval_fraction and not held:
        train, held = quality.hold_out(train, eval_fraction, seed)
    eval_source = "files" if eval_paths else (f"fraction {eval_fraction}" if eval_fraction else "none")
    leaks = quality.leakage_pairs([_prompt_key(p) for p in train], [_prompt_key(p) for p in held])
    if near and dedupe != "near":
        warnings.append(f"{len(near)} near-duplicate pair(s) kept; set data.dedupe: near to drop them")
    if leaks:
        warnings.append(f"{len(leaks)} eval pair(s) have the same or nearly the same prompt as a training pair: "
                        "held-out preference accuracy will overstate how well the model generalises")
    report = DataReport(
        files=files,
        train_rows=len(train),
        eval_rows=len(held),
        eval_source=eval_source,
        dedupe=dedupe,
        exact_duplicates=len(exact),
        near_duplicates=len(near),
        removed_duplicates=removed,
        duplicate_pairs=pair_summaries(exact + near, loaded, loaded),
        leakage=len(leaks),
        leakage_pairs=pair_summaries(leaks, train, held),
        warnings=warnings,
    )
    train_examples, eval_examples = [p.as_example() for p in train], [p.as_example() for p in held]
    report.system_prompt = summarise(
        train_examples,
        recipe_prompt=system_prompt,
        export_prompt=export_system,
        template_default=template_default(tokenizer) if tokenizer is not None and tokenizer.chat_template else None,
    )
    if report.system_prompt is not None and report.system_prompt.warning:
        report.warnings.append(report.system_prompt.warning)
    train_tokens = eval_tokens = None
    if tokenizer is not None:
        train_tokens, eval_tokens = tokenize_pairs(tokenizer, train), tokenize_pairs(tokenizer, held)
        _describe_pair_tokens(report, tokenizer, train_tokens, eval_tokens, max_seq_length)
    return PreparedPairs(train_examples, eval_examples, train_tokens, eval_tokens, report, train, held)


def _describe_pair_tokens(report: DataReport, tokenizer, train_tokens, eval_tokens, max_seq_length: int) -> None:
    stops = stop_token_ids(tokenizer)
    report.train_tokens = token_stats([_as_tokenized(p, max_seq_length) for p in train_tokens], max_seq_length, stops)
    report.eval_tokens = token_stats([_as_tokenized(p, max_seq_length) for p in eval_tokens], max_seq_length, stops)
    end = tokenizer.end_of_turn()
    report.stop = StopToken(end, tokenizer.token_id(end),
                            tokenizer.pad_id is not None and tokenizer.pad_id == tokenizer.eos_id)
    for split, tokenized in (("training", train_tokens), ("eval", eval_tokens)):
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
    if train_tokens:
        report.example = rendered_side(tokenizer, train_tokens[0], "chosen")
        report.example_rejected = rendered_side(tokenizer, train_tokens[0], "rejected")


def prepare_pairs_for_recipe(recipe, *, train_paths=(), eval_paths=(), tokenize: bool = True) -> PreparedPairs:
    from quicktune.data.tokenizer import load_chat_tokenizer

    section = recipe.data
    train_paths = list(train_paths or section.train)
    eval_paths = list(eval_paths or section.eval)
    tokenizer = None
    if tokenize:
        tokenizer = load_chat_tokenizer(recipe.model.base, chat_template=recipe.model.chat_template,
                                        revision=recipe.model.revision)
    return prepare_pairs(
        train_paths,
        eval_paths=eval_paths,
        eval_fraction=0.0 if eval_paths else section.eval_fraction,
        fmt=section.format,
        system_prompt=section.system_prompt,
        export_system=recipe.export.system,
        dedupe=section.dedupe,
        seed=recipe.training.seed,
        tokenizer=tokenizer,
        max_seq_length=recipe.model.max_seq_length,
    )
