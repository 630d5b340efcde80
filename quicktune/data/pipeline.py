"""The one path from data files to checked, de-duplicated, split and tokenized rows, with the
``DataReport`` of what was found: SFT conversations (``check.prepare``) and preference pairs
(``preference.prepare_pairs``) go through the same steps.

``prepare_rows`` runs them top to bottom:

1. ``read_splits``: every train and eval file read and checked, every broken line raised at once;
2. ``strip_edges``: whitespace the chat template trims, stripped, so training sees what it renders;
   ``share_instruction``: the instruction most rows share, found (and moved into the system turn
   under data.shared_instruction: system, quicktune.data.instruction);
3. ``choose_rows``: duplicates, the rows kept, the held-out split and leakage (``select_rows``),
   searched in a forked child on large data while this process tokenizes every row;
4. ``report_rows``: the counts and pairs found, with the row kind's warnings;
5. ``report_system_prompt``: the system prompt training renders and serving sends;
6. ``tokens_of``: the chosen rows' tokens, which the row kind then describes.

What differs between the two kinds of row (how a file is read, which text is compared, how a
row is tokenized and described) is a ``RowKind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.data import quality
from quicktune.data.instruction import SharedInstruction, describe
from quicktune.data.records import Example, Problems
from quicktune.data.report import DataReport, FileSummary, PreparedData, StopToken, pair_summaries
from quicktune.data.semantic import PromptVectors, similar_pairs
from quicktune.data.system_prompt import summarise, template_default
from quicktune.data.tokenizer import ChatTokenizer, load_chat_tokenizer
from quicktune.errors import DataError
from quicktune.forked import Forked
from quicktune.ollama_rules import describe_characters, dropped_characters
from quicktune.recipe import Recipe


@dataclass(frozen=True)
class DataSettings:
    """What ``prepare`` is asked to do: a recipe's data settings, or the defaults without one."""

    train_paths: Sequence[str]
    eval_paths: Sequence[str] = ()
    eval_fraction: float = 0.0  # held out of the train rows when there are no eval files
    fmt: str | dict[str, str] = "auto"  # data.format: one name, or a mapping of file to format
    system_prompt: str | None = None  # data.system_prompt: added to rows without one
    export_system: str | None = None  # export.system: what serving sends instead
    dedupe: str = "exact"  # none, exact, near or semantic
    semantic_threshold: float | None = None  # None: the semantic check is off
    seed: int = 3407  # picks the held-out rows
    max_seq_length: int = 2048
    responses_only: bool = True  # SFT: train on the assistant's turns only
    shared_instruction: str = "keep"  # keep, or system: move the instruction most rows share there

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, train_paths: Sequence[str] = (), eval_paths: Sequence[str] = ()
    ) -> DataSettings:
        """A recipe's settings; files given here replace the recipe's (eval files: no eval fraction)."""
        section = recipe.data
        eval_paths = list(eval_paths or section.eval)
        return cls(
            train_paths=list(train_paths or section.train),
            eval_paths=eval_paths,
            eval_fraction=0.0 if eval_paths else section.eval_fraction,
            fmt=section.format,
            system_prompt=section.system_prompt,
            export_system=recipe.export.system,
            dedupe=section.dedupe,
            semantic_threshold=section.semantic_threshold,
            seed=recipe.training.seed,
            max_seq_length=recipe.model.max_seq_length,
            responses_only=section.train_on_responses_only,
            shared_instruction=section.shared_instruction,
        )

    @property
    def eval_source(self) -> str:
        """Where the eval rows come from, as the report says it: "files", "fraction 0.1" or "none"."""
        if self.eval_paths:
            return "files"
        return f"fraction {self.eval_fraction}" if self.eval_fraction else "none"


def recipe_tokenizer(recipe: Recipe) -> ChatTokenizer:
    """The tokenizer (and chat template) of a recipe's base model."""
    model = recipe.model
    return load_chat_tokenizer(model.base, chat_template=model.chat_template, revision=model.revision)


# --- which rows stay --------------------------------------------------------------------------------


@dataclass
class Chosen:
    """What ``select_rows`` decides: pairs as ``quality.Pair`` (duplicates index the loaded rows,
    leaks the chosen train and eval rows), and the rows kept, as indices into the loaded rows."""

    exact: list[quality.Pair]
    near: list[quality.Pair]
    semantic: list[quality.Pair]
    train: list[int]
    held: list[int] | None  # eval rows held out of the loaded ones (data.eval_fraction); None: the eval files
    leaks: list[quality.Pair]
    semantic_leaks: list[quality.Pair]
    embeddings: str | None  # the semantic check's embeddings, None when it is off


def select_rows(
    loaded: list,
    evaluation: list,
    dedupe: str,
    semantic_threshold: float | None,
    eval_fraction: float,
    seed: int,
    *,
    dedupe_key: Callable[[Any], str] = quality.dialogue_text,
    prompt_key: Callable[[Any], str] = quality.prompt_text,
) -> Chosen:
    """Duplicates (exact, 5-gram, and by meaning when ``semantic_threshold`` is set), the rows kept
    under ``dedupe``, the held-out split, and the eval rows whose prompt leaks from train.

    Rows are compared by ``dedupe_key`` (what is learnt) and leak by ``prompt_key`` (what is asked)."""
    found = quality.find_duplicates([quality.normalise(dedupe_key(e)) for e in loaded])
    exact, near, unique = found.exact, found.near, found.unique
    semantic: list[quality.Pair] = []
    prompts = None
    if semantic_threshold is not None:  # rows that ask the same thing in other words
        prompts = PromptVectors(loaded, prompt_key)
        known = {(p.first, p.second) for p in near}
        semantic = [
            quality.Pair(unique[p.first], unique[p.second], p.similarity)
            for p in similar_pairs(prompts.rows(unique), semantic_threshold)
            if (unique[p.first], unique[p.second]) not in known
        ]
    dropping = {"none": [], "exact": exact, "near": exact + near, "semantic": exact + near + semantic}[dedupe]
    kept = quality.drop_duplicates(len(loaded), dropping)
    held = None
    if eval_fraction and not evaluation:
        kept, held = quality.hold_out(kept, eval_fraction, seed)
        evaluation = [loaded[i] for i in held]
    train = [loaded[i] for i in kept]
    leaks = quality.leakage_pairs([prompt_key(e) for e in train], [prompt_key(e) for e in evaluation])
    semantic_leaks: list[quality.Pair] = []
    if prompts is not None and train and evaluation:
        known = {(p.first, p.second) for p in leaks}
        vectors = np.concatenate([prompts.of(train), prompts.of(evaluation)])
        semantic_leaks = [
            quality.Pair(p.first, p.second - len(train), p.similarity)
            for p in similar_pairs(vectors, semantic_threshold, split=len(train))
            if (p.first, p.second - len(train)) not in known
        ]
    return Chosen(exact, near, semantic, kept, held, leaks, semantic_leaks, prompts.name if prompts else None)


# --- what differs between conversations and preference pairs ----------------------------------------


class RowKind(ABC):
    """The per-method part of ``prepare_rows``: one instance for SFT conversations (``check``), one
    for preference pairs (``preference``)."""

    warns_of_ollama_drops = False  # whether the served system prompt is checked against Ollama's parser

    @abstractmethod
    def read(
        self, paths: list[str], fmt: str | dict[str, str], system_prompt: str | None, split: str, problems: Problems
    ) -> tuple[list, list[FileSummary]]:
        """Every file's rows, and one summary per file; broken records go into ``problems``."""

    @abstractmethod
    def strip_edges(self, rows: list) -> tuple[list, int]:
        """The rows with no whitespace at the edges of a message, and how many messages changed."""

    @abstractmethod
    def check_settings(self, settings: DataSettings) -> None:
        """Refuses settings this kind of row cannot follow (a ``DataError``)."""

    @abstractmethod
    def select(self, loaded: list, evaluation: list, settings: DataSettings) -> Chosen:
        """``select_rows`` for these rows: which stay, which are held out, which leak."""

    def share_instruction(self, loaded: Loaded, settings: DataSettings) -> tuple[Loaded, SharedInstruction | None]:
        """The instruction most train rows share, moved into the system turn under data.shared_instruction:
        system (``check.Conversations``); other rows find none and refuse to move one."""
        if settings.shared_instruction != "keep":
            raise DataError(f"data.shared_instruction: {settings.shared_instruction} moves an instruction out of "
                            "conversation rows (sft, grpo); these rows are preference pairs",
                            hint="Set data.shared_instruction: keep, or write the instruction into the pairs' "
                            "system turn yourself.")
        return loaded, None

    def searches_in_child(self, rows: int) -> bool:
        """Whether the search of ``rows`` rows is worth a forked child (it runs while tokenizing)."""
        return False

    @abstractmethod
    def warnings(self, chosen: Chosen, edged: int, settings: DataSettings) -> list[str]:
        """The report's warnings about duplicates kept, stripped edges (``edged`` messages) and leaks."""

    def examples(self, rows: list) -> list[Example]:
        """The rows as ``Example``s: what task metrics, the system prompt and the export read."""
        return rows

    @abstractmethod
    def tokenize(self, tokenizer: ChatTokenizer, rows: list, settings: DataSettings) -> list:
        """Each row's tokens, in order."""

    @abstractmethod
    def describe_tokens(
        self, report: DataReport, tokenizer: ChatTokenizer, train: list, train_tokens: list, eval_tokens: list,
        max_seq_length: int,
    ) -> None:
        """Writes the token statistics, the stop token, a rendered example and token warnings into ``report``."""

    def prepared(self, data: PreparedData, split: Split) -> PreparedData:
        """What ``prepare_rows`` returns, from the prepared examples and the rows they came from."""
        return data


# --- the steps --------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """The rows read from the train files and from the eval files, and one summary per file."""

    train: list
    evaluation: list
    files: list[FileSummary] = field(default_factory=list)


@dataclass
class Split:
    """The rows kept for training and for eval, and all the train files' rows they were chosen from."""

    loaded: list
    train: list
    evaluation: list


def read_splits(kind: RowKind, settings: DataSettings) -> Loaded:
    """Reads every train and eval file; raises every broken line of all of them at once."""
    problems = Problems()  # train and eval files are checked together: every broken line at once
    train, files = kind.read(list(settings.train_paths), settings.fmt, settings.system_prompt, "train", problems)
    evaluation, eval_files = kind.read(
        list(settings.eval_paths), settings.fmt, settings.system_prompt, "eval", problems
    )
    problems.raise_if_any(", ".join(Path(p).name for p in [*settings.train_paths, *settings.eval_paths]))
    return Loaded(train, evaluation, files + eval_files)


def strip_edges(kind: RowKind, loaded: Loaded, tokenizer: ChatTokenizer | None) -> tuple[Loaded, int]:
    """The rows stripped of edge whitespace when the chat template trims it (train on what it renders),
    and how many messages changed."""
    if tokenizer is None or not tokenizer.trims_messages():
        return loaded, 0
    train, edged_train = kind.strip_edges(loaded.train)
    evaluation, edged_eval = kind.strip_edges(loaded.evaluation)
    return replace(loaded, train=train, evaluation=evaluation), edged_train + edged_eval


def choose_rows(
    kind: RowKind, loaded: Loaded, settings: DataSettings, tokenizer: ChatTokenizer | None
) -> tuple[Chosen, list | None]:
    """``kind.select`` on the loaded rows and, when that search runs in a forked child, every row's tokens
    (the train files' rows, then the eval files'), made meanwhile; else None."""
    # Which rows stay, and which pairs are duplicates or leaks, does not depend on the tokens: on large
    # data a forked child searches while this process tokenizes every row (quicktune.forked).
    rows = len(loaded.train) + len(loaded.evaluation)
    search = Forked(
        kind.select, loaded.train, loaded.evaluation, settings,
        start=tokenizer is not None and kind.searches_in_child(rows),
    )
    try:
        tokens = None
        if search.in_child:  # started only with a tokenizer
            tokens = kind.tokenize(tokenizer, loaded.train + loaded.evaluation, settings)
        chosen = search.result()
    finally:
        search.close()
    return chosen, tokens


def split_rows(loaded: Loaded, chosen: Chosen) -> Split:
    """The train and eval rows ``chosen`` names: eval rows held out of train, else the eval files'."""
    train = [loaded.train[i] for i in chosen.train]
    evaluation = loaded.evaluation if chosen.held is None else [loaded.train[i] for i in chosen.held]
    return Split(loaded.train, train, evaluation)


def report_rows(
    kind: RowKind, settings: DataSettings, files: list[FileSummary], split: Split, chosen: Chosen, edged: int
) -> DataReport:
    """The report of the rows: counts, duplicate and leaking pairs by their lines, the kind's warnings."""
    removed = len(split.loaded) - len(chosen.train) - len(chosen.held or ())
    return DataReport(
        files=files,
        train_rows=len(split.train),
        eval_rows=len(split.evaluation),
        eval_source=settings.eval_source,
        dedupe=settings.dedupe,
        exact_duplicates=len(chosen.exact),
        near_duplicates=len(chosen.near),
        removed_duplicates=removed,
        duplicate_pairs=pair_summaries(chosen.exact + chosen.near, split.loaded, split.loaded),
        leakage=len(chosen.leaks),
        leakage_pairs=pair_summaries(chosen.leaks, split.train, split.evaluation),
        semantic_threshold=settings.semantic_threshold,
        semantic_duplicates=len(chosen.semantic),
        semantic_pairs=pair_summaries(chosen.semantic, split.loaded, split.loaded),
        semantic_leakage=len(chosen.semantic_leaks),
        semantic_leakage_pairs=pair_summaries(chosen.semantic_leaks, split.train, split.evaluation),
        semantic_embeddings=chosen.embeddings,
        warnings=kind.warnings(chosen, edged, settings),
    )


def report_system_prompt(
    kind: RowKind, report: DataReport, train: list[Example], settings: DataSettings, tokenizer: ChatTokenizer | None
) -> None:
    """Writes into ``report`` the system prompt the ``train`` examples are trained with and the one
    served, with their warnings."""
    report.system_prompt = system = summarise(
        train,
        recipe_prompt=settings.system_prompt,
        export_prompt=settings.export_system,
        template_default=template_default(tokenizer) if tokenizer is not None and tokenizer.chat_template else None,
        shared=report.shared_instruction,
    )
    if system is not None and system.warning:
        report.warnings.append(system.warning)
    if kind.warns_of_ollama_drops and system is not None and system.served:
        report.warnings += ollama_drops(system.served, system.served_from)


def ollama_drops(system: str, key: str) -> list[str]:
    """A system prompt with characters Ollama's Modelfile parser drops from SYSTEM (export refuses it)."""
    dropped = dropped_characters(system)
    if not dropped:
        return []
    kept = "".join(c for c in system if c not in dropped)
    return [
        (
            f"{key}: the system prompt holds {describe_characters(dropped)}, which Ollama's Modelfile parser drops "
            f"(Ollama would serve {kept!r}); export will refuse it: replace them (a no-break space with a plain space)"
        )
    ]


def tokens_of(
    kind: RowKind,
    tokenizer: ChatTokenizer | None,
    split: Split,
    chosen: Chosen,
    tokens: list | None,
    settings: DataSettings,
) -> tuple[list | None, list | None]:
    """The train and eval rows' tokens: picked from ``tokens`` (every row, tokenized while the child
    searched), else tokenized now; (None, None) without a tokenizer."""
    if tokens is not None:
        eval_rows = chosen.held if chosen.held is not None else range(len(split.loaded), len(tokens))
        return [tokens[i] for i in chosen.train], [tokens[i] for i in eval_rows]
    if tokenizer is None:
        return None, None
    return kind.tokenize(tokenizer, split.train, settings), kind.tokenize(tokenizer, split.evaluation, settings)


def stop_token(tokenizer: ChatTokenizer, end: str) -> StopToken:
    """The token that ends an answer (``end``), and whether padding is that same token."""
    return StopToken(
        text=end,
        id=tokenizer.token_id(end),
        pad_equals_eos=tokenizer.pad_id is not None and tokenizer.pad_id == tokenizer.eos_id,
    )


def prepare_rows(kind: RowKind, settings: DataSettings, tokenizer: ChatTokenizer | None = None) -> PreparedData:
    """Load, validate, de-duplicate, split and (with a tokenizer) tokenize one kind of row."""
    loaded = read_splits(kind, settings)
    loaded, edged = strip_edges(kind, loaded, tokenizer)
    kind.check_settings(settings)
    loaded, shared = kind.share_instruction(loaded, settings)
    chosen, tokens = choose_rows(kind, loaded, settings, tokenizer)
    split = split_rows(loaded, chosen)
    report = report_rows(kind, settings, loaded.files, split, chosen, edged)
    report.shared_instruction = shared
    if shared is not None and shared.mode == "keep":
        report.warnings.append(describe(shared))
    elif shared is None and settings.shared_instruction != "keep":
        report.warnings.append(f"data.shared_instruction: {settings.shared_instruction}: no instruction is shared "
                               "by most train rows (quicktune.data.instruction), so none was moved")
    train_examples = kind.examples(split.train)
    report_system_prompt(kind, report, train_examples, settings, tokenizer)
    train_tokens, eval_tokens = tokens_of(kind, tokenizer, split, chosen, tokens, settings)
    if tokenizer is not None:
        kind.describe_tokens(report, tokenizer, split.train, train_tokens, eval_tokens, settings.max_seq_length)
    data = PreparedData(train_examples, kind.examples(split.evaluation), train_tokens, eval_tokens, report)
    return kind.prepared(data, split)
