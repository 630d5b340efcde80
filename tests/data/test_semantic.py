"""Semantic near-duplicates: planted paraphrases (tests/data/paraphrases.py) with WordLlama's real embeddings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from quicktune.data import quality, semantic
from quicktune.data.check import prepare
from tests.conftest import chat, write_jsonl
from tests.data.paraphrases import DISTINCT, PARAPHRASES, REWORDED


@pytest.fixture(scope="module")
def embed():
    return semantic.default_embedder().embed


def test_reworded_prompts_found_and_distinct_prompts_not(embed):
    texts = DISTINCT + [a for a, _ in REWORDED] + [b for _, b in REWORDED]
    first = len(DISTINCT)
    planted = {(first + i, first + len(REWORDED) + i) for i in range(len(REWORDED))}
    pairs = semantic.similar_pairs(embed(texts), semantic.SEMANTIC_THRESHOLD)
    assert {(p.first, p.second) for p in pairs} == planted
    assert all(p.similarity >= semantic.SEMANTIC_THRESHOLD for p in pairs)
    # the character 5-gram check misses most of them: that is what the semantic check is for
    five_gram = quality.near_duplicate_pairs(texts)
    assert len({(p.first, p.second) for p in five_gram} & planted) < len(planted) // 2


def test_embeddings_are_the_mean_of_the_token_vectors(embed):
    embedder = semantic.default_embedder()
    texts = [a for a, _ in PARAPHRASES] + [""]
    vectors = embed(texts)
    for text, vector in zip(texts[:5], vectors):
        ids = embedder.tokenizer.encode(text, add_special_tokens=False).ids
        mean = embedder.table[ids].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)
    assert not vectors[-1].any()  # an empty text has no direction: similar to nothing


def test_projected_search_finds_what_the_exact_search_finds(embed, monkeypatch):
    rng = np.random.default_rng(0)
    texts = [a for a, _ in PARAPHRASES] + DISTINCT + [b for _, b in PARAPHRASES]
    vectors = embed(texts)
    noise = semantic.unit_rows(rng.standard_normal((3000, vectors.shape[1])).astype(np.float32))
    everything = np.concatenate([vectors, noise])
    exact = semantic.similar_pairs(everything, 0.85)
    monkeypatch.setattr(semantic, "_EXACT_PAIRS", 0)  # force the projection search
    projected = semantic.similar_pairs(everything, 0.85)
    assert exact and {(p.first, p.second) for p in projected} == {(p.first, p.second) for p in exact}


def test_leakage_split_only_pairs_train_with_eval(embed):
    train = [a for a, _ in PARAPHRASES[:10]] + DISTINCT[:10]
    held = [b for _, b in PARAPHRASES[:10]]
    pairs = semantic.similar_pairs(embed(train + held), 0.5, split=len(train))
    assert pairs and all(p.first < len(train) <= p.second for p in pairs)


def test_prepare_reports_semantic_pairs_separately_and_drops_them_on_request(tmp_path):
    rows = [chat(a, f"answer {i}") for i, (a, _) in enumerate(REWORDED[:6])]
    rows += [chat(b, f"reply {i}") for i, (_, b) in enumerate(REWORDED[:6])]
    rows.append(chat(REWORDED[0][0], "answer 0"))  # an exact copy: reported as exact, not again as semantic
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "eval.jsonl", [chat(REWORDED[7][1], "x"), chat(DISTINCT[0], "y")])
    extra = write_jsonl(tmp_path / "extra.jsonl", [chat(REWORDED[7][0], "z")])
    threshold = semantic.SEMANTIC_THRESHOLD

    report = prepare([str(train), str(extra)], eval_paths=[str(held)], semantic_threshold=threshold).report
    assert report.exact_duplicates == 1 and report.semantic_threshold == threshold
    assert report.semantic_embeddings.startswith("wordllama")
    found = {(p.first, p.second) for p in report.semantic_pairs}
    assert found == {(f"{train}:{i + 1}", f"{train}:{i + 7}") for i in range(6)}
    assert report.semantic_duplicates == 6 and all(p.similarity >= threshold for p in report.semantic_pairs)
    assert report.leakage == 0 and report.semantic_leakage == 1
    leak = report.semantic_leakage_pairs[0]
    assert (leak.first, leak.second) == (f"{extra}:1", f"{held}:1")
    assert any("dedupe: semantic" in w for w in report.warnings)

    dropped = prepare([str(train)], dedupe="semantic", semantic_threshold=threshold)
    assert dropped.report.removed_duplicates == 7 and len(dropped.train) == 6  # the copy and one of each pair
    assert [e.origin for e in dropped.train] == [f"{train}:{i}" for i in range(1, 7)]
    off = prepare([str(train)]).report
    assert off.semantic_threshold is None and off.semantic_duplicates == 0 and off.semantic_pairs == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quicktune", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_threshold_flag_is_validated_and_honoured(tmp_path):
    rows = [chat(a, "same answer") for a, _ in REWORDED] + [chat(b, "same answer") for _, b in REWORDED]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    for bad_value in ("1.5", "0", "much"):
        bad = _cli("data", "check", str(train), "--semantic-threshold", bad_value)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--semantic-threshold" in bad.stderr
    strict = json.loads(_cli("data", "check", str(train), "--semantic-threshold", "0.99", "--json").stdout)
    loose = json.loads(_cli("data", "check", str(train), "--semantic-threshold", "0.85", "--json").stdout)
    default = json.loads(_cli("data", "check", str(train), "--json").stdout)
    assert strict["semantic_threshold"] == 0.99 and loose["semantic_threshold"] == 0.85
    assert loose["semantic_duplicates"] == len(REWORDED) > strict["semantic_duplicates"]
    assert default["semantic_threshold"] is None and default["semantic_duplicates"] == 0
    printed = _cli("data", "check", str(train), "--semantic-threshold", "0.85")
    assert printed.returncode == 0 and "paraphrase" in printed.stdout and f"{train}:1" in printed.stdout
    with_recipe = json.loads(
        _cli("data", "check", str(train), "--recipe", "smollm2-demo", "--semantic-threshold", "0.85", "--json").stdout
    )
    assert with_recipe["semantic_duplicates"] == len(REWORDED)


def test_recipe_refuses_semantic_dedupe_without_threshold(tmp_path):
    from quicktune.errors import RecipeError
    from quicktune.recipe import load_recipe

    with pytest.raises(RecipeError, match="semantic_threshold"):
        load_recipe("smollm2-demo", ["data.dedupe=semantic", "data.semantic_threshold=null"])
    with pytest.raises(RecipeError, match="semantic_threshold"):
        load_recipe("smollm2-demo", ["data.semantic_threshold=0"])
