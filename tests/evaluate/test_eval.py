"""`quicktune eval` and `runs compare` on two real (short) SmolLM2 runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.metrics import METRICS
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_run(trained_run):
    """v2 of the same recipe, trained with another learning rate."""
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train

    recipe = load_recipe(str(trained_run.run_dir / "recipe.yaml"), ["training.learning_rate=0.001"])
    return train(recipe, runs_root=trained_run.run_dir.parent.parent)


def test_eval_against_base_writes_the_report(trained_run):
    runs_root = trained_run.run_dir.parent.parent
    result = CliRunner().invoke(
        main, ["eval", str(trained_run.run_dir), "--limit", "2", "--max-new-tokens", "12", "--runs-dir", str(runs_root)]
    )
    assert result.exit_code == 0, result.output
    assert "json_fields" in result.output and "perplexity" in result.output
    [path] = (trained_run.run_dir / "eval").glob("base-*.json")  # against base, on these 2 rows
    report = json.loads(path.read_text())
    assert path.name == f"base-{report['data']['sha256'][:12]}.json" and report["against"] == "base"
    assert path.with_suffix(".png").stat().st_size > 0
    assert [s["label"] for s in report["subjects"]] == ["base", "tiny-export/v1"]
    assert report["data"]["rows"] == 2 and len(report["data"]["sha256"]) == 64
    for subject in report["subjects"]:
        assert set(subject["metrics"]) == set(METRICS)
        assert len(subject["answers"]) == 2 and subject["loss"] > 0


@pytest.fixture
def wide_console():
    from quicktune.console import console

    width = console.width
    console.width = 250  # the table's cells on one line each, as in a wide terminal
    yield
    console.width = width


def test_runs_compare_two_real_runs_on_the_same_rows(trained_run, second_run, wide_console):
    runs_root = trained_run.run_dir.parent.parent
    # v1 was scored against base above (or is now); score v2 against v1 on the same rows
    for args in (["eval", str(trained_run.run_dir)], ["eval", "v2", "--against", "v1"]):
        ref = args[1] if args[1] != "v2" else str(second_run.run_dir)
        done = CliRunner().invoke(
            main, ["eval", ref, *args[2:], "--limit", "2", "--max-new-tokens", "8", "--runs-dir", str(runs_root)]
        )
        assert done.exit_code == 0, done.output
    [path] = (second_run.run_dir / "eval").glob("tiny-export-v1-*.json")
    report = json.loads(path.read_text())
    assert [s["label"] for s in report["subjects"]] == ["tiny-export/v1", "tiny-export/v2"]

    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(runs_root), "compare", "tiny-export/v1", "v2"])
    assert result.exit_code == 0, result.output
    assert "training.learning_rate" in result.output and "0.005" in result.output and "0.001" in result.output
    assert "held-out rows" in result.output and "json_fields" in result.output
    assert f"eval scores from tiny-export/v2/eval/{path.name}" in result.output  # the report that scored both
    assert "train.jsonl" in result.output  # the data files with their hashes


def test_eval_with_a_broken_data_file_is_a_clean_error(trained_run, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good, '{"messages": [{"role": "user", "content": "hi"}', {"messages": [{"role": "user"}]}]
    broken = write_jsonl(tmp_path / "held.jsonl", rows)
    result = CliRunner().invoke(main, ["eval", str(trained_run.run_dir), "--data", str(broken)])
    assert result.exit_code == 2
    assert "held.jsonl:2" in result.output and "held.jsonl:3" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_metric_is_a_recipe_error_with_its_line(tmp_path, tiny_data):
    train, _ = tiny_data
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: lora\nmodel:\n  base: x\ndata:\n  train: {train}\neval:\n  metric: bleu\n")
    result = CliRunner().invoke(main, ["train", str(recipe), "--dry-run"])
    assert result.exit_code == 2
    assert "r.yaml:7: eval.metric" in result.output and "json_fields" in result.output


def test_runs_compare_marks_the_metrics_that_got_worse(trained_run, second_run, wide_console):
    from quicktune.evaluate.compare import compare_runs
    from quicktune.evaluate.regression import LOSS

    runs_root = trained_run.run_dir.parent.parent
    if not list((second_run.run_dir / "eval").glob("tiny-export-v1-*.json")):  # when run on its own
        done = CliRunner().invoke(main, ["eval", str(second_run.run_dir), "--against", "v1", "--limit", "2",
                                         "--max-new-tokens", "8", "--runs-dir", str(runs_root)])
        assert done.exit_code == 0, done.output
    [path] = (second_run.run_dir / "eval").glob("tiny-export-v1-*.json")
    report = json.loads(path.read_text())
    v1, v2 = report["subjects"]
    assert report["regressions"]["run"] == "tiny-export/v2" and report["regressions"]["threshold_points"] == 2.0
    assert set(report["regressions"]["fell"]) == {"tiny-export/v1"}

    forward = compare_runs(trained_run.run_dir, second_run.run_dir, threshold=0)
    backward = compare_runs(second_run.run_dir, trained_run.run_dir, threshold=0)
    for name, before in v1["metrics"].items():
        after = v2["metrics"][name]
        assert (name in forward.regressions) == (before is not None and after is not None and after < before)
        assert (name in backward.regressions) == (before is not None and after is not None and before < after)
    assert (LOSS in forward.regressions) == (v2["loss"] > v1["loss"])
    assert (LOSS in backward.regressions) == (v1["loss"] > v2["loss"])
    # no share falls by more than 100 points; a loss can rise without bound (percent of the earlier loss)
    wide = compare_runs(trained_run.run_dir, second_run.run_dir, threshold=100).regressions
    assert wide == ([LOSS] if v2["loss"] > 2 * v1["loss"] else [])

    worse_first = forward if forward.regressions else backward
    a, b = (trained_run, second_run) if worse_first is forward else (second_run, trained_run)
    assert worse_first.regressions  # the two runs differ in loss at least
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(runs_root), "compare", str(a.run_dir), str(b.run_dir),
                                       "--threshold", "0"])
    assert result.exit_code == 0, result.output
    assert "▼" in result.output and "is worse than" in result.output
    for name in worse_first.regressions:
        assert name in result.output.split("is worse than")[1]


def test_the_base_models_answers_are_computed_once_per_rows_budget_and_versions(trained_run, tmp_path, monkeypatch):
    """The base's answers come from the cache when nothing they depend on changed, and are computed again
    when something did (here the answer budget). tests/evaluate/test_answer_cache.py: the run's, and more."""
    from quicktune.data import tokenizer as tokenizer_module
    from quicktune.evaluate import answer_cache, runner

    monkeypatch.setattr(tokenizer_module, "cache_dir", lambda: tmp_path / "cache")
    computed = []  # the labels of the subjects a model was asked
    ask = runner.evaluate_hf_views

    def counted(*args):
        results = ask(*args)
        computed.extend(r.label for r in results if r.reused is None)
        return results

    monkeypatch.setattr(runner, "evaluate_hf_views", counted)
    runs_root = trained_run.run_dir.parent.parent

    def base(budget):
        report = runner.evaluate_run(trained_run.run_dir, against="base", limit=2, max_new_tokens=budget,
                                     runs_root=runs_root, cache=answer_cache.USE)
        return report.subjects[0]

    first = base(8)
    assert "base" in computed and first.reused is None
    [entry] = (tmp_path / "cache" / answer_cache.USER_FOLDER).glob("*.json")
    computed.clear()
    again = base(8)
    assert "base" not in computed and again.reused == json.loads(entry.read_text())["computed"]
    assert (again.metrics, again.loss, again.answers) == (first.metrics, first.loss, first.answers)
    assert base(9).reused is None and "base" in computed
    assert len(list((tmp_path / "cache" / answer_cache.USER_FOLDER).glob("*.json"))) == 2
