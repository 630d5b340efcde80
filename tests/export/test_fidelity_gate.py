"""The fidelity gate: which rows of the export's fidelity check fail an export, and how it fails.

Pure rules over ``Fidelity`` objects first, then a real export of the trained SmolLM2 run
whose gate fails: the command exits 2, says which rows failed, keeps the files and marks
the manifest; ``--no-verify`` skips the check.
"""

from __future__ import annotations

import shutil

import pytest

from quicktune.export import gate as fidelity_gate
from quicktune.export.gate import SAME_TOP_TOKEN_FLOORS, Failure, GateResult, gate
from quicktune.export.verify import Fidelity, GgufFidelity


def _fidelity(*, identical=8, stops=8, reference_stops=8, quants=None, prompt_tokens=8, parity="12/12 conversations"):
    rows = [GgufFidelity("f16", 1.0, greedy_agreement=1.0, identical_answers=identical, stops=stops)]
    rows += [GgufFidelity(name, share) for name, share in (quants or {"q4_k_m": 0.97}).items()]
    return Fidelity(
        prompts=8,
        max_new_tokens=96,
        reference_stops=reference_stops,
        prompt_tokens_equal=prompt_tokens,
        template_parity=parity,
        ggufs=rows,
    )


def _rows(result: GateResult) -> list[str]:
    return [failure.row for failure in result.failures]


def test_a_faithful_export_passes():
    # rows measured on honest SmolLM2 exports (export/gate.py)
    result = gate(_fidelity(quants={"q4_k_m": 0.742, "q5_k_m": 0.742, "q8_0": 1.0, "bf16": 1.0}))
    assert result.passed and result.failures == [] and result.skipped == []
    assert result.to_json() == {"passed": True, "failures": [], "skipped": []}


def test_f16_must_reproduce_every_answer_and_stop_where_the_merged_model_stops():
    assert _rows(gate(_fidelity(identical=7))) == ["f16"]
    assert "7/8" in gate(_fidelity(identical=7)).failures[0].what
    assert _rows(gate(_fidelity(stops=6, reference_stops=7))) == ["f16"]
    # A model that never learned to stop is a training problem, not an export failure.
    assert gate(_fidelity(stops=3, reference_stops=3)).passed


@pytest.mark.parametrize("quant", sorted(SAME_TOP_TOKEN_FLOORS))
def test_each_quantization_has_its_floor(quant):
    floor = SAME_TOP_TOKEN_FLOORS[quant]
    assert gate(_fidelity(quants={quant: floor})).passed
    below = gate(_fidelity(quants={quant: round(floor - 0.01, 4)}))
    assert _rows(below) == [quant] and "below its floor" in below.failures[0].what


def test_every_quantization_the_cli_offers_has_a_documented_floor():
    from quicktune.cli import QUANT_CHOICE

    assert set(QUANT_CHOICE.choices) - {"f16"} <= set(SAME_TOP_TOKEN_FLOORS)


def test_prompt_tokens_and_template_parity_must_be_n_of_n_or_are_listed_as_skipped():
    assert _rows(gate(_fidelity(prompt_tokens=7))) == ["prompt tokens"]
    assert _rows(gate(_fidelity(parity="11/12 conversations"))) == ["template parity"]
    skipped = gate(_fidelity(prompt_tokens=None, parity="skipped: Go is not installed"))
    assert skipped.passed and skipped.skipped == [
        "prompt tokens: not checked", "template parity: skipped: Go is not installed"
    ]


def test_a_new_row_joins_the_gate_as_one_more_rule(monkeypatch):
    def trained_vs_merged(fidelity, result):
        result.failures.append(Failure("trained vs merged", "0.9 < 0.99"))

    monkeypatch.setattr(fidelity_gate, "RULES", [*fidelity_gate.RULES, trained_vs_merged])
    assert _rows(gate(_fidelity())) == ["trained vs merged"]


@pytest.mark.slow
def test_a_failing_export_exits_2_keeps_the_files_and_marks_the_manifest(trained_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from quicktune.cli import main
    from quicktune.runs import read_manifest

    run_dir = tmp_path / "runs" / trained_run.run_dir.parent.name / trained_run.run_dir.name
    shutil.copytree(trained_run.run_dir, run_dir)
    # A floor no GGUF can reach: the real export and check run, and the q4_k_m row fails.
    monkeypatch.setitem(SAME_TOP_TOKEN_FLOORS, "q4_k_m", 1.01)
    done = CliRunner().invoke(main, ["export", str(run_dir), "--prompts", "2"])
    assert done.exit_code == 2, done.output
    assert "fidelity check failed (q4_k_m)" in done.output and "below its floor 101%" in done.output
    assert "Fidelity on 2 held-out prompts" in done.output  # the table is shown before the error
    assert "manifest.json" in done.output
    record = read_manifest(run_dir)["export"]
    assert record["fidelity"]["passed"] is False
    assert record["fidelity"]["failures"] == [{"row": "q4_k_m", "what": "same top token " + format(
        next(r["same_top_token"] for r in record["fidelity"]["ggufs"] if r["name"] == "q4_k_m"), ".1%"
    ) + ", below its floor 101%"}]
    assert (run_dir / record["ggufs"]["q4_k_m"]["file"]).is_file()
    assert (run_dir / record["modelfiles"]["q4_k_m"]).is_file()

    skipped = CliRunner().invoke(main, ["export", str(run_dir), "--no-verify"])
    assert skipped.exit_code == 0, skipped.output

    monkeypatch.setitem(SAME_TOP_TOKEN_FLOORS, "q4_k_m", 0.0)  # the rest of the gate as it is
    passed = CliRunner().invoke(main, ["export", str(run_dir), "--prompts", "2"])
    assert passed.exit_code == 0, passed.output
    assert read_manifest(run_dir)["export"]["fidelity"]["passed"] is True
