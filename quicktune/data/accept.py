"""``quicktune data accept REVIEW.jsonl --into corrections.jsonl``: reviewed answers become training rows.

REVIEW.jsonl is what ``quicktune eval RUN --review`` wrote (quicktune/evaluate/review.py), edited by a
person. A row is *accepted* when its ``accept`` is true, or when it is null and ``corrected`` was edited
(differs from ``expected``); ``accept: false`` declines it; a row left at null and unedited is
*unreviewed*. Each accepted row becomes ``{"messages": [...prompt..., {"role": "assistant", "content":
corrected}]}`` appended to the corrections file, unless the same row is already there (exact match)
or its prompt is the same or nearly the same as an eval row's (``quality.leakage_pairs``, as
``data check`` finds leakage): training on the rows the runs are compared on would inflate the scores.

A broken line or field is a DataError naming file, line and field, and nothing is written; the
corrections file is written whole (``write_atomic``). No model, no tokenizer: torch is never imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune.data import quality
from quicktune.data.check import load_examples
from quicktune.data.records import ROLES, Example, Message, Problems
from quicktune.errors import DataError
from quicktune.recipe import load_recipe
from quicktune.runs import write_atomic


@dataclass(frozen=True)
class Reviewed:
    """One row of the review file: its prompt, the answer to train on, and what the person decided."""

    origin: str  # REVIEW.jsonl:line
    prompt: list[dict[str, str]]
    corrected: str
    decision: str  # "accepted", "declined" or "unreviewed"

    def training_row(self) -> dict[str, Any]:
        return {"messages": [*self.prompt, {"role": "assistant", "content": self.corrected}]}


@dataclass(frozen=True)
class Leak:
    origin: str  # the reviewed row
    eval_origin: str  # the eval row it asks the same as


@dataclass
class AcceptResult:
    into: Path
    existed: bool  # the corrections file was there before
    accepted: int = 0  # rows appended
    unreviewed: int = 0
    declined: int = 0
    duplicates: int = 0  # already in the corrections file (or twice in the review file)
    leaked: list[Leak] = field(default_factory=list)  # refused: they ask what an eval row asks
    unchecked: bool = False  # no eval file was given: leakage not checked


def accept_reviewed(review: Path, into: Path, *, eval_files: list[str] = (), recipe_ref: str | None = None
                    ) -> AcceptResult:
    """Appends ``review``'s accepted rows to ``into`` (created when missing) and returns the counts.

    The eval rows are ``eval_files`` (``--eval``), else the data.eval of ``recipe_ref`` (``-r``); the
    recipe's data.format and data.system_prompt read them. Raises DataError for a broken review or
    corrections line; then nothing is written."""
    recipe = load_recipe(recipe_ref) if recipe_ref else None
    eval_paths = list(eval_files) or (list(recipe.data.eval) if recipe else [])
    rows = read_review(review)
    existing_text, existing_keys = read_corrections(into)
    result = AcceptResult(into, into.exists(), unchecked=not eval_paths)
    candidates = _decide(rows, result)
    leaks = find_leaks(candidates, eval_paths, recipe)
    new_lines = []
    for row in candidates:
        if row.origin in leaks:
            result.leaked.append(leaks[row.origin])
            continue
        key = row_key(row.training_row())
        if key in existing_keys:
            result.duplicates += 1
            continue
        existing_keys.add(key)
        new_lines.append(json.dumps(row.training_row(), ensure_ascii=False))
    result.accepted = len(new_lines)
    if new_lines:
        text = existing_text if not existing_text or existing_text.endswith("\n") else existing_text + "\n"
        write_atomic(into, text + "".join(line + "\n" for line in new_lines))
    return result


def _decide(rows: list[Reviewed], result: AcceptResult) -> list[Reviewed]:
    """The accepted rows; counts the unreviewed and declined ones into ``result``."""
    result.unreviewed = sum(row.decision == "unreviewed" for row in rows)
    result.declined = sum(row.decision == "declined" for row in rows)
    return [row for row in rows if row.decision == "accepted"]


def row_key(row: dict[str, Any]) -> str:
    """What two rows that are the same training row share: their messages as canonical JSON."""
    return json.dumps(row.get("messages"), ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- reading


def read_review(path: Path) -> list[Reviewed]:
    """Every row of the review file, checked; every broken line or field is raised at once (DataError)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="Write one with: quicktune eval RUN --data FILE --review "
                        f"{path.name}")
    problems = Problems()
    rows = []
    for number, line in _lines(path, problems):
        origin = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(origin, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        row = _reviewed(value, origin, problems)
        if row is not None:
            rows.append(row)
    problems.hint("Fix these lines (each is one JSON object, as `quicktune eval --review` wrote it) and run again.")
    problems.raise_if_any(str(path))
    return rows


def _lines(path: Path, problems: Problems) -> list[tuple[int, str]]:
    """(line number, text) of each line that is not blank; a file that is not UTF-8 is a problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        problems.add(f"{path}:{line}", "not valid UTF-8")
        return []
    return [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _reviewed(value: Any, origin: str, problems: Problems) -> Reviewed | None:
    """One review row, or None (its problems added): messages, corrected and accept are checked."""
    if not isinstance(value, dict):
        problems.add(origin, "expected a JSON object with messages, corrected and accept")
        return None
    before = len(problems.items)
    prompt = _prompt(value.get("messages"), origin, problems)
    corrected, accept = value.get("corrected"), value.get("accept", None)
    if not isinstance(corrected, str):
        problems.add(origin, "corrected: missing or not a string (the answer to train on)")
    if accept not in (True, False, None):
        problems.add(origin, f"accept: expected true, false or null, got {json.dumps(accept)}")
    if len(problems.items) > before:
        return None
    edited = isinstance(value.get("expected"), str) and corrected != value["expected"]
    decision = ("accepted" if accept is True or (accept is None and edited)
                else "declined" if accept is False else "unreviewed")
    if decision == "accepted" and not corrected.strip():
        problems.add(origin, "corrected: empty; an accepted row needs the answer to train on (or set accept false)")
        return None
    return Reviewed(origin, prompt, corrected, decision)


def _prompt(messages: Any, origin: str, problems: Problems) -> list[dict[str, str]]:
    """The prompt's messages, checked: a list of {role, content} turns with a user turn, ending before
    the answer (not with an assistant turn)."""
    if not isinstance(messages, list) or not messages:
        problems.add(origin, "messages: missing or not a list of {role, content} turns")
        return []
    prompt = []
    for index, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            problems.add(origin, f"messages[{index}]: expected {{\"role\": system|user|assistant, \"content\": text}}")
            return []
        prompt.append({"role": message["role"], "content": message["content"]})
    if prompt[-1]["role"] != "user":
        problems.add(origin, "messages: the prompt must end with a user turn (the answer goes in corrected)")
    return prompt


def read_corrections(path: Path) -> tuple[str, set[str]]:
    """The corrections file's text and its rows' keys (``row_key``); ("", empty) when it is not there.
    A line that is not a JSON object is a DataError: the file is not overwritten."""
    if not path.exists():
        return "", set()
    problems = Problems()
    keys = set()
    for number, line in _lines(path, problems):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"{path}:{number}", f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            problems.add(f"{path}:{number}", "expected a JSON object")
            continue
        keys.add(row_key(value))
    problems.hint(f"{path} is appended to as it is: fix these lines, or give --into another file.")
    problems.raise_if_any(str(path))
    return path.read_text(encoding="utf-8"), keys


# --------------------------------------------------------------------------- leakage


def find_leaks(rows: list[Reviewed], eval_paths: list[str], recipe) -> dict[str, Leak]:
    """The rows whose prompt is the same or nearly the same as an eval row's (``quality.leakage_pairs``
    on ``quality.prompt_text``, as ``data check`` looks for leakage), by origin."""
    if not rows or not eval_paths:
        return {}
    fmt = recipe.data.format if recipe else "auto"
    system_prompt = recipe.data.system_prompt if recipe else None
    evaluation, _ = load_examples(eval_paths, fmt=fmt, system_prompt=system_prompt, split="eval")
    asked = [Example(row.origin, tuple(Message(m["role"], m["content"]) for m in row.prompt)) for row in rows]
    pairs = quality.leakage_pairs([quality.prompt_text(e) for e in asked],
                                  [quality.prompt_text(e) for e in evaluation])
    leaks: dict[str, Leak] = {}
    for pair in pairs:
        origin = rows[pair.first].origin
        leaks.setdefault(origin, Leak(origin, evaluation[pair.second].origin))
    return leaks
