"""A judge behind an OpenAI-compatible server (``eval --judge-endpoint``), and the bookkeeping both judge
kinds share: verdicts -> win/tie/loss, position bias, the unreliable flag."""

from __future__ import annotations

import pytest

from quicktune.endpoints import Endpoint
from quicktune.evaluate.judge import (
    IDENTICAL_ROW,
    JUDGE_MAX_TOKENS,
    OPTIONS,
    UNPARSED,
    judge_pair_endpoint,
    judged_row,
    parse_verdict,
    tally,
)


def rows_of(*pairs: tuple[str, str], identical: int = 0) -> list[dict]:
    """Judged rows from (verdict with the run's answer as A, verdict with it as B), then identical rows."""
    return [judged_row({"verdict": a}, {"verdict": b}) for a, b in pairs] + [dict(IDENTICAL_ROW)] * identical


def test_a_consistent_judge_names_each_position_half_the_time_and_is_not_flagged():
    figures = tally(rows_of(("A", "B"), ("A", "B"), ("A", "B"), ("B", "A"), ("tie", "tie"), identical=1))
    assert (figures["win"], figures["tie"], figures["loss"], figures[UNPARSED]) == (3, 2, 1, 0)
    assert figures["rows"] == 6 and figures["judged"] == 5 and figures["identical"] == 1
    assert figures["agreement"] == 1.0  # every row: the same verdict for the run in both orders
    assert figures["chose_a"] == 0.4  # 4 of the 10 verdicts named A (2 were ties)
    assert figures["first_position"] == 0.5  # of the 8 naming a position, half the first
    assert not figures["flagged"] and figures["flags"] == [] and not figures["too_few"]


def test_a_judge_that_always_names_the_first_answer_is_flagged():
    figures = tally(rows_of(*[("A", "A")] * 4, ("A", "B")))
    assert (figures["win"], figures["tie"], figures["loss"]) == (1, 4, 0)  # the position bias shows as ties
    assert figures["chose_a"] == 0.9 and figures["first_position"] == 0.9 and figures["agreement"] == 0.2
    assert figures["flagged"]
    assert figures["flags"] == ["9 of the 10 verdicts naming a position named the first (A)",
                                "the two orders agreed on only 20% of rows"]
    always_b = tally(rows_of(*[("B", "B")] * 4))
    assert always_b["flagged"] and "named the second (B)" in always_b["flags"][0] and always_b["chose_a"] == 0.0
    # a judge that mostly ties, and names the first answer whenever it names one: agreement alone misses it
    ties = tally(rows_of(("A", "A"), ("A", "A"), *[("tie", "tie")] * 4))
    assert ties["agreement"] == round(4 / 6, 4) and ties["first_position"] == 1.0
    assert ties["chose_a"] == round(4 / 12, 4)
    assert ties["flags"] == ["4 of the 4 verdicts naming a position named the first (A)"]
    # under both lines: 7 of 10 verdicts name the first position, the orders agree on 3 of 5 rows
    mostly = tally(rows_of(("A", "A"), ("A", "A"), ("A", "B"), ("A", "B"), ("A", "B")))
    assert mostly["first_position"] == 0.7 and mostly["agreement"] == 0.6 and not mostly["flagged"]


def test_three_judged_rows_are_too_few_to_flag():
    figures = tally(rows_of(("A", "A"), ("A", "A"), ("A", "A"), identical=5))
    assert figures["chose_a"] == 1.0 and figures["agreement"] == 0.0
    assert figures["too_few"] and not figures["flagged"]


def test_unparsed_replies_are_counted_not_guessed():
    figures = tally(rows_of(("A", UNPARSED), (UNPARSED, UNPARSED), ("A", "B"), ("B", "A"), ("tie", UNPARSED)))
    assert figures[UNPARSED] == 3 and figures["unparsed_replies"] == 4
    assert (figures["win"], figures["loss"], figures["tie"]) == (1, 1, 0)
    assert figures["agreement"] == 1.0  # over the 2 rows both orders were read on
    assert figures["chose_a"] == round(3 / 6, 4)  # of the 6 replies read
    assert not figures["flagged"]  # 4 of 10 replies unparsed: not most; 2 rows read: too few for the other rules
    worse = tally(rows_of(*[(UNPARSED, UNPARSED)] * 3, ("A", "B")))
    assert worse["flagged"] and worse["flags"] == ["6 of 8 replies said none of A, B, tie"]


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "A"), ("B", "B"), ("tie", "tie"), ("Tie.", "tie"), (" **B**\n", "B"), ("A\nBecause it is right.", "A"),
    ("Answer A", "A"), ("Verdict: B", "B"), ("The better answer is A.", "A"), ("B is better", "B"), ("a", "A"),
    ("", UNPARSED), ("Both", UNPARSED), ("A or B", UNPARSED), ("I think A", UNPARSED), ("Answer C", UNPARSED),
    ("A tie between them", UNPARSED), ("echo: You compare two answers", UNPARSED), ("AB", UNPARSED),
])
def test_a_verdict_is_read_only_from_a_reply_that_says_it(reply, verdict):
    assert parse_verdict(reply) == verdict


def held_out(rows: list[tuple[str, str, str, str]]):
    """An EvalSet and two subjects from (question, reference, the comparator's answer, the run's answer)."""
    from quicktune.data.heldout import EvalSet
    from quicktune.data.records import Example, Message
    from quicktune.evaluate.runner import SubjectResult
    from quicktune.metrics import Answer

    examples = [Example(f"q:{i}", (Message("user", q), Message("assistant", ref))) for i, (q, ref, _, _) in
                enumerate(rows)]
    theirs = SubjectResult("base", "hf", {}, None, [Answer(r[2], True) for r in rows])
    ours = SubjectResult("run", "hf", {}, None, [Answer(r[3], True) for r in rows])
    return EvalSet(examples, "q"), theirs, ours


ROWS = [
    ("What is 2 + 2?", "4", "5", "4"),
    ("Name the capital of France.", "Paris", "I like trains.", "Paris"),
    ("Say hi.", "Hi!", "Hi!", "Hi!"),  # identical: a tie, not asked
    ("Give the word for frozen rain as JSON.", '{"word": "snow"}', '{"word": "rain"}', '{"word": "snow"}'),
    ("What colour is the sky on a clear day?", "Blue.", "Green.", "Blue."),
    ("Spell cat backwards.", "tac", "cat", "tac"),
]


def test_an_endpoint_judge_asks_both_orders_and_keeps_the_raw_replies(fault_server):
    held, theirs, ours = held_out(ROWS)
    endpoint = Endpoint(fault_server.url("ok"), "m", retries=0, timeout=10.0, option="--judge-endpoint")
    judged = judge_pair_endpoint(endpoint, held, theirs, ours, concurrency=3)
    assert fault_server.requests["ok"] == 2 * 5  # five rows differ, each asked in both orders
    assert judged["kind"] == "endpoint" and judged["endpoint"] == endpoint.describe()
    assert judged["max_tokens"] == JUDGE_MAX_TOKENS and judged["rows"] == 6 and judged["identical"] == 1
    assert judged["verdicts"][2] == IDENTICAL_ROW
    first = judged["verdicts"][0]
    # the echo server repeats the judging prompt: the run's answer first, then second
    assert first["run_as_a"]["reply"].startswith("echo: You compare two answers")
    assert first["run_as_a"]["reply"].index("Answer A:\n<<<\n4\n") < first["run_as_a"]["reply"].index("5\n>>>")
    assert "Answer A:\n<<<\n5\n" in first["run_as_b"]["reply"]
    assert all(r["run_as_a"]["verdict"] == UNPARSED for r in judged["verdicts"] if not r["identical"])
    assert judged[UNPARSED] == 5 and judged["unparsed_replies"] == 10 and judged["win"] == judged["loss"] == 0
    assert judged["agreement"] is None and judged["chose_a"] is None
    assert judged["flagged"] and judged["flags"] == ["10 of 10 replies said none of A, B, tie"]


@pytest.mark.slow
def test_smollm2_as_a_judge_behind_llama_cpp_server(smollm2_server):
    url, model = smollm2_server
    held, theirs, ours = held_out(ROWS)
    judged = judge_pair_endpoint(Endpoint(url, model, option="--judge-endpoint"), held, theirs, ours)
    assert judged["judged"] == 5 and judged["win"] + judged["tie"] + judged["loss"] + judged[UNPARSED] == 6
    for row in judged["verdicts"]:
        if not row["identical"]:
            for order in ("run_as_a", "run_as_b"):
                assert isinstance(row[order]["reply"], str)
                assert row[order]["verdict"] == parse_verdict(row[order]["reply"])
                assert row[order]["verdict"] in (*OPTIONS, UNPARSED)
    assert judged["flagged"] == bool(judged["flags"]) and not judged["too_few"]
    if judged["first_position"] is not None and max(judged["first_position"], 1 - judged["first_position"]) >= 0.9:
        assert judged["flagged"]
    replies = sorted({r[o]["reply"] for r in judged["verdicts"] if not r["identical"] for o in ("run_as_a", "run_as_b")
                      })
    print(f"SmolLM2 behind llama_cpp.server as judge: chose_a {judged['chose_a']}, agreement {judged['agreement']}, "
          f"unparsed {judged['unparsed_replies']} replies, flagged {judged['flagged']} {judged['flags']}; {replies}")
