"""Choosing the few-shot examples and building the prompt (the tokenizer, no model)."""

from __future__ import annotations

import pytest

from quicktune.data.heldout import EvalSet
from quicktune.data.records import Example, Message
from quicktune.errors import QuicktuneError
from quicktune.evaluate import fewshot


def _row(origin: str, user: str, answer: str, system: str | None = None) -> Example:
    head = (Message("system", system),) if system else ()
    return Example(origin, (*head, Message("user", user), Message("assistant", answer)))


TRAIN = [_row(f"train.jsonl:{i + 1}", f"One word for {w}?", f'{{"word": "{w}"}}', "Sys") for i, w in
         enumerate(["tea", "rain", "chess", "maps", "bread", "jazz", "owls", "kites"])]
HELD = EvalSet([_row("eval.jsonl:1", "One word for snow?", '{"word": "snow"}', "Sys"),
                _row("eval.jsonl:2", "One word for tea?", '{"word": "tea"}')], "eval.jsonl")


def test_against_names():
    assert fewshot.parse_against("fewshot") == fewshot.DEFAULT_SHOTS
    assert fewshot.parse_against("fewshot:5") == 5
    assert fewshot.parse_against("base") is None and fewshot.parse_against("v2") is None
    assert fewshot.parse_against(None) is None
    for bad in ("fewshot:0", "fewshot:x", "fewshot:"):
        with pytest.raises(QuicktuneError, match="at least 1"):
            fewshot.parse_against(bad)


def test_shots_are_reproducible_and_never_a_held_out_prompt():
    shots = fewshot.pick_shots(TRAIN, HELD, 3, seed=7)
    assert shots == fewshot.pick_shots(list(reversed(TRAIN)), HELD, 3, seed=7)  # not the file order
    assert all("tea?" not in s.messages[1].content for s in fewshot.pick_shots(TRAIN, HELD, 7, seed=7))
    assert fewshot.pick_shots(TRAIN, HELD, 7, seed=1) != fewshot.pick_shots(TRAIN, HELD, 7, seed=2)
    with pytest.raises(QuicktuneError, match="has 7"):  # 8 rows, one of them a held-out prompt
        fewshot.pick_shots(TRAIN, HELD, 8, seed=7)


def test_the_prompt_puts_the_shots_between_the_system_prompt_and_the_question(smollm2_tokenizer):
    shots = fewshot.pick_shots(TRAIN, HELD, 2, seed=7)
    with_shots = fewshot.with_shots(HELD, shots, "Served")
    first, second = with_shots.prompts
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert first[0]["content"] == "Sys" and second[0]["content"] == "Served"  # the row's own, else the served one
    assert first[-1]["content"] == "One word for snow?" and first[1] == shots[0].as_dicts()[1]
    assert with_shots.references == HELD.references

    tokens = fewshot.held_out_answer_tokens(smollm2_tokenizer, with_shots.examples, shots)
    for item, reference in zip(tokens, HELD.references):
        trained = [t for t, label in zip(item.input_ids, item.labels) if label != -100]
        assert smollm2_tokenizer.backend.decode(trained, skip_special_tokens=False).startswith(reference)
