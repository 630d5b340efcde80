"""The demo's preference pairs: the right answer against wrong times the SFT run itself finds likely,
each a real pair of the recipe's task; the training pairs balanced; the mining scores what eval scores."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from quicktune.demo import preference
from quicktune.demo.generate import SYSTEM


def test_candidate_times_are_every_hour_and_the_quarters_of_the_same_hour():
    found = preference.candidate_times("14:30")
    assert len(found) == len(set(found)) == 26 and "14:30" not in found
    assert {"02:30", "15:30", "14:00", "14:15", "14:45", "00:30", "23:30"} <= set(found)
    assert found == sorted(found)
    assert len(preference.candidate_times("12:00")) == 26  # 23 other hours + :15, :30, :45


def test_training_candidates_add_the_time_without_its_leading_zero():
    assert preference.training_candidates("09:30") == [*preference.candidate_times("09:30"), "9:30"]
    assert preference.training_candidates("14:30") == preference.candidate_times("14:30")


def shipped(name: str) -> list[dict]:
    return [json.loads(line) for line in (preference.HERE / name).read_text(encoding="utf-8").splitlines()]


def test_each_pair_is_the_right_answer_against_a_wrong_time():
    for name, candidates in ((preference.TRAIN_FILE, preference.training_candidates),
                             (preference.EVAL_FILE, preference.candidate_times)):
        rows = shipped(name)
        assert rows, name
        for row in rows:
            chosen, rejected = json.loads(row["chosen"]), json.loads(row["rejected"])
            assert row["prompt"][0] == {"role": "system", "content": SYSTEM} and row["prompt"][-1]["role"] == "user"
            assert list(chosen) == list(rejected) == ["title", "person", "place", "day", "time"]
            assert rejected["time"] in candidates(chosen["time"])
            assert ({k: v for k, v in chosen.items() if k != "time"}
                    == {k: v for k, v in rejected.items() if k != "time"})


def test_held_out_pairs_follow_the_eval_rows_and_training_pairs_the_fresh_rows():
    from quicktune.data.preference import prepare_pairs

    evaluation = [json.loads(line)
                  for line in (preference.HERE / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    timed = [row for row in evaluation if json.loads(row["messages"][-1]["content"])["time"]]
    held = shipped(preference.EVAL_FILE)
    assert [p["prompt"] for p in held] == [row["messages"][:-1] for row in timed]
    assert [p["chosen"] for p in held] == [row["messages"][-1]["content"] for row in timed]

    fresh = preference.fresh_rows()
    assert len(fresh) == preference.FRESH_ROWS  # none was near a demo row
    demo = {row["messages"][-2]["content"] for row in evaluation}
    demo |= {json.loads(line)["messages"][-2]["content"]
             for line in (preference.HERE / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    assert not demo & {row["messages"][-2]["content"] for row in fresh}
    order = {json.dumps(row["messages"][:-1]): index for index, row in enumerate(fresh)}
    train = shipped(preference.TRAIN_FILE)
    places = [order[json.dumps(p["prompt"])] for p in train]  # every prompt is a fresh row's, in their order
    assert places == sorted(places)
    assert all(p["chosen"] == fresh[i]["messages"][-1]["content"] for p, i in zip(train, places))
    # a row gives at most its three likeliest wrong times and the two it is always paired with
    assert max(places.count(i) for i in set(places)) <= preference.UNSURE_TOP + 2

    prepared = prepare_pairs([str(preference.HERE / preference.TRAIN_FILE)],
                             eval_paths=[str(preference.HERE / preference.EVAL_FILE)])
    assert prepared.report.leakage == 0 and prepared.report.exact_duplicates == 0
    assert (prepared.report.train_rows, prepared.report.eval_rows) == (len(train), len(held)) == (606, 50)


def first_differences(pairs: list[dict]) -> Counter:
    found = Counter()
    for p in pairs:
        right, wrong = json.loads(p["chosen"])["time"], json.loads(p["rejected"])["time"]
        found[preference._first_difference(right, wrong)] += 1
    return found


def test_the_shipped_training_pairs_push_each_character_up_as_often_as_down():
    found = first_differences(shipped(preference.TRAIN_FILE))
    for key, count in found.items():
        if key[0] != "length":
            assert count == found[(key[0], key[2], key[1])], key
    assert found[("length",)] > 0  # "9:30" for "09:30": no mirror case, kept
    # unbalanced, the run's likeliest mistakes are lopsided at the first digit: on the held-out pairs of the
    # run the files were mined from, "0" is kept over another digit 7 times and never rejected for one
    held = first_differences(shipped(preference.EVAL_FILE))
    rejected = sum(n for k, n in held.items() if k[:1] == (0,) and k[2] == "0")
    kept = sum(n for k, n in held.items() if k[:1] == (0,) and k[1] == "0")
    assert (kept, rejected) == (7, 0)


def test_training_pairs_take_more_wrong_times_where_the_run_is_unsure_and_balance_them():
    def row(time: str | None) -> dict:
        answer = {"title": "tea", "person": None, "place": None, "day": None, "time": time}
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"tea at {time}"},
                             {"role": "assistant", "content": json.dumps(answer)}]}

    def scored(time: str, **likely: float) -> dict[str, float]:
        return {"": -1.0, **dict.fromkeys(preference.training_candidates(time), -50.0),
                **{t.replace("h", ":").lstrip("t"): v for t, v in likely.items()}}

    rows = [row("14:00"), row("09:30"), row("10:00"), row("15:00"), row(None), row("22:00")]
    scores = [
        scored("14:00", t02h00=-1.5, t15h00=-2.0, t13h00=-3.0),  # unsure (0.5 nats): its three likeliest
        scored("09:30", t21h30=-1.5, t9h30=-2.0, t19h30=-2.5),
        scored("10:00", t00h00=-4.0),  # sure (3 nats): its likeliest, and the other half of the day (22:00)
        scored("15:00", t14h00=-1.2, t13h00=-1.4, t05h00=-1.6),  # and 03:00, the other half
        None,
        scored("22:00", t10h00=-4.0),  # its likeliest is the other half of the day
    ]
    got = [(json.loads(p["chosen"])["time"], json.loads(p["rejected"])["time"])
           for p in preference.training_pairs(rows, scores)]
    # At the first digit "1" is kept over "0" four times (14->02, 10->00, 15->05, 15->03) and "0" over "1"
    # once (09:30->19:30): one of the four stays, the one the run is least sure of (02:00). "1" over "2"
    # (10->22) and "2" over "1" (22->10) mirror each other, as do 4->5 and 5->4; 4->3, 5->3 and 0->2 have
    # no mirror and go; "9:30" (the dropped zero) always stays. Row order, likeliest first.
    assert got == [("14:00", "02:00"), ("14:00", "15:00"), ("09:30", "9:30"), ("09:30", "19:30"),
                   ("10:00", "22:00"), ("15:00", "14:00"), ("22:00", "10:00")]


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
    scored = preference.score_row(scorer, row)  # the training pairs' scores: the same, and the zero dropped
    assert list(scored) == ["", *preference.training_candidates(answer["time"])]
    assert scored[""] == pytest.approx(plain[0][0], abs=1e-3)
    assert [scored[t] for t in candidates] == pytest.approx([r for _, r in plain], abs=1e-3)
