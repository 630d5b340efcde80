"""From a recipe's data section to checked, de-duplicated, tokenized examples.

``prepare`` is the one path from files to training rows: ``data check`` reports on
it and training consumes it, so what the check shows is what the model learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quicktune.data import quality
from quicktune.data.formats import format_for, normalise, strip_message_edges
from quicktune.data.load import read_records
from quicktune.data.masking import IGNORE, Tokenized, tokenize_examples
from quicktune.data.records import Example, Problems
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
from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.errors import DataError
from quicktune.forked import Forked

PARALLEL_FROM_ROWS = 5000  # fewer rows: the search takes less time than forking a child to do it


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
    loaded: list[Example],
    evaluation: list[Example],
    dedupe: str,
    semantic_threshold: float | None,
    eval_fraction: float,
    seed: int,
) -> Chosen:
    """Duplicates (exact, 5-gram, and by meaning when ``semantic_threshold`` is set), the rows kept
    under ``dedupe``, the held-out split, and the eval rows whose prompt leaks from train."""
    found = quality.find_duplicates([quality.normalise(quality.dialogue_text(e)) for e in loaded])
    exact, near, unique = found.exact, found.near, found.unique
    semantic: list[quality.Pair] = []
    prompts = None
    if semantic_threshold is not None:  # rows that ask the same thing in other words
        from quicktune.data.semantic import PromptVectors, similar_pairs

        prompts = PromptVectors(loaded, quality.prompt_text)
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
    leaks = quality.leakage_pairs([quality.prompt_text(e) for e in train], [quality.prompt_text(e) for e in evaluation])
    semantic_leaks: list[quality.Pair] = []
    if prompts is not None and train and evaluation:
        from quicktune.data.semantic import similar_pairs

        known = {(p.first, p.second) for p in leaks}
        vectors = np.concatenate([prompts.of(train), prompts.of(evaluation)])
        semantic_leaks = [
            quality.Pair(p.first, p.second - len(train), p.similarity)
            for p in similar_pairs(vectors, semantic_threshold, split=len(train))
            if (p.first, p.second - len(train)) not in known
        ]
    return Chosen(exact, near, semantic, kept, held, leaks, semantic_leaks, prompts.name if prompts else None)


def load_examples(
    paths: list[str],
    *,
    fmt: str | dict[str, str] = "auto",
    system_prompt: str | None = None,
    split: str = "train",
) -> tuple[list[Example], list[FileSummary]]:
    """Read and validate every file, each in its own format (``data.format``: a name, or a
    mapping of file to format); all problems in all files are raised together."""
    problems = Problems()
    loaded = _read_files(paths, fmt, system_prompt, split, problems)
    problems.raise_if_any(", ".join(Path(p).name for p in paths))
    return loaded


def _read_files(
    paths: list[str], fmt: str | dict[str, str], system_prompt: str | None, split: str, problems: Problems
) -> tuple[list[Example], list[FileSummary]]:
    examples: list[Example] = []
    summaries = []
    for path in paths:
        pinned = format_for(fmt, path)
        detected, rows = normalise(read_records(path), pinned, problems, source=path, system_prompt=system_prompt)
        examples += rows
        source = "detected" if pinned == "auto" else "data.format"
        summaries.append(FileSummary(path, detected, len(rows), split, source))
    return examples, summaries


def prepare(
    train_paths: list[str],
    *,
    eval_paths: list[str] = (),
    eval_fraction: float = 0.0,
    fmt: str | dict[str, str] = "auto",
    system_prompt: str | None = None,
    export_system: str | None = None,
    dedupe: str = "exact",
    semantic_threshold: float | None = None,
    seed: int = 3407,
    tokenizer: ChatTokenizer | None = None,
    max_seq_length: int = 2048,
    responses_only: bool = True,
) -> PreparedData:
    """Load, validate, de-duplicate, split and (with a tokenizer) tokenize the data."""
    problems = Problems()  # train and eval files are checked together: every broken line at once
    loaded, files = _read_files(list(train_paths), fmt, system_prompt, "train", problems)
    evaluation, eval_files = _read_files(list(eval_paths), fmt, system_prompt, "eval", problems)
    files += eval_files
    problems.raise_if_any(", ".join(Path(p).name for p in [*train_paths, *eval_paths]))
    edged = 0
    if tokenizer is not None and tokenizer.trims_messages():  # the template trims: train on what it renders
        loaded, edged_train = strip_message_edges(loaded)
        evaluation, edged_eval = strip_message_edges(evaluation)
        edged = edged_train + edged_eval

    if dedupe == "semantic" and semantic_threshold is None:
        raise DataError("data.dedupe: semantic needs data.semantic_threshold (it is null: the semantic check is off)")
    # Which rows stay, and which pairs are duplicates or leaks, does not depend on the tokens: on large
    # data a forked child searches while this process tokenizes every row (quicktune.forked).
    search = Forked(
        select_rows, loaded, evaluation, dedupe, semantic_threshold, eval_fraction, seed,
        start=tokenizer is not None and len(loaded) + len(evaluation) >= PARALLEL_FROM_ROWS,
    )
    try:
        tokens = None
        if search.in_child:  # started only with a tokenizer
            tokens = tokenize_examples(
                tokenizer, loaded + evaluation, max_length=max_seq_length, responses_only=responses_only
            )
        chosen = search.result()
    finally:
        search.close()
    exact, near, semantic, leaks, semantic_leaks = (
        chosen.exact, chosen.near, chosen.semantic, chosen.leaks, chosen.semantic_leaks
    )
    train = [loaded[i] for i in chosen.train]
    removed = len(loaded) - len(chosen.train) - len(chosen.held or ())
    if chosen.held is not None:
        evaluation = [loaded[i] for i in chosen.held]
    eval_source = "files" if eval_paths else (f"fraction {eval_fraction}" if eval_fraction else "none")
    warnings = []
    if near and dedupe not in ("near", "semantic"):
        warnings.append(
            f"{len(near)} near-duplicate pair(s) kept; set data.dedupe: near to drop them"
        )
    if semantic and dedupe != "semantic":
        warnings.append(
            f"{len(semantic)} pair(s) of training rows ask the same thing in other words (prompt embedding cosine >= "
            f"{semantic_threshold}); set data.dedupe: semantic to drop them"
        )
    if edged:
        warnings.append(
            f"{edged} message(s) start or end with whitespace, which the chat template trims: quicktune strips it "
            "(training, chat, eval); Ollama passes a client's text as it is, so strip prompts before sending them"
        )
    if leaks:
        warnings.append(
            f"{len(leaks)} eval example(s) have the same or nearly the same prompt as a training example: "
            "eval scores will overstate how well the model generalises"
        )
    if semantic_leaks:
        warnings.append(
            f"{len(semantic_leaks)} eval example(s) ask what a training example asks in other words (embedding "
            f"cosine >= {semantic_threshold}): eval scores may overstate how well the model generalises"
        )
    report = DataReport(
        files=files,
        train_rows=len(train),
        eval_rows=len(evaluation),
        eval_source=eval_source,
        dedupe=dedupe,
        exact_duplicates=len(exact),
        near_duplicates=len(near),
        removed_duplicates=removed,
        duplicate_pairs=pair_summaries(exact + near, loaded, loaded),
        leakage=len(leaks),
        leakage_pairs=pair_summaries(leaks, train, evaluation),
        semantic_threshold=semantic_threshold,
        semantic_duplicates=len(semantic),
        semantic_pairs=pair_summaries(semantic, loaded, loaded),
        semantic_leakage=len(semantic_leaks),
        semantic_leakage_pairs=pair_summaries(semantic_leaks, train, evaluation),
        semantic_embeddings=chosen.embeddings,
        warnings=warnings,
    )
    report.system_prompt = summarise(
        train,
        recipe_prompt=system_prompt,
        export_prompt=export_system,
        template_default=template_default(tokenizer) if tokenizer is not None and tokenizer.chat_template else None,
    )
    if report.system_prompt is not None and report.system_prompt.warning:
        report.warnings.append(report.system_prompt.warning)
    if report.system_prompt is not None and report.system_prompt.served:
        report.warnings += _ollama_drops(report.system_prompt.served, report.system_prompt.served_from)
    train_tokens = eval_tokens = None
    if tokens is not None:  # every row was tokenized while the child searched: keep the chosen ones
        train_tokens = [tokens[i] for i in chosen.train]
        eval_rows = chosen.held if chosen.held is not None else range(len(loaded), len(tokens))
        eval_tokens = [tokens[i] for i in eval_rows]
    elif tokenizer is not None:
        train_tokens = tokenize_examples(tokenizer, train, max_length=max_seq_length, responses_only=responses_only)
        eval_tokens = tokenize_examples(
            tokenizer, evaluation, max_length=max_seq_length, responses_only=responses_only
        )
    if tokenizer is not None:
        _describe_tokens(report, tokenizer, train, train_tokens, eval_tokens, max_seq_length)
    return PreparedData(train, evaluation, train_tokens, eval_tokens, report)


def _ollama_drops(system: str, key: str) -> list[str]:
    """A system prompt with characters Ollama's Modelfile parser drops from SYSTEM (export refuses it)."""
    from quicktune.ollama_rules import describe_characters, dropped_characters

    dropped = dropped_characters(system)
    if not dropped:
        return []
    kept = "".join(c for c in system if c not in dropped)
    return [
        f"{key}: the system prompt holds {describe_characters(dropped)}, which Ollama's Modelfile parser drops "
        f"(Ollama would serve {kept!r}); export will refuse it: replace them (a no-break space with a plain space)"
    ]


def _describe_tokens(
    report: DataReport,
    tokenizer: ChatTokenizer,
    train: list[Example],
    train_tokens: list[Tokenized],
    eval_tokens: list[Tokenized],
    max_seq_length: int,
) -> None:
    stops = stop_token_ids(tokenizer)
    report.train_tokens = token_stats(train_tokens, max_seq_length, stops)
    report.eval_tokens = token_stats(eval_tokens, max_seq_length, stops)
    end = tokenizer.end_of_turn() if any(e.is_chat for e in train) else (tokenizer.eos_token or "")
    report.stop = StopToken(
        text=end,
        id=tokenizer.token_id(end),
        pad_equals_eos=tokenizer.pad_id is not None and tokenizer.pad_id == tokenizer.eos_id,
    )
    stats = report.train_tokens
    if stats and stats.truncated_rows:
        report.warnings.append(
            f"{stats.truncated_rows} training row(s) are longer than max_seq_length {max_seq_length} and will be "
            "cut; a cut answer loses its end-of-turn token and teaches the model not to stop"
        )
    if stats and stats.rows_without_stop:
        report.warnings.append(
            f"{stats.rows_without_stop} training row(s) do not end their trained tokens with a stop token"
        )
    if train_tokens:
        first = train_tokens[0]
        (encoding,) = tokenizer.encode_batch([first.rendered.text])
        report.example = RenderedExample(
            origin=train[0].origin,
            text=first.rendered.text,
            trained_spans=list(first.rendered.spans),
            tokens=[
                (first.rendered.text[start:end], label != IGNORE)
                for (start, end), label in zip(encoding.offsets, first.labels)
            ],
        )


def check_data(
    files: list[str],
    *,
    recipe_ref: str | None = None,
    overrides: list[str] = (),
    eval_files: list[str] = (),
    semantic_threshold: float | str | None = "default",
) -> DataReport:
    """What ``quicktune data check`` reports: a recipe's settings applied to ``files``.

    ``semantic_threshold`` (``--semantic-threshold``) replaces ``data.semantic_threshold``;
    None turns the semantic check off."""
    if recipe_ref is None:
        if overrides:
            raise DataError("--set needs --recipe: there is no recipe to override")
        if not files:
            raise DataError("name the data file(s) to check, or a recipe with --recipe")
        from quicktune.data.preference import holds_pairs, prepare_pairs

        if holds_pairs(files[0]):  # prompt/chosen/rejected pairs: quicktune.data.preference
            return prepare_pairs(files, eval_paths=eval_files).report
        if semantic_threshold == "default":
            semantic_threshold = None  # as data.semantic_threshold: off unless asked for
        return prepare(files, eval_paths=eval_files, semantic_threshold=semantic_threshold).report
    from quicktune.recipe import load_recipe

    if semantic_threshold != "default":
        value = "null" if semantic_threshold is None else repr(float(semantic_threshold))
        overrides = [*overrides, f"data.semantic_threshold={value}"]
    recipe = load_recipe(recipe_ref, overrides)
    return prepare_for_recipe(recipe, train_paths=files, eval_paths=eval_files).report


def prepare_for_recipe(
    recipe, *, train_paths: list[str] = (), eval_paths: list[str] = (), tokenize: bool = True
) -> PreparedData:
    """``prepare`` with a recipe's tokenizer and data settings; given files replace the recipe's."""
    from quicktune.data.tokenizer import load_chat_tokenizer
    from quicktune.recipe import PREFERENCE_METHODS, check_data_files

    if not train_paths and not eval_paths:
        check_data_files(recipe)  # a missing file is named with the recipe line that names it
    if recipe.method in PREFERENCE_METHODS:  # prompt/chosen/rejected pairs: quicktune.data.preference
        from quicktune.data.preference import prepare_pairs_for_recipe

        return prepare_pairs_for_recipe(recipe, train_paths=train_paths, eval_paths=eval_paths, tokenize=tokenize)

    section = recipe.data
    train_paths = list(train_paths or section.train)
    eval_paths = list(eval_paths or section.eval)
    tokenizer = None
    if tokenize:
        tokenizer = load_chat_tokenizer(
            recipe.model.base, chat_template=recipe.model.chat_template, revision=recipe.model.revision
        )
    return prepare(
        train_paths,
        eval_paths=eval_paths,
        eval_fraction=0.0 if eval_paths else section.eval_fraction,
        fmt=section.format,
        system_prompt=section.system_prompt,
        export_system=recipe.export.system,
        dedupe=section.dedupe,
        semantic_threshold=section.semantic_threshold,
        seed=recipe.training.seed,
        tokenizer=tokenizer,
        max_seq_length=recipe.model.max_seq_length,
        responses_only=section.train_on_responses_only,
    )
