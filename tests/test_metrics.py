"""Every metric on hand-made answers: right, wrong, malformed JSON, missing EOS."""

from __future__ import annotations

import pytest

from quicktune.metrics import Answer, json_field_counts, score_all

REF = '{"title": "lunch", "person": "Ana", "day": "Friday", "time": "13:00"}'


def test_a_right_answer_scores_everything():
    scores = score_all([Answer(f"  {REF}\n", True)], [REF])
    assert scores == {
        "exact_match": 1.0, "normalized_match": 1.0, "json_valid": 1.0, "json_fields": 1.0, "ends_with_eos": 1.0
    }


def test_wrong_fields_are_counted_one_by_one():
    wrong = '{"title": "lunch", "person": "Bob", "day": "Friday", "time": "14:00", "extra": 1}'
    assert json_field_counts(wrong, REF) == (2, 4)
    scores = score_all([Answer(wrong, True)], [REF])
    assert scores["exact_match"] == 0.0 and scores["json_valid"] == 1.0 and scores["json_fields"] == 0.5


@pytest.mark.parametrize("broken", ['{"title": "lunch", "person": "Ana"', "title: lunch", "", '["lunch"]'])
def test_malformed_or_non_object_json_gets_no_fields(broken):
    assert json_field_counts(broken, REF) == (0, 4)
    scores = score_all([Answer(broken, True)], [REF])
    assert scores["json_fields"] == 0.0
    assert scores["json_valid"] == (1.0 if broken == '["lunch"]' else 0.0)


def test_missing_eos_and_normalised_match():
    answers = [Answer("Paris  is the\nCapital.", False), Answer("paris is the capital.", True)]
    scores = score_all(answers, ["Paris is the capital.", "Paris is the capital."])
    assert scores["ends_with_eos"] == 0.5
    assert scores["exact_match"] == 0.0
    assert scores["normalized_match"] == 1.0
    assert scores["json_valid"] is None and scores["json_fields"] is None  # not a JSON task


def test_fields_are_pooled_over_rows():
    refs = [REF, '{"a": 1, "b": 2}']
    answers = [Answer(REF, True), Answer('{"a": 1, "b": 3}', True)]
    assert score_all(answers, refs)["json_fields"] == pytest.approx(5 / 6)


def test_no_answers():
    assert all(v is None for v in score_all([], []).values())
