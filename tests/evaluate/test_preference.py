"""Preference metrics on held-out pairs: pure arithmetic, and how they are shown."""

from __future__ import annotations

from quicktune.evaluate.preference import change, preference_scores, shown


def test_accuracy_counts_pairs_whose_chosen_answer_is_more_likely():
    scores = preference_scores([(-3.0, -5.0), (-4.0, -2.0), (-1.0, -1.5), (-2.0, -2.0)])
    assert scores["preference_accuracy"] == 0.5  # a tie is not a win
    assert scores["preference_margin"] == round((2.0 - 2.0 + 0.5 + 0.0) / 4, 4)
    assert preference_scores([]) == {"preference_accuracy": None, "preference_margin": None}


def test_the_share_is_a_percentage_and_the_margin_is_in_nats():
    assert shown("preference_accuracy", 0.75) == "75.0%" and shown("preference_margin", 1.23456) == "+1.235"
    assert change("preference_accuracy", 0.5, 0.75) == "+25.0 pts" and change("preference_margin", 1.0, 0.5) == "-0.500"
    assert shown("preference_margin", None) == "-" and change("preference_accuracy", None, 0.5) == "-"
