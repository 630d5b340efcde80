"""training.report_to: TensorBoard / W&B receive what the trainer logs, or the recipe is refused."""

from __future__ import annotations

import importlib.util
import json

import pytest

from quicktune.errors import QuicktuneError, RecipeError


def test_unknown_reporter_is_a_recipe_error(make_recipe):
    with pytest.raises(RecipeError) as caught:
        make_recipe(extra="  report_to: [tensorboard, mlflow]\n")
    assert any("training.report_to" in problem and "mlflow" in problem for problem in caught.value.problems)


def test_no_reporter_keeps_the_resolved_recipe_as_it_was(make_recipe):
    assert "report_to" not in make_recipe().to_yaml()  # the sha256 that resume matches on is unchanged
    assert make_recipe(extra="  report_to: none\n").training.report_to == []
    assert "report_to:\n  - tensorboard" in make_recipe(extra="  report_to: tensorboard\n").to_yaml()


def test_a_reporter_that_is_not_installed_is_refused_before_any_model_loads(make_recipe, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    from quicktune.train.trainer import train

    recipe = make_recipe(extra="  report_to: [wandb]\n")
    with pytest.raises(QuicktuneError) as caught:
        train(recipe, runs_root=tmp_path / "runs")
    assert "training.report_to: wandb is not installed" in caught.value.message
    assert caught.value.message.startswith(f"{tmp_path / 'tiny.yaml'}:")  # file:line of the key
    assert "pip install wandb" in caught.value.hint
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_dry_run_refuses_a_missing_reporter_too(make_recipe, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    from click.testing import CliRunner

    from quicktune.cli import main

    make_recipe(extra="  report_to: [wandb]\n")
    result = CliRunner().invoke(
        main, ["train", str(tmp_path / "tiny.yaml"), "--dry-run", "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2, result.output
    assert "training.report_to: wandb is not installed" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_tensorboard_receives_the_training_loss(make_recipe, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from quicktune.train.trainer import train

    result = train(make_recipe(steps=3, extra="  report_to: tensorboard\n"), runs_root=tmp_path / "runs")
    events = sorted((result.run_dir / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = EventAccumulator(str(events[0].parent)).Reload()
    losses = [event.value for event in logged.Scalars("train/loss")]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [r["loss"] for r in records if "loss" in r]
    assert losses == pytest.approx(expected, rel=1e-5)  # the same steps metrics.jsonl has
    assert len(losses) == 3
