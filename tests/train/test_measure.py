"""`quicktune plan --measure`: real steps of the recipe through the one trainer, timed, and nothing kept."""

from __future__ import annotations

import tempfile

from click.testing import CliRunner

from quicktune.cli import main


def test_plan_measure_trains_real_steps_and_leaves_nothing(make_recipe, tmp_path, monkeypatch):
    make_recipe("tiny-cpu", steps=30, eval_file=True, extra="hardware: CPU only\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the temporary run folder is made
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUICKTUNE_RUNS", raising=False)
    before = sorted(p.name for p in tmp_path.iterdir())

    result = CliRunner().invoke(main, ["plan", str(tmp_path / "tiny-cpu.yaml"), "--measure", "--measure-steps", "2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # the progress lines: one warm-up step, then the two timed ones
    assert "measuring: 3 optimizer steps of tiny-cpu" in text
    assert "step 1/3:" in text and "(warm-up, not counted)" in text and "step 3/3:" in text
    assert "time: measured:" in text and "s/step over 2 steps on this machine (CPU, after 1 warm-up step)" in text
    # the recipe's own max_steps (30), timed with the measured step: 12 rows at batch 2 -> 6 steps an epoch
    assert "the run as configured: 30 steps (training.max_steps; 5 epochs of 6 steps)" in text
    assert "(steps only: eval passes, checkpoints and export come on top)" in text
    # the libraries' own output (banners, warnings) goes to a log in the user cache, which is named
    from quicktune.data.tokenizer import cache_dir

    assert f"other libraries' output (warnings, progress bars): {cache_dir() / 'measure' / 'library.log'}" in text
    assert (cache_dir() / "measure" / "library.log").is_file()
    # nothing written beside the recipe (no runs/ folder), and the temporary run folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(scratch.iterdir()) == []


def test_the_measured_recipe_only_leaves_out_what_runs_between_steps(make_recipe):
    from quicktune.train.measure import measuring_recipe

    recipe = make_recipe(steps=30, eval_file=True, extra="  eval_every: 1\n  early_stopping_patience: 2\n")
    measuring = measuring_recipe(recipe, 3)
    assert measuring.training.max_steps == 3 and recipe.training.max_steps == 30  # the recipe itself is untouched
    assert measuring.training.eval_every > 3 and measuring.training.save_every > 3
    assert measuring.training.early_stopping_patience is None and recipe.training.early_stopping_patience == 2
    unchanged = ("batch_size", "grad_accumulation", "gradient_checkpointing", "optimizer", "packing")
    assert all(getattr(measuring.training, key) == getattr(recipe.training, key) for key in unchanged)
    assert measuring.model == recipe.model and measuring.lora == recipe.lora and measuring.data == recipe.data
