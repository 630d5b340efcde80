"""The demo's preference pairs: the SFT run's own likeliest wrong time against the right answer,
each a real pair of the recipe's task, and the mining scores what eval scores."""

from __future__ import annotations

import json

import pytest

from quicktune.demo import preference
from quicktune.demo.generate import SYSTEM


def test_candidate_times_are_every_hour_and_the_quarters_of_the_same_hour():
    found = preference.candidate_times("14:30")
    assert len(found) == len(set(found)) == 26 and "14:30" not in found
    assert {"02:30", "15:30", "14:00", "14:15", "14:45", "00:30", "23:30"} <= set(found)
    assert found == sorted(found)
    assert len(preference.candidate_times("12:00")) == 26  # 23 other hours + :15, :30, :45


def test_each_pair_is_the_right_answer_against_a_wrong_time():
    for name in preference.FILES.values():
        rows = [json.loads(line) for line in (preference.HERE / name).read_text(encoding="utf-8").splitlines()]
        assert rows, name
        for row in rows:
            chosen, rejected = json.loads(row["chosen"]), json.loads(row["rejected"])
            assert row["prompt"][0] == {"role": "system", "content": SYSTEM} and row["prompt"][-1]["role"] == "user"
            assert list(chosen) == list(rejected) == ["title", "person", "place", "day", "time"]
            assert rejected["time"] in preference.candidate_times(chosen["time"])
            assert {k: v for k, v in chosen.items() if k != "time"} == {k: v for k, v in rejected.items() if k != "time"}


def test_the_pairs_come_from_the_demo_rows_with_a_time():
    from quicktune.data.preference import prepare_pairs

    for source, target in preference.FILES.items():
        rows = [json.loads(line) for line in (preference.HERE / source).read_text(encoding="utf-8").splitlines()]
        timed = [row for row in rows if json.loads(row["messages"][-1]["content"])["time"]]
        pairs = [json.loads(line) for line in (preference.HERE / target).read_text(encoding="utf-8").splitlines()]
        assert [p["prompt"] for p in pairs] == [row["messages"][:-1] for row in timed]
        assert [p["chosen"] for p in pairs] == [row["messages"][-1]["content"] for row in timed]
    prepared = prepare_pairs([str(preference.HERE / "preference_train.jsonl")],
                             eval_paths=[str(preference.HERE / "preference_eval.jsonl")])
    assert prepared.report.leakage == 0 and prepared.report.exact_duplicates == 0
    assert (prepared.report.train_rows, prepared.report.eval_rows) == (333, 50)


def test_mining_picks_the_wrong_time_the_run_scores_highest(trained_run):
    """The cached scoring (prompt once, answers' tails batched) equals eval's plain scoring of each pair,
    and the rejected time is the best-scored candidate."""
    from quicktune.data.preference import PreferencePair, tokenize_pairs
    from quicktune.data.records import Message
    from quicktune.evaluate.preference import answer_logps

    scorer = preference.Scorer(trained_run.run_dir)
    row = json.loads((preference.HERE / "eval.jsonl").read_text(encoding="utf-8").splitlines()[2])  # a row with a time
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    wrong, margin = preference.likeliest_wrong_time(scorer, row)
    candidates = preference.candidate_times(answer["time"])
    prompt = tuple(Message(m["role"], m["content"]) for m in messages[:-1])
    pairs = [PreferencePair("t", prompt, messages[-1]["content"], json.dumps({**answer, "time": t}, ensure_ascii=False))
             for t in candidates]
    plain = answer_logps(scorer.model, tokenize_pairs(scorer.tokenizer, pairs))
    cached = scorer.answer_logps(messages[:-1], [messages[-1]["content"], *(p.rejected for p in pairs)])
    assert cached[0] == pytest.approx(plain[0][0], abs=1e-3)
    assert cached[1:] == pytest.approx([r for _, r in plain], abs=1e-3)
    best = max(range(len(candidates)), key=lambda i: plain[i][1])
    assert wrong == candidates[best]
    assert margin == pytest.approx(plain[0][0] - plain[best][1], abs=1e-3)
