"""Eval answers kept and reused (evaluate/answer_cache.py): real evals of a real (short) SmolLM2 run, the
models' generate calls counted."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from quicktune import llamacpp
from quicktune.evaluate import answer_cache
from quicktune.metrics import Answer
from tests.conftest import copy_run


@pytest.fixture
def run_copy(trained_run, tmp_path, monkeypatch):
    """The session's run copied (its label kept: tiny-export/v1), with an empty user cache, and a list that
    names every view a model was asked (a call of greedy_answers)."""
    from quicktune.data import tokenizer as tokenizer_module
    from quicktune.evaluate import runner

    monkeypatch.setattr(tokenizer_module, "cache_dir", lambda: tmp_path / "cache")
    asked = []
    greedy = runner.greedy_answers
    monkeypatch.setattr(runner, "greedy_answers", lambda model, prompts, *a: asked.append(len(prompts))
                        or greedy(model, prompts, *a))
    run_dir = copy_run(trained_run.run_dir, tmp_path / "runs" / "tiny-export" / "v1")
    return run_dir, asked


def _eval(run_dir, **options):
    from quicktune.evaluate.runner import evaluate_run

    return evaluate_run(run_dir, against="base", limit=2, runs_root=run_dir.parent.parent,
                        **{"max_new_tokens": 8, **options})


def _kept(report):
    return [(s.label, s.metrics, s.loss, s.answers, s.prompt_tokens) for s in report.subjects]


@pytest.mark.slow
def test_a_second_eval_takes_every_answer_from_the_cache_and_reports_the_same(run_copy, tmp_path, monkeypatch):
    from quicktune.cli import main
    from quicktune.console import console

    run_dir, asked = run_copy
    first = _eval(run_dir)
    assert asked == [2, 2] and all(s.reused is None for s in first.subjects)  # base, then the run
    [base_entry] = (tmp_path / "cache" / answer_cache.USER_FOLDER).glob("*.json")
    [run_entry] = (run_dir / answer_cache.RUN_FOLDER).glob("*.json")

    monkeypatch.setattr(console, "width", 250)
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--limit", "2", "--max-new-tokens", "8",
                                       "--runs-dir", str(run_dir.parent.parent)])
    assert result.exit_code == 0, result.output
    assert asked == [2, 2]  # no model asked again
    assert "base: 2 of 2 answers from the cache" in result.output
    assert "tiny-export/v1: 2 of 2 answers from the cache" in result.output
    [written] = (run_dir / "eval").glob("base-*.json")
    again = json.loads(written.read_text())["subjects"]
    assert [(s["label"], s["metrics"], s["loss"], [a["text"] for a in s["answers"]]) for s in again] == [
        (s.label, s.metrics, s.loss, [a.text for a in s.answers]) for s in first.subjects
    ]
    assert [s["reused"] for s in again] == [json.loads(e.read_text())["computed"] for e in (base_entry, run_entry)]

    fresh = CliRunner().invoke(main, ["eval", str(run_dir), "--limit", "2", "--max-new-tokens", "8", "--no-cache",
                                      "--runs-dir", str(run_dir.parent.parent)])
    assert fresh.exit_code == 0, fresh.output
    assert asked == [2, 2, 2, 2] and "from the cache" not in fresh.output


@pytest.mark.slow
def test_other_settings_or_other_model_files_miss_the_cache(run_copy):
    from safetensors.torch import load_file, save_file

    from quicktune.runs import read_manifest, write_manifest

    run_dir, asked = run_copy
    first = _eval(run_dir)
    assert _kept(_eval(run_dir)) == _kept(first) and len(asked) == 2
    assert all(s.reused is None for s in _eval(run_dir, max_new_tokens=9).subjects)  # another answer budget
    assert len(asked) == 4

    weights = run_dir / "adapter" / "adapter_model.safetensors"  # the run's trained weights change
    tensors = load_file(weights)
    name = next(n for n in sorted(tensors) if "lora_B" in n)
    tensors[name] = tensors[name] * 3 + 0.01
    save_file(tensors, weights)
    changed = _eval(run_dir)
    assert [s.reused is None for s in changed.subjects] == [False, True] and len(asked) == 5

    manifest = read_manifest(run_dir)  # another base GGUF: the base, and the adapter on it, asked again
    manifest["base_model"]["fingerprint"] = "sha256:" + "0" * 64
    write_manifest(run_dir, manifest)
    assert all(s.reused is None for s in _eval(run_dir).subjects) and len(asked) == 7


@pytest.mark.slow
def test_a_corrupt_cache_entry_is_computed_again_and_rewritten(run_copy, tmp_path):
    run_dir, asked = run_copy
    first = _eval(run_dir)
    entries = [*(tmp_path / "cache" / answer_cache.USER_FOLDER).glob("*.json"),
               *(run_dir / answer_cache.RUN_FOLDER).glob("*.json")]
    assert len(entries) == 2
    entries[0].write_text('{"format": 1, "answers": [{"text": "cut sh', encoding="utf-8")  # a torn write
    entries[1].write_text(json.dumps({"format": 1, "answers": "not a list"}), encoding="utf-8")
    again = _eval(run_dir)
    assert len(asked) == 4 and all(s.reused is None for s in again.subjects)
    assert _kept(again) == _kept(first)
    for entry in entries:
        assert len(json.loads(entry.read_text())["answers"]) == 2
    assert all(s.reused for s in _eval(run_dir).subjects) and len(asked) == 4


@pytest.mark.slow
def test_a_gguf_s_answers_are_kept_by_its_sha256(make_recipe, smollm2_tokenizer, smollm2_gguf, tmp_path,
                                                 monkeypatch):
    """llama.cpp's answers (``eval --gguf``) are kept the same way, keyed by the GGUF's sha256."""
    import shutil

    from quicktune.data import tokenizer as tokenizer_module
    from quicktune.data.heldout import load_eval_set
    from quicktune.evaluate.runner import evaluate_gguf

    monkeypatch.setattr(tokenizer_module, "cache_dir", lambda: tmp_path / "cache")
    asked = []
    greedy = llamacpp.greedy
    monkeypatch.setattr(llamacpp, "greedy", lambda llm, prompt, *a: asked.append(prompt) or greedy(llm, prompt, *a))
    recipe, tokenizer = make_recipe(eval_file=True), smollm2_tokenizer
    eval_set = load_eval_set(recipe, [], 2)
    gguf = shutil.copy(smollm2_gguf, tmp_path / "model.gguf")

    def ask(mode=answer_cache.USE):
        cache = answer_cache.for_file(tmp_path / "run", gguf, mode)
        return evaluate_gguf("q", gguf, recipe, tokenizer, eval_set, 6, cache)

    first = ask()
    assert len(asked) == 2 and first.reused is None
    again = ask()
    assert len(asked) == 2 and again.reused and (again.answers, again.loss) == (first.answers, first.loss)
    assert ask(answer_cache.REFRESH).reused is None and len(asked) == 4
    with open(gguf, "ab") as handle:  # another file (llama.cpp ignores bytes after the tensors' data)
        handle.write(b"\0" * 32)
    assert ask().reused is None and len(asked) == 6


def test_entries_are_validated_pruned_and_not_read_when_refreshing(tmp_path):
    """No model: the cache's own rules."""
    cache = answer_cache.AnswerCache(tmp_path / "kept", {"base": "sha256:1"}, answer_cache.USE)
    key = cache.key({"prompts": [[1, 2]]})
    assert key != cache.key({"prompts": [[1, 3]]})
    assert key != answer_cache.AnswerCache(tmp_path / "kept", {"base": "sha256:2"}, answer_cache.USE).key(
        {"prompts": [[1, 2]]})
    assert answer_cache.for_base({"base_model": {"fingerprint": None}}, answer_cache.USE).key({"prompts": [[1, 2]]}) \
        is None  # a hub model without a revision: its weights can change under the same name
    cache.write(key, [Answer("hi", True)], 1.5, 2.0, 3.0)
    assert cache.read(key, 1)["answers"] == [Answer("hi", True)]
    assert cache.read(key, 2) is None  # another number of rows: not these answers
    refresh = answer_cache.AnswerCache(tmp_path / "kept", {"base": "sha256:1"}, answer_cache.REFRESH)
    assert refresh.read(key, 1) is None
    wrong_type = json.dumps({"format": 1, "answers": [{"text": 1, "stopped": True}], "computed": "x", "loss": None,
                             "prompt_tokens": None})
    for bad in ("", "[]", '{"format": 1}', wrong_type):
        (tmp_path / "kept" / f"{key}.json").write_text(bad)
        assert cache.read(key, 1) is None

    for index in range(5):
        path = tmp_path / "kept" / f"{index}.json"
        path.write_text("{}")
        os.utime(path, (1000 + index, 1000 + index))
    answer_cache.prune(tmp_path / "kept", keep=3)
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.json")) == ["3.json", "4.json", f"{key}.json"]
