"""``quicktune eval RUN --review OUT.jsonl``: the held-out rows a run got wrong, for a person to correct.

Each row of OUT.jsonl (JSON Lines, no header) is one question the run was asked::

    {"messages": [...the prompt...], "model_answer": "...", "expected": "...",
     "corrected": "<a copy of expected: edit it>", "accept": null,
     "source": {"file": "...", "line": N, "run": "recipe/vN", "metric": "normalized_match"}}

A person edits ``corrected`` (or leaves it) and sets ``accept`` to true (or false to drop the row);
``quicktune data accept`` (quicktune/data/accept.py) turns the accepted rows into training rows.

A row is *wrong* when the run's answer fails the run's headline metric (``eval.metric``) on that row
alone: exact_match and normalized_match, the answer differs from the reference; json_valid, the answer
is not JSON; json_fields, a field of the reference object is missing or different; ends_with_eos, the
answer did not stop within the budget. json_valid and json_fields apply to JSON references only:
on a row whose reference is not JSON the run is judged by normalized_match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.evaluate.runner import EvalReport
from quicktune.metrics import Answer, json_field_counts, json_valid, normalized_match, parse_json
from quicktune.runs import write_atomic

FALLBACK_METRIC = "normalized_match"  # where the headline metric does not apply to a row


def row_metric(metric: str, reference: str) -> str:
    """The metric a row is judged by: ``metric``, or ``FALLBACK_METRIC`` where it does not apply to
    ``reference`` (a JSON metric on a reference that is not JSON / not a JSON object)."""
    if metric == "json_valid" and not parse_json(reference)[0]:
        return FALLBACK_METRIC
    if metric == "json_fields" and json_field_counts("", reference) is None:
        return FALLBACK_METRIC
    return metric


def is_wrong(metric: str, answer: Answer, reference: str) -> bool:
    """Whether ``answer`` fails ``metric`` (the run's eval.metric) on this one row (see the module docstring)."""
    metric = row_metric(metric, reference)
    if metric == "exact_match":
        return answer.text.strip() != reference.strip()
    if metric == "json_valid":
        return not json_valid(answer.text)
    if metric == "json_fields":
        right, total = json_field_counts(answer.text, reference)
        return right < total
    if metric == "ends_with_eos":
        return not answer.stopped
    return not normalized_match(answer.text, reference)


def split_origin(origin: str) -> tuple[str, int | None]:
    """``path:line`` (an Example's origin) -> (path, line); a line that is not a number: (origin, None)."""
    path, _, line = origin.rpartition(":")
    return (path, int(line)) if path and line.isdigit() else (origin, None)


def review_rows(report: EvalReport, *, every_row: bool = False, system_prompt: str | None = None) -> list[dict]:
    """The review file's rows: for each held-out row the run got wrong (every row with ``every_row``), its
    prompt, the run's answer and the reference. A leading system turn equal to ``system_prompt`` (the
    recipe's data.system_prompt, which training inserts again) is left out of the prompt."""
    answers = report.run_subject().answers
    rows = []
    for example, answer, reference in zip(report.eval_set.examples, answers, report.eval_set.references):
        if not every_row and not is_wrong(report.metric, answer, reference):
            continue
        prompt = example.as_dicts()[:-1]
        if system_prompt and prompt and prompt[0] == {"role": "system", "content": system_prompt}:
            prompt = prompt[1:]
        path, line = split_origin(example.origin)
        rows.append({
            "messages": prompt,
            "model_answer": answer.text,
            "expected": reference,
            "corrected": reference,
            "accept": None,
            "source": {"file": path, "line": line, "run": report.run_label,
                       "metric": row_metric(report.metric, reference),
                       "wrong": is_wrong(report.metric, answer, reference)},
        })
    return rows


def check_review_target(path: Path, force: bool) -> None:
    """Refuses, before anything loads, an OUT that exists (without ``force``) or that is a folder."""
    if path.is_dir():
        raise QuicktuneError(f"--review {path}: is a folder; give a file name, e.g. review.jsonl")
    if path.exists() and not force:
        raise QuicktuneError(
            f"--review {path}: the file exists (it may hold your edits); nothing was evaluated",
            hint="Give another file name, or add --force to replace it.",
        )


def write_review(path: Path, rows: list[dict[str, Any]]) -> None:
    """Writes ``rows`` to ``path`` as JSON Lines, the whole file at once."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
