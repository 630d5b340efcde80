"""Scores for generated answers against reference answers. Pure Python, no torch.

Each metric maps (prediction, reference) pairs to a number in [0, 1]; ``score_all``
returns every metric so a report can show them side by side, and the recipe's
``eval.metric`` picks the headline one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

METRICS = {
    "exact_match": "the answer equals the reference (surrounding whitespace ignored)",
    "normalized_match": "equal after collapsing whitespace and ignoring case",
    "json_valid": "the answer is valid JSON",
    "json_fields": "share of the reference JSON object's fields the answer gets right",
    "ends_with_eos": "the answer ended with the end-of-turn/EOS token within the token budget",
}


@dataclass(frozen=True)
class Answer:
    """One generated answer: its text and whether generation stopped on its own."""

    text: str
    stopped: bool


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def normalized_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def parse_json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False, None


def json_valid(prediction: str, reference: str | None = None) -> float:
    return float(parse_json(prediction)[0])


def json_field_counts(prediction: str, reference: str) -> tuple[int, int] | None:
    """(fields right, fields in the reference) for a reference JSON object; None otherwise."""
    ok, expected = parse_json(reference)
    if not ok or not isinstance(expected, dict) or not expected:
        return None
    ok, got = parse_json(prediction)
    if not ok or not isinstance(got, dict):
        return 0, len(expected)
    right = sum(1 for key, value in expected.items() if key in got and got[key] == value)
    return right, len(expected)


def score_all(answers: list[Answer], references: list[str]) -> dict[str, float | None]:
    """Every metric over a set of answers (None where it does not apply, e.g. no JSON references)."""
    n = len(answers)
    if n == 0:
        return dict.fromkeys(METRICS)
    fields = [json_field_counts(a.text, r) for a, r in zip(answers, references)]
    fields = [f for f in fields if f is not None]
    json_refs = [r for r in references if parse_json(r)[0]]
    return {
        "exact_match": sum(exact_match(a.text, r) for a, r in zip(answers, references)) / n,
        "normalized_match": sum(normalized_match(a.text, r) for a, r in zip(answers, references)) / n,
        "json_valid": sum(json_valid(a.text) for a in answers) / n if json_refs else None,
        "json_fields": sum(r for r, _ in fields) / sum(t for _, t in fields) if fields else None,
        "ends_with_eos": sum(a.stopped for a in answers) / n,
    }
