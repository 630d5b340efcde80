"""`quicktune eval RUN --data FILE` (issue 34): rows of the file without a system turn are asked with the system
prompt the exported model is served with (export.system, else what training used), not data.system_prompt."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.data.check import load_examples
from quicktune.data.heldout import EvalSet
from tests.conftest import chat, copy_run, write_jsonl

SERVED = "Reply with one JSON object and nothing else."


@pytest.mark.slow
def test_eval_data_rows_get_the_served_system_prompt(trained_run, tmp_path):
    run_dir = copy_run(trained_run.run_dir, tmp_path / "runs" / "tiny-export" / "v1")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["data"]["system_prompt"] == "Answer with one JSON object."  # what training inserted
    recipe["export"]["system"] = SERVED  # what the Modelfile and chat send
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    rows = write_jsonl(tmp_path / "asked.jsonl", [chat("One word for snow?", '{"word": "snow"}')])
    before = set((run_dir / "eval").glob("*.json"))  # the session's run may carry other tests' reports

    result = CliRunner().invoke(main, ["eval", str(run_dir), "--data", str(rows), "--against", "none",
                                       "--max-new-tokens", "4", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [report] = [p for p in set((run_dir / "eval").glob("*.json")) - before if "data" in json.loads(p.read_text())]
    asked = json.loads(report.read_text())["data"]["sha256"]
    served, _ = load_examples([str(rows)], fmt="auto", system_prompt=SERVED)
    trained, _ = load_examples([str(rows)], fmt="auto", system_prompt="Answer with one JSON object.")
    assert asked == EvalSet(served, "x").sha256 != EvalSet(trained, "x").sha256
