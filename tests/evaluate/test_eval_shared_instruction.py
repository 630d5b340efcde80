"""eval scores the held-out rows also as a user of the served model sends them (issue 35): without the
instruction most training rows shared, with the served system prompt, beside the training form."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from rich.console import Console

from quicktune.cli import main
from quicktune.data.check import load_examples, prepare_for_recipe
from quicktune.data.heldout import EvalSet
from quicktune.data.records import Message
from quicktune.evaluate.runner import TYPED, moved_as_trained, typed_set
from quicktune.recipe import load_recipe
from tests.conftest import SMOLLM2, write_jsonl
from tests.data.test_shared_instruction import SLUG, alpaca, titles


def _recipe_file(folder: Path, mode: str, eval_rows: list[dict]) -> Path:
    names = titles(12, seed=8)
    train = write_jsonl(folder / "train.jsonl", [alpaca(t) for t in names])
    held = write_jsonl(folder / "eval.jsonl", eval_rows)
    path = folder / "slugs.yaml"
    path.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 64\nlora:\n  r: 4\n  alpha: 8\n"
        f"data:\n  train: {train}\n  eval: {held}\n  shared_instruction: {mode}\n"
        "training:\n  max_steps: 2\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.005\n"
        "  warmup_ratio: 0.0\n"
    )
    return path


def _run(folder: Path, recipe) -> SimpleNamespace:
    """What ``typed_set`` reads of a run: its folder, recipe and manifest, as training records it."""
    prepared = prepare_for_recipe(recipe, tokenize=False)
    manifest = {"data": {"system_prompt": prepared.report.system_prompt.to_dict()}}
    return SimpleNamespace(run_dir=folder / "runs" / "slugs" / "v1", recipe=recipe, manifest=manifest), prepared


def test_moved_rows_are_asked_as_trained_and_the_others_get_the_served_prompt(tmp_path):
    recipe = load_recipe(str(_recipe_file(tmp_path, "system", [alpaca("Rain Tips"), {"instruction": "Say hi.",
                                                                                      "output": "hi"}])))
    run, prepared = _run(tmp_path, recipe)
    typed, about = typed_set(run, EvalSet(prepared.eval, "the recipe's eval data"))
    assert about == {"label": f"slugs/v1 {TYPED}", "instruction": SLUG, "mode": "system", "system_prompt": SLUG,
                     "rows": 1}
    assert typed.examples[0].messages == prepared.eval[0].messages  # the title alone, as trained
    assert typed.examples[1].messages[:2] == (Message("system", SLUG), Message("user", "Say hi."))


def test_nothing_differs_nothing_is_added(tmp_path):
    recipe = load_recipe(str(_recipe_file(tmp_path, "system", [alpaca("Rain Tips")])))
    run, prepared = _run(tmp_path, recipe)
    assert typed_set(run, EvalSet(prepared.eval, "x")) is None
    run.manifest["data"]["system_prompt"]["shared_instruction"] = None  # a run trained before issue 35
    assert typed_set(run, EvalSet(prepared.eval, "x")) is None


def test_data_files_of_a_system_run_are_asked_without_the_instruction_in_the_user_turn(tmp_path):
    recipe = load_recipe(str(_recipe_file(tmp_path, "system", [alpaca("Rain Tips")])))
    run, _ = _run(tmp_path, recipe)
    asked = write_jsonl(tmp_path / "asked.jsonl", [alpaca("Bread Dogs"), {"instruction": "Say hi.", "output": "hi"}])
    rows, _ = load_examples([str(asked)], system_prompt=SLUG)  # as eval --data loads them: the served prompt
    moved = moved_as_trained(run, EvalSet(rows, "asked.jsonl")).examples
    assert moved[0].messages[:2] == (Message("system", SLUG), Message("user", "Bread Dogs"))
    assert moved[1] == rows[1]
    run.manifest["data"]["system_prompt"]["shared_instruction"]["mode"] = "keep"  # kept: asked as trained
    assert moved_as_trained(run, EvalSet(rows, "asked.jsonl")).examples == rows


@pytest.mark.slow
def test_eval_scores_the_training_form_and_the_input_alone(tmp_path):
    from quicktune.train.trainer import train

    recipe_file = _recipe_file(tmp_path, "keep", [alpaca("Rain Tips"), alpaca("Coffee Code")])
    said = io.StringIO()
    result = train(load_recipe(str(recipe_file)), runs_root=tmp_path / "runs", console=Console(file=said, width=300))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["data"]["system_prompt"]["shared_instruction"]["text"] == SLUG
    assert "must type it before every input" in said.getvalue()  # training says it too, not only data check

    done = CliRunner().invoke(main, ["eval", str(result.run_dir), "--against", "none", "--max-new-tokens", "4",
                                     "--runs-dir", str(tmp_path / "runs")])
    assert done.exit_code == 0, done.output
    [path] = (result.run_dir / "eval").glob("alone-*.json")
    report = json.loads(path.read_text())
    label = f"{result.run_dir.parent.name}/{result.run_dir.name}"
    assert [s["label"] for s in report["subjects"]] == [label, f"{label} {TYPED}"]
    assert report["typed"] == {"label": f"{label} {TYPED}", "instruction": SLUG, "mode": "keep",
                               "system_prompt": None, "rows": 2}
    trained, typed = report["subjects"]
    assert typed["prompt_tokens"] < trained["prompt_tokens"]  # the instruction left out
    assert typed["loss"] is not None and len(typed["answers"]) == 2
    assert "as a user of the served model sends them" in " ".join(done.output.split())
