"""How the judge's two verdicts make one outcome (pure)."""

from __future__ import annotations

from quicktune.evaluate.judge import RUBRIC, UNPARSED, _outcome, judge_prompt


def test_both_orders_combine_into_one_outcome():
    assert _outcome("A", "B") == ("win", "win", "win")  # the run's answer chosen in both positions
    assert _outcome("B", "A") == ("loss", "loss", "loss")
    assert _outcome("A", "A") == ("win", "loss", "tie")  # always the first answer: position, not quality
    assert _outcome("tie", "B") == ("tie", "win", "win")
    assert _outcome("tie", "A") == ("tie", "loss", "loss")
    assert _outcome("tie", "tie") == ("tie", "tie", "tie")
    assert _outcome(UNPARSED, "B") == (None, "win", UNPARSED)  # a reply that said nothing: not guessed


def test_the_prompt_carries_the_rubric_request_reference_and_both_answers():
    text = judge_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}], "REF", "ONE", "TWO")
    assert RUBRIC in text and "system: S\nuser: Q?" in text and "REF" in text
    assert text.index("Answer A:\n<<<\nONE") < text.index("Answer B:\n<<<\nTWO")
