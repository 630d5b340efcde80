"""method grpo's rewards: the built-ins on known answers, the user's own loaded and checked, the recipe's
checks, and the reference-answer check that `data check` runs before any model loads. No model here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune import rewards
from quicktune.cli import main
from quicktune.errors import RecipeError
from quicktune.recipe import RewardSpec, load_recipe
from quicktune.rewards import RewardError, check_on_references, for_trainer, resolve

REF = '{"title": "lunch", "person": "Ana", "day": "today", "time": null}'


def score(name: str, answers: list[str], reference: str = REF) -> list[float | None]:
    (reward,) = resolve([RewardSpec(name=name)], None)
    return reward.function(prompts=["p"] * len(answers), completions=answers, reference=[reference] * len(answers))


def test_built_in_rewards_score_known_answers():
    near = '{"title": "lunch", "person": "Ana", "day": "tomorrow", "time": null}'
    assert score("exact", [REF, " " + REF + "\n", near]) == [1.0, 1.0, 0.0]
    assert score("exact_match", [REF]) == [1.0]
    assert score("normalized_match", ["Hello   World", "hello world.", "HELLO WORLD"], "hello world") == [1.0, 0.0, 1.0]
    assert score("json_valid", [REF, "{broken", "[1, 2]"]) == [1.0, 0.0, 1.0]
    assert score("json_fields", [REF, near, "{}", "not json"]) == [1.0, 0.75, 0.0, 0.0]
    assert score("json_fields", ["anything"], "plain text reference") == [None]  # no JSON object to compare with


def test_regex_and_max_length_rewards():
    assert score("regex:[a-z0-9]+(-[a-z0-9]+)*", ["10-tips-for-sleep", " ok-slug ", "Not A Slug", "a-"]) == [
        1.0, 1.0, 0.0, 0.0]  # the whole answer (stripped) must match
    assert score("max_length:10", ["short", "x" * 10, "y" * 20]) == [1.0, 1.0, 0.5]


def test_the_recipe_refuses_reward_names_it_cannot_use(tmp_path):
    def recipe(rewards_yaml: str, extra: str = "") -> Path:
        path = tmp_path / "r.yaml"
        path.write_text(f"method: grpo\nmodel:\n  base: x\ndata:\n  train: t.jsonl\n{extra}"
                        f"grpo:\n  rewards: {rewards_yaml}\n")
        return path

    cases = {
        "[{name: exactt}]": "did you mean exact",
        "[{name: 'regex:[a-z'}]": "the pattern does not compile",
        "[{name: 'max_length:-3'}]": "max_length:N needs N",
        "[{name: rewards:fn}]": "FILE.py:FUNCTION",
        "[]": "needs at least one reward",
    }
    for rewards_yaml, expected in cases.items():
        with pytest.raises(RecipeError) as caught:
            load_recipe(str(recipe(rewards_yaml)))
        assert expected in str(caught.value), (rewards_yaml, str(caught.value))
    with pytest.raises(RecipeError, match="method grpo does not evaluate while it trains"):
        load_recipe(str(recipe("[{name: exact}]", "training:\n  eval_every: 5\n")))
    lora = tmp_path / "lora.yaml"
    lora.write_text("method: lora\nmodel:\n  base: x\ndata:\n  train: t.jsonl\ngrpo:\n  num_generations: 4\n")
    with pytest.raises(RecipeError, match="grpo: used only by method grpo"):
        load_recipe(str(lora))


def test_own_reward_file_is_resolved_against_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(
        "def short(prompts, completions, **kwargs):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n")
    path = tmp_path / "r.yaml"
    path.write_text("method: grpo\nmodel:\n  base: x\ndata:\n  train: t.jsonl\n"
                    "grpo:\n  rewards: [{name: sub/mine.py:short, weight: 2}]\n")
    recipe = load_recipe(str(path))
    assert recipe.grpo.rewards[0].name == f"{tmp_path / 'sub' / 'mine.py'}:short"
    (reward,) = resolve(recipe.grpo.rewards, None)
    assert reward.weight == 2 and not reward.built_in
    functions, weights = for_trainer([reward])
    assert weights == [2] and functions[0].__name__ == reward.name  # the name TRL logs the mean under
    assert functions[0](prompts=["p", "p"], completions=["ab", "abcdef"], completion_ids=[[], []],
                        reference=["x", "y"], origin=["f:1", "f:2"], trainer_state=None) == [1.0, 0.0]


BAD = """
def short(prompts, completions, **kw):
    return [1.0]
def nan(prompts, completions, **kw):
    return [float("nan")] * len(completions)
def boom(prompts, completions, reference, **kw):
    return [1 / (r != "b") for r in reference]
def no_kwargs(prompts, completions):
    return [0.0] * len(completions)
def positional(prompts, completions, /, **kw):
    return [0.0] * len(completions)
def needs_more(prompts, completions, judge_url, **kw):
    return [0.0] * len(completions)
def text(prompts, completions, **kw):
    return "1.0"
def lenient(prompts, completions, reference, **kw):
    return [0.5 if len(r) > 1 else 1.0 for r in reference]
"""


@pytest.fixture
def bad_file(tmp_path) -> Path:
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    return path


def _check(bad_file: Path, function: str, references=("a", "b", "cc")):
    resolved = resolve([RewardSpec(name=f"{bad_file}:{function}")], None)
    origins = [f"train.jsonl:{i + 1}" for i in range(len(references))]
    return check_on_references(resolved, ["p"] * len(references), list(references), origins)


@pytest.mark.parametrize(("function", "expected"), [
    ("short", "returned 1 scores for 3 completions"),
    ("nan", "scored row train.jsonl:1 nan: a reward is a finite number"),
    ("boom", "raised ZeroDivisionError: division by zero (row train.jsonl:2)"),  # the row it fails on
    ("text", "returned str, not a list of floats"),
])
def test_a_reward_that_misbehaves_on_the_references_is_an_error_naming_it_and_the_row(bad_file, function, expected):
    with pytest.raises(RewardError) as caught:
        _check(bad_file, function)
    assert f"bad.py:{function}" in str(caught.value) and expected in str(caught.value), str(caught.value)


@pytest.mark.parametrize(("function", "expected"), [
    ("no_kwargs", "takes no **kwargs"),
    ("positional", "positional-only"),
    ("needs_more", "needs judge_url, which no call passes"),
    ("missing", "has no function missing (it defines boom, lenient"),
])
def test_a_reward_with_the_wrong_signature_or_name_is_refused_before_it_runs(bad_file, function, expected):
    with pytest.raises(RewardError, match=expected.replace("*", r"\*").replace("(", r"\(")):
        resolve([RewardSpec(name=f"{bad_file}:{function}")], None)


def test_a_missing_file_or_an_import_error_is_named(tmp_path):
    with pytest.raises(RewardError, match="does not exist"):
        resolve([RewardSpec(name=f"{tmp_path}/nope.py:f")], None)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardError, match=r"importing .*broken\.py failed: ModuleNotFoundError"):
        resolve([RewardSpec(name=f"{tmp_path}/broken.py:f")], None)


def test_a_reward_that_marks_reference_answers_down_is_reported(bad_file):
    report = _check(bad_file, "lenient")
    assert report.checked_rows == 3 and math.isclose(report.means[f"{bad_file}:lenient"], 2.5 / 3)
    (warning,) = report.warnings
    assert "gives 1 of 3 reference answers less than its top score 1: train.jsonl:3 (0.50)" in warning
    # the built-ins give every reference answer their top score
    assert check_on_references(resolve([RewardSpec(name="exact"), RewardSpec(name="json_fields")], None),
                               ["p"], [REF], ["t:1"]).warnings == []


def test_rows_without_a_reference_answer_are_reported():
    report = check_on_references(resolve([RewardSpec(name="exact")], None), ["p", "q"], ["a", None], ["t:1", "t:2"])
    assert any("1 row(s) have no reference answer (t:2)" in w for w in report.warnings)


def test_means_over_answers_as_eval_reports_them():
    found = rewards.means(resolve([RewardSpec(name="exact"), RewardSpec(name="json_fields")], None),
                          ["p", "p"], [REF, "x"], [REF, REF], ["t:1", "t:2"])
    assert found == {"reward:exact": 0.5, "reward:json_fields": 0.5}


def _grpo_recipe(folder: Path, train_file: Path, rewards_yaml: str) -> Path:
    from tests.conftest import SMOLLM2

    path = folder / "g.yaml"
    path.write_text(f"method: grpo\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\ndata:\n  train: {train_file}\n"
                    f"grpo:\n  rewards: {rewards_yaml}\n")
    return path


def test_data_check_runs_the_rewards_on_the_reference_answers(tiny_data, tmp_path, bad_file):
    recipe = _grpo_recipe(tmp_path, tiny_data[0], "[{name: json_fields}, {name: 'regex:\\{.*\\}'}]")
    result = CliRunner().invoke(main, ["data", "check", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert ("reference answers (mean): json_fields 1.00, regex:\\{.*\\} 1.00"
            in " ".join(result.output.split()))
    recipe = _grpo_recipe(tmp_path, tiny_data[0], f"[{{name: '{bad_file}:nan'}}]")
    result = CliRunner().invoke(main, ["data", "check", "--recipe", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"reward {bad_file}:nan scored row {tiny_data[0]}:1 nan" in " ".join(result.output.split())


def test_a_bad_reward_writes_no_run_folder(tiny_data, tmp_path, bad_file):
    recipe = _grpo_recipe(tmp_path, tiny_data[0], f"[{{name: '{bad_file}:short'}}]")
    runs_dir = tmp_path / "runs"
    for command in (["train", str(recipe), "--runs-dir", str(runs_dir)],
                    ["train", str(recipe), "--runs-dir", str(runs_dir), "--dry-run"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "returned 1 scores for 12 completions" in " ".join(result.output.split())
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.json"))


def test_the_demo_recipe_checks(tmp_path):
    recipe = load_recipe("smollm2-demo-grpo")
    assert [r.name for r in recipe.grpo.rewards] == ["json_fields", "exact"]
    rows = [json.loads(line) for line in Path(recipe.data.train[0]).read_text().splitlines()[:8]]
    answers = [r["messages"][-1]["content"] for r in rows]
    report = check_on_references(resolve(recipe.grpo.rewards, None), ["p"] * 8, answers,
                                 [f"t:{i}" for i in range(8)])
    assert report.warnings == [] and report.means == {"json_fields": 1.0, "exact": 1.0}
