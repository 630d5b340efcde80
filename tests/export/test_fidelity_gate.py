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
    # ... and where everything is, with the ollama create line, marked as not verified (issue 34)
    assert "files (not verified):" in done.output and "-q4_k_m.gguf" in done.output
    assert "Ollama (not verified: the fidelity check failed, see below):" in done.output
    assert "ollama create " in done.output and "Modelfile.q4_k_m" in done.output
    assert done.output.index("ollama create ") < done.output.index("fidelity check failed (q4_k_m)")
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


# --- ties: near-ties of the merged model that the GGUF breaks the other way -------------------------------


def _top(*positions: dict[int, float]) -> list[dict[int, float]]:
    return list(positions)


def test_a_gguf_token_far_below_the_reference_s_is_a_difference_not_a_tie():
    from quicktune.export.gate import TIE_TOLERANCE
    from quicktune.export.gguf_check import compare_answer

    reference = [5, 6, 7, 2]
    # At token 2 the merged model rates 6 at -0.1 and 9 at -2.4: the GGUF answering 9 there is a real difference.
    top = _top({5: -0.01}, {6: -0.1, 9: -2.4}, {7: -0.2}, {2: -0.05})
    compared = compare_answer(reference, top, lambda k: [5, 9, 7, 2][k:] if k == 0 else reference[k:], TIE_TOLERANCE)
    assert not compared.identical and compared.ties == []
    assert compared.difference == {"token": 2, "of": 4, "gap": 2.3}
    # ... and the gate fails it, saying where and by how much
    row = GgufFidelity("f16", 0.75, greedy_agreement=0.25, identical_answers=0, stops=1, ties=0,
                       differences=[{"prompt": 1, **compared.difference}])
    fidelity = Fidelity(prompts=1, max_new_tokens=96, reference_stops=1, prompt_tokens_equal=1,
                        template_parity="6/6 conversations", ggufs=[row])
    failure = gate(fidelity).failures[0]
    assert failure.row == "f16" and "0/1 prompts" in failure.what
    assert "prompt 1 at token 2 of 4, 2.300 nats below the merged model's token" in failure.what


def test_a_near_tie_broken_the_other_way_is_a_tie_and_the_rest_is_compared_fed_the_reference_token():
    from quicktune.export.gate import TIE_TOLERANCE
    from quicktune.export.gguf_check import compare_answer

    reference = [5, 6, 7, 8, 2]
    gap = TIE_TOLERANCE / 2
    top = _top({5: -0.01}, {6: -0.69, 9: -0.69 - gap}, {7: -0.2}, {8: -0.3, 4: -1.5}, {2: -0.05})
    asked = []

    def continue_from(k):  # the GGUF: 9 where the reference has 6; fed the reference's 6, it goes on as the reference
        asked.append(k)
        return [5, 9, 3, 3, 2] if k == 0 else reference[k:]

    compared = compare_answer(reference, top, continue_from, TIE_TOLERANCE)
    assert compared.identical and compared.ties == [{"token": 2, "gap": round(gap, 4)}] and asked == [0, 2]
    assert compared.first_answer == [5, 9, 3, 3, 2] and compared.answer == reference

    # After the tie, a real difference still fails: fed 6, the GGUF answers 4 where the reference says 8.
    def parts_later(k):
        return [5, 9, 3, 3, 2] if k == 0 else [7, 4, 2]

    later = compare_answer(reference, top, parts_later, TIE_TOLERANCE)
    assert not later.identical and later.ties == [{"token": 2, "gap": round(gap, 4)}]
    assert later.difference == {"token": 4, "of": 5, "gap": 1.2}
    # A token the merged model did not rank among its best, or an answer that stops early, is no tie.
    assert compare_answer(reference, top, lambda k: [5, 1, 7, 8, 2], TIE_TOLERANCE).difference == {"token": 2, "of": 5}
    assert compare_answer(reference, top, lambda k: [5, 6, 2], TIE_TOLERANCE).difference == {"token": 3, "of": 5}


def test_a_tie_on_the_last_token_ends_the_answer_as_the_reference_does():
    from quicktune.export.gguf_check import compare_answer

    reference = [5, 2]
    top = _top({5: -0.01}, {2: -0.70, 7: -0.71})
    compared = compare_answer(reference, top, lambda k: [5, 7, 7, 7] if k == 0 else [99], 0.05)
    assert compared.identical and compared.answer == reference and len(compared.ties) == 1


def test_ties_pass_the_gate_and_are_shown_in_the_table():
    from quicktune import console as qt_console

    row = GgufFidelity("f16", 0.997, greedy_agreement=0.991, identical_answers=8, stops=8, ties=1)
    fidelity = Fidelity(prompts=8, max_new_tokens=96, reference_stops=8, prompt_tokens_equal=8,
                        template_parity="13/13 conversations", ggufs=[row, GgufFidelity("q4_k_m", 0.965)])
    assert gate(fidelity).passed
    with qt_console.console.capture() as captured:
        qt_console.print_fidelity(fidelity)
    assert "8/8 (1 tie)" in captured.get()


@pytest.mark.slow
def test_the_issue_s_export_passes_with_its_near_tie_counted_as_a_tie(tmp_path):
    """The export from issue 34, for real: the demo recipe trained 6 steps, exported with the 8-prompt check.
    Its F16 GGUF parts from the merged model where the merged model's two best tokens are 0.009 nats apart
    (prompt 5, its 39th answer token, on the 7 December 2026 machine): the strict rule failed it (7/8 identical);
    as a tie it passes, counted in the table, and the rest of that answer was compared fed the merged
    model's token."""
    from click.testing import CliRunner

    from quicktune.cli import main
    from quicktune.export.exporter import export_run
    from quicktune.export.gate import TIE_TOLERANCE
    from quicktune.runs import read_manifest

    runs = tmp_path / "runs"
    trained = CliRunner().invoke(main, ["train", "smollm2-demo", "--set", "training.max_steps=6",
                                        "--runs-dir", str(runs)])
    assert trained.exit_code == 0, trained.output
    result = export_run(runs / "smollm2-demo" / "v1", prompts=8)  # raises FidelityFailed if the gate fails
    assert result.gate.passed
    f16 = result.fidelity.ggufs[0]
    assert f16.identical_answers == 8 and f16.differences == []
    # The case itself: the F16 file's own greedy answers are not all the merged model's (the strict rule
    # would fail it), and every place they part is a tie within the tolerance.
    if f16.ties == 0:  # F16 rounding and llama.cpp's summation order depend on the CPU's SIMD path
        pytest.skip("no near-tie flipped on this CPU (it did on the 7 December 2026 AVX-512 machine): the export "
                    "passed, and there is no tie to check here")
    assert f16.greedy_agreement < 1.0
    assert len(f16.tied) == f16.ties and all(0 <= tie["gap"] <= TIE_TOLERANCE for tie in f16.tied), f16.tied
    record = read_manifest(result.run_dir)["export"]["fidelity"]
    assert record["passed"] is True and record["ggufs"][0]["tied"] == f16.tied
