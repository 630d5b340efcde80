"""From a recipe's data section to checked, de-duplicated, tokenized examples.

``prepare`` is the one path from files to training rows: ``data check`` reports on
it and training consumes it, so what the check shows is what the model learns. Its steps
(``pipeline.prepare_rows``) are shared with preference pairs; ``Conversations`` is what is
particular to conversations.
"""

from __future__ import annotations

from pathlib import Path

from quicktune.data.formats import format_for, normalise, strip_message_edges
from quicktune.data.instruction import find_shared, move_to_system, moved_system
from quicktune.data.load import read_records
from quicktune.data.masking import IGNORE, Tokenized, tokenize_examples
from quicktune.data.pipeline import (
    Chosen,
    DataSettings,
    Loaded,
    RowKind,
    prepare_rows,
    recipe_tokenizer,
    select_rows,
    stop_token,
)
from quicktune.data.preference import holds_pairs, prepare_pairs, prepare_pairs_for_recipe
from quicktune.data.prompts import prepare_prompts
from quicktune.data.records import Example, Problems
from quicktune.data.report import DataReport, FileSummary, PreparedData, RenderedExample, token_stats
from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.errors import DataError
from quicktune.recipe import PREFERENCE_METHODS, Recipe, check_data_files, load_recipe

PARALLEL_FROM_ROWS = 5000  # fewer rows: the search takes less time than forking a child to do it

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
    """Every file's examples, each file in its own format, and one summary per file; broken records
    go into ``problems``."""
    examples: list[Example] = []
    summaries = []
    for path in paths:
        pinned = format_for(fmt, path)
        detected, rows = normalise(read_records(path), pinned, problems, source=path, system_prompt=system_prompt)
        examples += rows
        source = "detected" if pinned == "auto" else "data.format"
        summaries.append(FileSummary(path, detected, len(rows), split, source))
    return examples, summaries


class Conversations(RowKind):
    """SFT rows: conversations, or raw text, in any format ``formats`` reads."""

    warns_of_ollama_drops = True

    def read(self, paths, fmt, system_prompt, split, problems):
        return _read_files(paths, fmt, system_prompt, split, problems)

    def strip_edges(self, rows):
        return strip_message_edges(rows)

    def share_instruction(self, loaded: Loaded, settings: DataSettings):
        found = find_shared(loaded.train)
        if found is None or settings.shared_instruction == "keep":
            return loaded, found
        train, moved_train = move_to_system(loaded.train, found)
        evaluation, moved_eval = move_to_system(loaded.evaluation, found)  # eval files: asked as training asks
        found.mode, found.moved, found.system = "system", moved_train + moved_eval, moved_system(train, found)
        return Loaded(train, evaluation, loaded.files), found

    def check_settings(self, settings: DataSettings) -> None:
        if settings.dedupe == "semantic" and settings.semantic_threshold is None:
            raise DataError(
                "data.dedupe: semantic needs data.semantic_threshold (it is null: the semantic check is off)"
            )

    def searches_in_child(self, rows: int) -> bool:
        return rows >= PARALLEL_FROM_ROWS  # this module's, looked up now: tests lower it

    def select(self, loaded, evaluation, settings: DataSettings) -> Chosen:
        # select_rows is this module's name (from pipeline), looked up now: tests wrap it
        return select_rows(
            loaded, evaluation, settings.dedupe, settings.semantic_threshold, settings.eval_fraction, settings.seed
        )

    def warnings(self, chosen: Chosen, edged: int, settings: DataSettings) -> list[str]:
        warnings = []
        if chosen.near and settings.dedupe not in ("near", "semantic"):
            warnings.append(f"{len(chosen.near)} near-duplicate pair(s) kept; set data.dedupe: near to drop them")
        if chosen.semantic and settings.dedupe != "semantic":
            warnings.append(
                f"{len(chosen.semantic)} pair(s) of training rows ask the same thing in other words (prompt "
                f"embedding cosine >= {settings.semantic_threshold}); set data.dedupe: semantic to drop them"
            )
        if edged:
            warnings.append(
                f"{edged} message(s) start or end with whitespace, which the chat template trims: quicktune strips "
                "it (training, chat, eval); Ollama passes a client's text as it is, so strip prompts before sending "
                "them"
            )
        if chosen.leaks:
            warnings.append(
                f"{len(chosen.leaks)} eval example(s) have the same or nearly the same prompt as a training example: "
                "eval scores will overstate how well the model generalises"
            )
        if chosen.semantic_leaks:
            warnings.append(
                f"{len(chosen.semantic_leaks)} eval example(s) ask what a training example asks in other words "
                f"(embedding cosine >= {settings.semantic_threshold}): eval scores may overstate how well the model "
                "generalises"
            )
        return warnings

    def tokenize(self, tokenizer, rows, settings: DataSettings) -> list[Tokenized]:
        return tokenize_examples(
            tokenizer, rows, max_length=settings.max_seq_length, responses_only=settings.responses_only
        )

    def describe_tokens(self, report, tokenizer, train, train_tokens, eval_tokens, max_seq_length) -> None:
        _describe_tokens(report, tokenizer, train, train_tokens, eval_tokens, max_seq_length)


CONVERSATIONS = Conversations()


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
    """Load, validate, de-duplicate, split and (with a tokenizer) tokenize the data (``DataSettings``
    says what each setting does)."""
    settings = DataSettings(
        train_paths=list(train_paths),
        eval_paths=list(eval_paths),
        eval_fraction=eval_fraction,
        fmt=fmt,
        system_prompt=system_prompt,
        export_system=export_system,
        dedupe=dedupe,
        semantic_threshold=semantic_threshold,
        seed=seed,
        max_seq_length=max_seq_length,
        responses_only=responses_only,
    )
    return prepare_rows(CONVERSATIONS, settings, tokenizer)


def _describe_tokens(
    report: DataReport,
    tokenizer: ChatTokenizer,
    train: list[Example],
    train_tokens: list[Tokenized],
    eval_tokens: list[Tokenized],
    max_seq_length: int,
) -> None:
    """Writes into ``report`` the token statistics, the stop token, warnings about cut rows and rows
    without a stop token, and the first training row as rendered and tokenized."""
    stops = stop_token_ids(tokenizer)
    report.train_tokens = token_stats(train_tokens, max_seq_length, stops)
    report.eval_tokens = token_stats(eval_tokens, max_seq_length, stops)
    end = tokenizer.end_of_turn() if any(e.is_chat for e in train) else (tokenizer.eos_token or "")
    report.stop = stop_token(tokenizer, end)
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
        report.example = _rendered_example(tokenizer, train[0], train_tokens[0])


def _rendered_example(tokenizer: ChatTokenizer, example: Example, tokens: Tokenized) -> RenderedExample:
    """One row as the chat template renders it, token by token, each marked trained or not."""
    (encoding,) = tokenizer.encode_batch([tokens.rendered.text])
    return RenderedExample(
        origin=example.origin,
        text=tokens.rendered.text,
        trained_spans=list(tokens.rendered.spans),
        tokens=[
            (tokens.rendered.text[start:end], label != IGNORE)
            for (start, end), label in zip(encoding.offsets, tokens.labels)
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
        if holds_pairs(files[0]):  # prompt/chosen/rejected pairs: quicktune.data.preference
            return prepare_pairs(files, eval_paths=eval_files).report
        if semantic_threshold == "default":
            semantic_threshold = None  # as data.semantic_threshold: off unless asked for
        return prepare(files, eval_paths=eval_files, semantic_threshold=semantic_threshold).report
    if semantic_threshold != "default":
        value = "null" if semantic_threshold is None else repr(float(semantic_threshold))
        overrides = [*overrides, f"data.semantic_threshold={value}"]
    recipe = load_recipe(recipe_ref, overrides)
    return prepare_for_recipe(recipe, train_paths=files, eval_paths=eval_files).report


def prepare_for_recipe(
    recipe: Recipe, *, train_paths: list[str] = (), eval_paths: list[str] = (), tokenize: bool = True
) -> PreparedData:
    """``prepare`` with a recipe's tokenizer and data settings; given files replace the recipe's."""
    if not train_paths and not eval_paths:
        check_data_files(recipe)  # a missing file is named with the recipe line that names it
    if recipe.method in PREFERENCE_METHODS:  # prompt/chosen/rejected pairs: quicktune.data.preference
        return prepare_pairs_for_recipe(recipe, train_paths=train_paths, eval_paths=eval_paths, tokenize=tokenize)
    tokenizer = recipe_tokenizer(recipe) if tokenize else None
    prepared = prepare_rows(CONVERSATIONS, DataSettings.from_recipe(recipe, train_paths, eval_paths), tokenizer)
    if recipe.method == "grpo":  # the rows as prompts, and the rewards tried on their reference answers
        return prepare_prompts(recipe, prepared, tokenizer)
    return prepared
