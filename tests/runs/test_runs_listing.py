"""`quicktune runs` as issue 34 found it: at 80 columns values were cut ("star…", "exac…"), and an interrupted run
showed train loss "-" though it had logged losses. Through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune import runs
from quicktune.cli import main
from quicktune.console import console
from quicktune.recipe import load_recipe


@pytest.fixture
def listed(tmp_path):
    """A runs folder: a finished run with two GGUFs, its child, and a child interrupted at step 14."""
    root = tmp_path / "runs"
    text = load_recipe("smollm2-demo").to_yaml()
    for number in range(3):
        run_dir = runs.create_run_dir(root, "smollm2-demo")
        runs.write_atomic(run_dir / "recipe.yaml", text)
        finished = number < 2
        runs.write_manifest(run_dir, {
            "recipe": "smollm2-demo", "version": run_dir.name, "status": "finished" if finished else "interrupted",
            "method": "lora", "started": "2026-12-07T18:34:12+00:00", "resumes": [],
            "parent": str(root / "smollm2-demo" / "v1") if number else None,
            "metrics": {"steps": 120, "train_loss": 0.0123, "best_eval_loss": 0.0311} if finished else None,
            "interrupted_at_step": None if finished else 14,
            "export": {"ggufs": {"q4_k_m": "a.gguf", "q8_0": "b.gguf"}} if finished else None,
        })
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "loss": 0.91}\n{"step": 10, "loss": 0.55}\n'
                                           '{"step": 10, "eval_loss": 0.7}\n{"step": 12, "lo')  # cut by the kill
    return root


@pytest.fixture
def columns():
    width = console.width

    def set_width(value: int) -> None:
        console.width = value

    yield set_width
    console.width = width


@pytest.mark.parametrize("width", [80, 60, 200])
def test_no_value_is_cut_at_any_width(listed: Path, columns, width):
    columns(width)
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(listed)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for whole in ("smollm2-demo/v1", "interrupted", "2026-12-07 18:34", "0.0123", "0.0311", "q4_k_m, q8_0"):
        assert whole in result.output, whole


def test_an_interrupted_run_shows_the_losses_it_logged(listed: Path, columns):
    columns(200)
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(listed)])
    [line] = [line for line in result.output.splitlines() if "smollm2-demo/v3" in line]
    assert "14" in line and "0.5500" in line and "0.7000" in line
    assert "smollm2-demo/v1" in [part.strip() for part in line.split("│")]  # the parent, as recipe/vN
