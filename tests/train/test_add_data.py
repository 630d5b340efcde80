"""`quicktune train RECIPE --from v1 --add-data corrections.jsonl`: a real 2-step run on top of v1, and its lineage."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from click.testing import CliRunner

from quicktune import runs
from quicktune.cli import main
from quicktune.train.lineage import ROWS_FILE
from tests.conftest import chat, copy_run, write_jsonl

pytestmark = pytest.mark.slow


def test_added_data_trains_and_is_recorded_since_the_parent(trained_run, tiny_data, tmp_path):
    root = tmp_path / "runs"
    parent = copy_run(trained_run.run_dir, root / "tiny-export" / "v1")
    recipe = str(parent / "recipe.yaml")
    train_file, _ = tiny_data
    corrections = write_jsonl(tmp_path / "corrections.jsonl", [
        chat("One word for moss?", '{"word": "moss"}'),
        chat("One word for dunes?", '{"word": "dunes"}'),
        chat("One word for lamps?", '{"word": "lamps"}'),
        chat("One word for tea?", '{"word": "tea"}'),  # v1 trained on this row already: not new
    ])

    missing = CliRunner().invoke(main, ["train", recipe, "--from", "v1", "--add-data", str(tmp_path / "nope.jsonl"),
                                        "--runs-dir", str(root)])
    assert missing.exit_code == 2 and "--add-data" in missing.output and "no such file" in missing.output
    twice = CliRunner().invoke(main, ["train", recipe, "--from", "v1", "--add-data", str(train_file),
                                      "--runs-dir", str(root)])
    assert twice.exit_code == 2 and "already in data.train" in twice.output

    result = CliRunner().invoke(main, ["train", recipe, "--from", "v1", "--add-data", str(corrections),
                                       "--set", "training.max_steps=2", "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    child = root / "tiny-export" / "v2"
    manifest = runs.read_manifest(child)
    assert manifest["status"] == "finished" and manifest["metrics"]["steps"] == 2
    assert yaml.safe_load((child / "recipe.yaml").read_text())["data"]["train"] == [str(train_file), str(corrections)]
    digest = runs.sha256_file(corrections)
    since = manifest["data_since_parent"]
    assert since["since"] == "tiny-export/v1"
    assert since["files"] == [{"path": str(corrections), "sha256": digest, "rows": 4}]
    assert since["new_rows"] == 3  # the tea row was in v1's training data
    new = sorted(_hashes(child) - _hashes(parent))
    assert len(new) == 3
    assert since["new_rows_sha256"] == hashlib.sha256("".join(h + "\n" for h in new).encode()).hexdigest()
    assert manifest["data"]["train_rows"] == runs.read_manifest(parent)["data"]["train_rows"] + 3

    compared = CliRunner().invoke(main, ["runs", "--runs-dir", str(root), "compare", "tiny-export/v1", "v2"])
    assert compared.exit_code == 0, compared.output
    assert (f"data added since tiny-export/v1: corrections.jsonl, 4 rows (sha256 {digest[:12]}); 3 training row(s) new"
            in compared.output)
    back = CliRunner().invoke(main, ["runs", "--runs-dir", str(root), "compare", "tiny-export/v2", "v1"])
    assert "data added since tiny-export/v2: no new file; 0 training row(s) new" in back.output


def _hashes(run_dir) -> set[str]:
    return set((run_dir / ROWS_FILE).read_text().split())
