"""Resuming an unfinished run after its recipe changed (issue 34): a change that does not alter the steps
already taken (max_steps, cadence, export, eval) resumes the run; any other change is refused with the
keys and both ways on; nothing silently starts a new vN from step 0. Through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune import runs
from quicktune.cli import main
from quicktune.recipe import load_recipe
from quicktune.train.trainer import recipe_sha256
from tests.conftest import SMOLLM2, chat, write_jsonl


def _recipe(folder: Path, steps: int = 120, lr: str = "0.002", extra: str = "") -> Path:
    train = write_jsonl(folder / "train.jsonl", [chat(f"Say {w}", w) for w in ("tea", "rain", "owls", "salt")])
    path = folder / "slug.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 64\ndata:\n  train: {train}\n"
                    f"training:\n  max_steps: {steps}\n  learning_rate: {lr}\n  save_every: 2\n{extra}")
    return path


def _interrupted_run(root: Path, recipe_file: Path, step: int = 14) -> Path:
    """What Ctrl-C at ``step`` leaves: the resolved recipe, an interrupted manifest, a complete checkpoint."""
    recipe = load_recipe(str(recipe_file))
    run_dir = runs.create_run_dir(root, recipe.name)
    runs.write_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    runs.write_manifest(run_dir, {"recipe": recipe.name, "version": run_dir.name, "status": "interrupted",
                                  "recipe_sha256": recipe_sha256(recipe), "parent": None, "method": "lora",
                                  "resumes": []})
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in (*runs.CHECKPOINT_FILES, "adapter_model.safetensors"):
        (checkpoint / name).write_text("{}")
    return run_dir


def _dry_run(recipe_file: Path, root: Path, *sets: str):
    args = ["train", str(recipe_file), "--dry-run", "--runs-dir", str(root), *(f"--set={s}" for s in sets)]
    return CliRunner().invoke(main, args)


def test_a_lower_max_steps_resumes_the_interrupted_run(tmp_path):
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    recipe_file = _recipe(tmp_path, steps=50)  # max_steps lowered in the recipe, as the issue did

    result = _dry_run(recipe_file, root)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"run folder: {run_dir} (resumes its last checkpoint)" in out
    assert "training.max_steps: 120 -> 50" in out
    assert not (root / "slug" / "v2").exists()


def test_cadence_export_and_eval_changes_resume_too(tmp_path):
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    result = _dry_run(_recipe(tmp_path), root, "training.save_every=10", "training.logging_every=3",
                      "export.quantizations=[q8_0]", "eval.metric=exact_match", "training.eval_every=7")
    assert result.exit_code == 0, result.output
    assert f"run folder: {run_dir} (resumes" in " ".join(result.output.split())


def test_a_change_to_the_steps_taken_is_refused_naming_the_keys_and_both_ways_on(tmp_path):
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    recipe_file = _recipe(tmp_path, lr="0.001")

    result = _dry_run(recipe_file, root)  # the dry run refuses what the run would, before any model loads
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = " ".join(result.output.split())
    assert "slug/v1 is unfinished (checkpoint-14)" in out
    assert "training.learning_rate: 0.002 -> 0.001" in out
    assert f"quicktune train {run_dir / 'recipe.yaml'}" in out  # continue v1 anyway, as it started
    assert "--new-run" in out  # or start fresh
    assert not (root / "slug" / "v2").exists()
    assert runs.read_manifest(run_dir)["status"] == "interrupted"

    # the command it names to continue v1 resumes it (the recorded recipe loads to the same hash)
    again = _dry_run(run_dir / "recipe.yaml", root)
    assert again.exit_code == 0, again.output
    assert f"run folder: {run_dir} (resumes its last checkpoint)" in " ".join(again.output.split())
    # and --new-run starts the fresh one
    fresh = CliRunner().invoke(main, ["train", str(recipe_file), "--dry-run", "--new-run", "--runs-dir", str(root)])
    assert fresh.exit_code == 0 and f"run folder: {root / 'slug' / 'v2'}" in " ".join(fresh.output.split())


def test_a_new_default_in_a_newer_version_is_not_a_change(tmp_path):
    """A key the run's recipe.yaml lacks counts as its default: a key a newer quicktune writes does not
    orphan the run; a default that changed does, and is named."""
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    recorded = (run_dir / "recipe.yaml").read_text()
    (run_dir / "recipe.yaml").write_text(recorded.replace("  gradient_checkpointing: true\n", ""))
    manifest = runs.read_manifest(run_dir)
    runs.write_manifest(run_dir, {**manifest, "recipe_sha256": "0" * 64})  # the hash of that older recipe.yaml
    result = _dry_run(_recipe(tmp_path), root)
    assert result.exit_code == 0, result.output
    assert f"run folder: {run_dir} (resumes" in " ".join(result.output.split())

    (run_dir / "recipe.yaml").write_text(recorded.replace("  warmup_ratio: 0.03\n", "  warmup_ratio: 0.1\n"))
    refused = _dry_run(_recipe(tmp_path), root)
    assert refused.exit_code == 2 and "training.warmup_ratio: 0.1 -> 0.03" in " ".join(refused.output.split())


def test_adopting_a_changed_recipe_records_it_and_the_trainer_then_finds_the_run(tmp_path):
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    recipe = load_recipe(str(_recipe(tmp_path, steps=50)))
    change = runs.recipe_change(root, recipe.name, recipe.to_yaml(), recipe_sha256(recipe), None)
    assert change.changed == {"training.max_steps": (120, 50)} and not change.blocking
    assert runs.find_resumable(root, recipe.name, recipe_sha256(recipe), None) is None  # what failed before

    runs.adopt_recipe(change, recipe.to_yaml(), recipe_sha256(recipe))
    assert runs.find_resumable(root, recipe.name, recipe_sha256(recipe), None) == run_dir
    assert (run_dir / "recipe.yaml").read_text() == recipe.to_yaml()
    (entry,) = json.loads((run_dir / "manifest.json").read_text())["recipe_changes"]
    assert entry["changed"] == {"training.max_steps": [120, 50]}


@pytest.mark.slow
def test_a_real_interrupted_run_resumes_with_fewer_steps_through_the_cli(make_recipe, tmp_path):
    from quicktune.train.trainer import train
    from tests.train.test_trainer import InterruptAt

    root = tmp_path / "runs"
    stopped = train(make_recipe("slow-resume", steps=6), runs_root=root, extra_callbacks=(InterruptAt(1).callback,))
    assert stopped.status == "interrupted" and runs.latest_checkpoint(stopped.run_dir).name == "checkpoint-2"

    result = CliRunner().invoke(main, ["train", str(tmp_path / "slow-resume.yaml"), "--set=training.max_steps=4",
                                       "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "training.max_steps: 6 -> 4" in " ".join(result.output.split())
    manifest = runs.read_manifest(stopped.run_dir)
    assert manifest["status"] == "finished" and manifest["metrics"]["steps"] == 4
    assert [r["checkpoint"] for r in manifest["resumes"]] == ["checkpoint-2"]
    assert runs.versions(root / "slow-resume") == [1]


def test_a_run_training_now_with_another_recipe_is_left_alone(tmp_path):
    """Two experiments of one recipe at once (another learning rate in a second terminal): the one training
    now is no unfinished run to resume or refuse over; the new one gets its own vN, as before."""
    root = tmp_path / "runs"
    run_dir = _interrupted_run(root, _recipe(tmp_path))
    runs.update_manifest(run_dir, status="running")
    with runs.lock_run(run_dir, "quicktune train"):
        result = _dry_run(_recipe(tmp_path, lr="0.001"), root)
    assert result.exit_code == 0, result.output
    assert f"run folder: {root / 'slug' / 'v2'}" in " ".join(result.output.split())
