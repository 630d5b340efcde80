"""`quicktune runs SUBCOMMAND ... --runs-dir X` (issue 34: "No such option"): every `runs` subcommand takes the
option where users type it, after the subcommand, and it means what `runs --runs-dir X SUBCOMMAND` means."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from quicktune import runs
from quicktune.cli import main
from quicktune.recipe import load_recipe


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """Two finished runs of the built-in demo recipe in a runs folder that is not ./runs."""
    monkeypatch.chdir(tmp_path)  # ./runs does not exist: only the option can name the folder
    root = tmp_path / "elsewhere"
    text = load_recipe("smollm2-demo").to_yaml()
    for _ in range(2):
        run_dir = runs.create_run_dir(root, "smollm2-demo")
        runs.write_atomic(run_dir / "recipe.yaml", text)
        runs.write_manifest(run_dir, {"recipe": "smollm2-demo", "version": run_dir.name, "status": "finished",
                                      "method": "lora", "parent": None, "resumes": [], "data": {"files": []},
                                      "metrics": {"steps": 3, "train_loss": 1.0}})
    return root


@pytest.mark.parametrize("words", [["compare", "smollm2-demo/v1", "v2"], ["history"], ["rollback"],
                                   ["promote", "v1", "--no-ollama"]])
def test_runs_dir_after_the_subcommand_means_what_it_means_before_it(runs_dir, words):
    after = CliRunner().invoke(main, ["runs", *words, "--runs-dir", str(runs_dir)])
    before = CliRunner().invoke(main, ["runs", "--runs-dir", str(runs_dir), *words])
    assert "No such option" not in after.output and "Traceback" not in after.output
    assert (after.exit_code, after.output) == (before.exit_code, before.output)
    default = CliRunner().invoke(main, ["runs", *words])  # ./runs: nothing there
    assert default.output != after.output


def test_the_subcommands_own_option_wins_over_the_groups(runs_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(empty), "history", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0 and f"Nothing promoted in {runs_dir}" in " ".join(result.output.split())
