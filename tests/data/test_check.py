from __future__ import annotations

import os
import random

import pytest

from quicktune import forked
from quicktune.data import check
from tests.conftest import chat, write_jsonl

WORDS = ("kettle", "garden", "ticket", "lamp", "river", "violin", "pepper", "window", "saddle", "marble", "canoe",
         "ladder", "cookie", "helmet", "puzzle", "rocket", "spoon", "tunnel", "walnut", "zebra")


def _rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        chat(" ".join(rng.choice(WORDS) for _ in range(12)) + "?", " ".join(rng.choice(WORDS) for _ in range(8)))
        for _ in range(count)
    ]


@pytest.fixture
def data(tmp_path):
    train = _rows(300, 1)
    train += [train[3], train[40]]  # exact duplicates
    train.append(chat(train[7]["messages"][0]["content"] + " thanks", train[7]["messages"][1]["content"]))  # near
    held = [*_rows(20, 2), chat(train[11]["messages"][0]["content"], "another answer")]  # a leak
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "eval.jsonl", held)


def _tokens(items):
    return [(t.input_ids, t.labels, t.full_length) for t in items]


@pytest.mark.skipif(not forked.can_fork(), reason="forking needs Linux and two usable CPUs")
@pytest.mark.parametrize("split", ["files", "fraction"])
def test_searching_in_a_child_while_tokenizing_gives_what_one_process_gives(
    data, smollm2_tokenizer, monkeypatch, tmp_path, split
):
    train, held = data
    held_out = {"eval_paths": [str(held)]} if split == "files" else {"eval_fraction": 0.1}
    kwargs = dict(dedupe="near", tokenizer=smollm2_tokenizer, max_seq_length=40, seed=5, **held_out)
    pids = tmp_path / "pids"
    select = check.select_rows

    def recording(*args):
        with pids.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return select(*args)

    monkeypatch.setattr(check, "select_rows", recording)
    monkeypatch.setattr(check, "PARALLEL_FROM_ROWS", 1)
    both = check.prepare([str(train)], **kwargs)
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    alone = check.prepare([str(train)], **kwargs)

    first, second = pids.read_text().split()
    assert first != str(os.getpid()) and second == str(os.getpid())  # the child searched, then this process
    report = both.report
    assert (report.exact_duplicates, report.near_duplicates, report.removed_duplicates) == (2, 1, 3)
    assert report.leakage == (1 if split == "files" else 0)
    assert report.train_tokens.truncated_rows > 0  # max_seq_length 40 cuts rows: the cut is carried over too
    assert report.to_dict() == alone.report.to_dict()
    assert [e.origin for e in both.train] == [e.origin for e in alone.train]
    assert [e.origin for e in both.eval] == [e.origin for e in alone.eval]
    assert _tokens(both.train_tokens) == _tokens(alone.train_tokens)
    assert _tokens(both.eval_tokens) == _tokens(alone.eval_tokens)
    assert len(both.train_tokens) == report.train_rows and len(both.eval_tokens) == report.eval_rows


def test_small_data_is_searched_in_this_process(data, smollm2_tokenizer, monkeypatch, tmp_path):
    train, held = data
    pids = tmp_path / "pids"
    select = check.select_rows

    def recording(*args):
        pids.write_text(str(os.getpid()))
        return select(*args)

    monkeypatch.setattr(check, "select_rows", recording)
    check.prepare([str(train)], eval_paths=[str(held)], tokenizer=smollm2_tokenizer)  # 324 rows < PARALLEL_FROM_ROWS
    assert pids.read_text() == str(os.getpid())
