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


def test_a_dpo_run_is_scored_on_conversations_or_pairs_given_with_data():
    # The demo's task rows (conversations) give a DPO run its task metrics, as for the SFT run it
    # started from; a file of pairs is scored as pairs.
    from quicktune.data.heldout import load_eval_set
    from quicktune.recipe import builtin_recipe_dir, load_recipe

    recipe = load_recipe("smollm2-demo-dpo")
    demo = builtin_recipe_dir().parent / "demo"
    rows = load_eval_set(recipe, [str(demo / "eval.jsonl")], 5)
    assert len(rows.examples) == 5 and rows.pairs is None
    assert rows.references[0].startswith('{"title": ')
    pairs = load_eval_set(recipe, [str(demo / "preference_eval.jsonl")], 5)
    assert len(pairs.examples) == len(pairs.pairs) == 5
    assert pairs.references == [p.chosen for p in pairs.pairs]
