from __future__ import annotations

import random

import numpy as np

from quicktune.data import quality
from quicktune.data.check import prepare
from tests.conftest import chat, write_jsonl

SENTENCES = [
    "Schedule a dentist appointment for Tuesday morning at nine",
    "What is the boiling point of water at sea level in Celsius",
    "Write a haiku about autumn leaves falling in the park",
    "Convert three hundred grams of flour into cups for baking",
    "List the planets of the solar system ordered by size",
]


def test_exact_duplicates_ignore_case_and_punctuation():
    pairs = quality.exact_duplicates(["Hello, world!", "hello world", "other"])
    assert [(p.first, p.second) for p in pairs] == [(0, 1)]


def test_near_duplicates_found_and_distinct_texts_not():
    texts = [*SENTENCES, SENTENCES[0] + " please", SENTENCES[2].replace("park", "parks")]
    pairs = {(p.first, p.second) for p in quality.near_duplicate_pairs(texts)}
    assert pairs == {(0, 5), (2, 6)}
    for pair in quality.near_duplicate_pairs(texts):
        assert pair.similarity >= quality.NEAR_THRESHOLD


def test_near_duplicates_in_large_templated_set():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(20000)]
    texts[15000] = texts[10].upper() + "!"
    texts[19999] = texts[123] + " x"
    found = {(p.first, p.second) for p in quality.near_duplicate_pairs(texts)}
    assert (10, 15000) in found and (123, 19999) in found


def test_leakage_between_train_and_eval():
    train = SENTENCES
    evaluation = ["completely new question about trains", SENTENCES[3].lower(), SENTENCES[1] + "?"]
    pairs = [(p.first, p.second) for p in quality.leakage_pairs(train, evaluation)]
    assert pairs == [(3, 1), (1, 2)]


def test_prepare_dedupes_and_reports_leakage(tmp_path):
    rows = [chat(s, f"answer {i}") for i, s in enumerate(SENTENCES)]
    rows.append(chat(SENTENCES[0], "answer 0"))  # exact duplicate of row 1
    rows.append(chat(SENTENCES[1] + " please", "answer 1"))  # near duplicate of row 2
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "eval.jsonl", [chat(SENTENCES[4], "x"), chat("A fresh prompt nobody used", "y")])

    exact = prepare([str(train)], eval_paths=[str(held)], dedupe="exact").report
    assert (exact.exact_duplicates, exact.near_duplicates, exact.removed_duplicates) == (1, 1, 1)
    assert exact.train_rows == 6
    assert exact.duplicate_pairs[0].first == f"{train}:1" and exact.duplicate_pairs[0].second == f"{train}:6"
    assert exact.leakage == 1
    assert exact.leakage_pairs[0].first == f"{train}:5" and exact.leakage_pairs[0].second == f"{held}:1"

    near = prepare([str(train)], dedupe="near").report
    assert near.train_rows == 5 and near.removed_duplicates == 2
    assert prepare([str(train)], dedupe="none").report.train_rows == 7


def test_eval_fraction_split_is_deterministic_and_disjoint(tmp_path):
    rows = [chat(f"question number {i} about topic {i * 7}", f"answer {i}") for i in range(50)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    first = prepare([str(train)], eval_fraction=0.2, seed=1)
    second = prepare([str(train)], eval_fraction=0.2, seed=1)
    assert len(first.eval) == 10 and len(first.train) == 40
    assert [e.origin for e in first.eval] == [e.origin for e in second.eval]
    assert not {e.origin for e in first.eval} & {e.origin for e in first.train}
    other = prepare([str(train)], eval_fraction=0.2, seed=2)
    assert [e.origin for e in other.eval] != [e.origin for e in first.eval]


def test_pair_straddling_the_sampling_length_is_found():
    # One text just under _SAMPLE_FROM windows (all shingles hashed), its copy with a thank-you just over it
    # (a sample hashed): the 6 leaks bench/data_check.py used to miss were such pairs.
    short = (
        "What's the best way to clean a wifi router before a long trip? I live near the coast, so the water is "
        "very hard, and I've had it for about 3 weeks. It's a second-hand one I got from my aunt, who bought it "
        "online last year in a sale."
    )
    longer = short + " Any help is much appreciated, thanks."
    windows = [len(quality.normalise(t)) - quality.SHINGLE + 1 for t in (short, longer)]
    assert windows[0] < quality._SAMPLE_FROM <= windows[1]
    assert [(p.first, p.second) for p in quality.near_duplicate_pairs([short, longer])] == [(0, 1)]
    assert [(p.first, p.second) for p in quality.leakage_pairs([*SENTENCES, short], [longer])] == [(5, 0)]


def test_normalise_ascii_shortcut_equals_the_regex():
    # normalise takes a byte-table path for ASCII text; the regex it replaces is the definition
    rng = random.Random(11)
    alphabet = [chr(c) for c in range(128)]
    texts = ["", " ", "__", "Hello, World!", "a_b-c", "\t\x1c\x1fX y\x0b", "Tab\tnew\nline  end  "]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(3000)]
    for text in texts:
        assert quality.normalise(text) == quality._NON_ALNUM.sub(" ", text.lower()).strip(), repr(text)


def test_exact_jaccard_equals_the_shingle_sets():
    # the array Jaccard of the near-duplicate check against Python sets of character 5-grams
    rng = random.Random(5)
    texts = [*SENTENCES, "", "abc", "abcd", "abcde", "abcdef", "ǅé ß ü straße", "日本語のテキストです"]
    texts.append("x\ud800y z")  # a lone surrogate, which json.loads lets through
    texts += [rng.choice(SENTENCES)[: rng.randrange(3, 60)] + rng.choice(["", " ok", " Σσς"]) for _ in range(60)]
    texts = [quality.normalise(t) if t.isascii() else t for t in texts]
    first = [rng.randrange(len(texts)) for _ in range(400)] + list(range(len(texts)))
    second = [rng.randrange(len(texts)) for _ in range(400)] + list(reversed(range(len(texts))))
    fast = quality.exact_jaccard(texts, np.array(first), np.array(second))
    slow = [quality.jaccard(quality.shingles(texts[i]), quality.shingles(texts[j])) for i, j in zip(first, second)]
    assert fast.tolist() == slow


def test_signatures_do_not_depend_on_the_block_size(monkeypatch):
    # MinHash signatures are hashed a block of texts at a time; block edges must not change them
    rng = random.Random(3)
    texts = [quality.normalise(" ".join(rng.choice(SENTENCES).split()[: rng.randrange(1, 11)])) for _ in range(300)]
    texts += [t * rng.randrange(2, 30) for t in texts[:40]]  # long texts: sampled shingles
    sample = np.array([i % 7 == 0 for i in range(len(texts))])
    a = np.arange(1, 65, 2, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    b = np.arange(32, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019)
    whole = quality._signatures(texts, sample, a, b)
    monkeypatch.setattr(quality, "_BLOCK_BYTES", 50)
    assert np.array_equal(quality._signatures(texts, sample, a, b), whole)
