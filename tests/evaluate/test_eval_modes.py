"""Was fine-tuning worth it: `eval --against fewshot`, `--probe general`, `--judge`, `--json` on real SmolLM2 runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.slow


@pytest.fixture
def wide_console():
    from quicktune.console import console

    width = console.width
    console.width = 250
    yield
    console.width = width


def _eval(run, *args):
    return CliRunner().invoke(main, ["eval", str(run.run_dir), *args, "--runs-dir", str(run.run_dir.parent.parent)])


def test_fewshot_base_and_run_side_by_side_with_a_judge(trained_run, wide_console):
    result = _eval(trained_run, "--against", "fewshot:2", "--limit", "2", "--max-new-tokens", "10", "--judge", SMOLLM2)
    assert result.exit_code == 0, result.output
    [path] = (trained_run.run_dir / "eval").glob("fewshot2-*.json")
    report = json.loads(path.read_text())
    base, shots, run = report["subjects"]
    assert [base["label"], shots["label"], run["label"]] == ["base", "base + 2-shot", "tiny-export/v1"]
    assert report["against"] == "fewshot:2" and report["fewshot"]["k"] == 2
    examples = report["fewshot"]["examples"]
    assert len(examples) == 2 and all(origin.split(":")[0].endswith("train.jsonl") for origin in examples)
    assert report["fewshot"]["system_prompt"] == "Answer with one JSON object."
    tokens = report["fewshot"]["prompt_tokens"]
    assert tokens == {"without": base["prompt_tokens"], "with": shots["prompt_tokens"]}
    assert tokens["with"] > tokens["without"] + 20 and run["prompt_tokens"] == base["prompt_tokens"]
    assert shots["loss"] != base["loss"]  # the examples were in the prompt the answers were scored after
    for subject in (base, shots, run):
        assert len(subject["answers"]) == 2
    assert set(report["regressions"]["fell"]) == {"base", "base + 2-shot"}
    for column in ("base + 2-shot", "vs base", "vs base + 2-shot", "prompt tokens (mean)", "few-shot prompt"):
        assert column in result.output

    judge = report["judge"]
    assert judge["against"] == "base + 2-shot" and judge["run"] == "tiny-export/v1"
    assert judge["win"] + judge["tie"] + judge["loss"] == judge["rows"] == 2
    assert judge["judged"] + judge["identical"] == 2 and judge["rubric"] and judge["model"].endswith(".gguf")
    assert "Judged" in result.output and "both orders" in result.output
    assert judge["kind"] == "gguf" and judge["too_few"] and not judge["flagged"]  # 2 rows cannot tell position bias
    assert "too few (under 4)" in " ".join(result.output.split())


def test_the_judge_on_real_answers_in_both_orders(smollm2_tokenizer):
    from quicktune.data.heldout import EvalSet
    from quicktune.data.records import Example, Message
    from quicktune.evaluate.judge import OPTIONS, judge_pair
    from quicktune.evaluate.runner import SubjectResult, _judge_file
    from quicktune.metrics import Answer

    questions = [("What is 2 + 2?", "4"), ("Name the capital of France.", "Paris"), ("Say hi.", "Hi!")]
    held = EvalSet(
        [Example(f"q:{i}", (Message("user", q), Message("assistant", a))) for i, (q, a) in enumerate(questions)], "q"
    )
    ours = SubjectResult("run", "hf", {}, None, [Answer("4", True), Answer("Paris", True), Answer("Hi!", True)])
    theirs = SubjectResult("base", "hf", {}, None,
                           [Answer("5", True), Answer("I like trains.", True), Answer("Hi!", True)])
    judged = judge_pair(_judge_file(SMOLLM2), held, theirs, ours)
    assert judged["rows"] == 3 and judged["identical"] == 1 and judged["judged"] == 2
    assert judged["win"] + judged["tie"] + judged["loss"] == 3
    assert judged["verdicts"][2] == {"identical": True, "outcome": "tie"}
    for row in judged["verdicts"][:2]:
        for order in ("run_as_a", "run_as_b"):
            assert row[order]["verdict"] in OPTIONS and abs(sum(row[order]["shares"]) - 1) < 1e-3
    agree = sum(r["run_as_a"]["for_run"] == r["run_as_b"]["for_run"] for r in judged["verdicts"][:2])
    assert judged["agreement"] == agree / 2
    print(f"SmolLM2 as judge: {judged['win']} win / {judged['tie']} tie / {judged['loss']} loss, "
          f"agreement {judged['agreement']}")


def test_probe_general_base_vs_run(trained_run, wide_console):
    result = _eval(trained_run, "--probe", "general")
    assert result.exit_code == 0, result.output
    [path] = (trained_run.run_dir / "eval").glob("probes-general-*.json")
    report = json.loads(path.read_text())
    assert report["kind"] == "probes" and len(report["probes"]) == 40
    base, run = report["models"]
    assert (base["label"], run["label"]) == ("base", "tiny-export/v1")
    assert len(base["answers"]) == len(run["passed"]) == 40 and base["loss"] > 0
    assert report["dropped"] == [
        p["id"] for p, b, r in zip(report["probes"], base["passed"], run["passed"]) if b and not r
    ]
    assert set(base["by_category"]) == {"arithmetic", "formatting", "copying", "counting", "reasoning"}
    assert "General-ability probes" in result.output and "all probes (40)" in result.output
    assert ("no probe dropped" in result.output) == (not report["dropped"] and any(base["passed"]))
    assert ("passed no probe" in result.output) == (not any(base["passed"]))
    assert len(run["found"]) == 40 and all(f for f, p in zip(run["found"], run["passed"]) if p)  # a pass is found
    assert "answer in the reply (40)" in result.output
    rose = (run["loss"] - base["loss"]) / base["loss"]
    assert (report["regressions"]["loss_rose"] is not None) == (rose > 0.10)
    assert ("the loss on the expected answers rose" in result.output) == (rose > 0.10)
    for probe_id in report["dropped"][:10]:
        assert probe_id in result.output
    # a probe report is not a held-out report: the run's headline still comes from those
    from quicktune.runs import eval_reports

    assert all(p.name != path.name for p, _ in eval_reports(trained_run.run_dir))


def test_probe_refuses_held_out_flags(trained_run):
    result = _eval(trained_run, "--probe", "general", "--limit", "3", "--against", "fewshot")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--limit" in result.output and "--against fewshot" in result.output


def test_a_judge_that_is_not_a_gguf_is_refused(trained_run, tmp_path):
    result = _eval(trained_run, "--judge", str(tmp_path / "nope.gguf"))
    assert result.exit_code == 2 and "--judge" in result.output and "no such file" in result.output
    result = _eval(trained_run, "--judge", SMOLLM2, "--against", "none")
    assert result.exit_code == 2 and "needs --against" in result.output


def test_json_prints_the_report_and_nothing_else(trained_run):
    from tests.test_library_log import NOISE

    runs_root = trained_run.run_dir.parent.parent
    log = trained_run.run_dir / "library.log"
    logged_before = log.stat().st_size if log.exists() else 0
    env = {k: v for k, v in os.environ.items() if k != "QUICKTUNE_VERBOSE"}
    done = subprocess.run(
        [sys.executable, "-m", "quicktune", "eval", str(trained_run.run_dir), "--against", "none", "--limit", "1",
         "--max-new-tokens", "6", "--json", "--runs-dir", str(runs_root)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole of stdout is the JSON
    [path] = (trained_run.run_dir / "eval").glob(f"alone-{report['data']['sha256'][:12]}.json")
    assert json.loads(path.read_text()) == report
    assert [s["label"] for s in report["subjects"]] == ["tiny-export/v1"] and report["data"]["rows"] == 1
    assert "report:" in done.stderr
    # the libraries' banners, warnings and bars went to the run's log, which is named at the end
    for noise in NOISE:
        assert noise not in done.stderr, f"{noise!r} reached the terminal:\n{done.stderr}"
    assert str(log) in " ".join(done.stderr.split()) or "library.log" in done.stderr
    with open(log, "rb") as text:
        text.seek(logged_before)
        assert b"Loading weights" in text.read()
    assert not list(trained_run.run_dir.glob(".library-*.log"))
