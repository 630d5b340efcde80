"""`quicktune eval RUN --data FEEDBACK --review OUT`: the rows a real (short) SmolLM2 run got wrong, to correct."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.metrics import normalized_match
from tests.conftest import chat, copy_run, write_jsonl

pytestmark = pytest.mark.slow

QUESTIONS = ["One word for moss?", "One word for dunes?", "One word for lamps?"]


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """The session's run in a folder of its own: this module's eval reports stay out of the shared one."""
    return copy_run(trained_run.run_dir, tmp_path_factory.mktemp("review-runs") / "tiny-export" / "v1")


def _eval(run_dir, feedback, out, *extra):
    return CliRunner().invoke(main, [
        "eval", str(run_dir), "--data", str(feedback), "--against", "none", "--max-new-tokens", "8",
        "--runs-dir", str(run_dir.parent.parent), "--review", str(out), *extra,
    ])


def _answers(run_dir, rows: int) -> tuple[list[str], list[str]]:
    """The run's answers and the references in the report just written (``--against none``: alone-*.json)."""
    [path] = sorted((run_dir / "eval").glob("alone-*.json"), key=lambda p: p.stat().st_mtime)[-1:]
    report = json.loads(path.read_text())
    assert report["data"]["rows"] == rows
    [subject] = report["subjects"]
    return [a["text"] for a in subject["answers"]], report["references"]


def test_review_writes_the_wrong_rows_with_the_runs_answers(run_copy, tmp_path):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [chat(q, f'{{"word": "{q[13:-1]}"}}') for q in QUESTIONS])
    every = tmp_path / "every.jsonl"
    result = _eval(run_copy, feedback, every, "--review-all")
    assert result.exit_code == 0, result.output
    assert f"3 of 3 held-out rows (every row) in {every}" in result.output and '"accept": true' in result.output
    answers, references = _answers(run_copy, 3)
    rows = [json.loads(line) for line in every.read_text().splitlines()]
    assert [r["model_answer"] for r in rows] == answers
    assert [r["expected"] for r in rows] == [r["corrected"] for r in rows] == references
    assert [r["messages"] for r in rows] == [[{"role": "user", "content": q}] for q in QUESTIONS]  # no recipe system
    assert rows[0]["source"] == {"file": str(feedback), "line": 1, "run": "tiny-export/v1",
                                              "metric": "normalized_match",
                                              "wrong": not normalized_match(answers[0], references[0])}
    assert all(r["accept"] is None for r in rows)

    # the second row's reference becomes what the run answered: right now; the others stay wrong
    rows_in = [chat(q, f'{{"word": "{q[13:-1]}"}}') for q in QUESTIONS]
    rows_in[1]["messages"][-1]["content"] = answers[1].strip() or "x"
    feedback = write_jsonl(tmp_path / "feedback2.jsonl", rows_in)
    wrong = tmp_path / "wrong.jsonl"
    result = _eval(run_copy, feedback, wrong)
    assert result.exit_code == 0, result.output
    answers, references = _answers(run_copy, 3)
    marked = [i for i, (a, r) in enumerate(zip(answers, references)) if not normalized_match(a, r)]
    rows = [json.loads(line) for line in wrong.read_text().splitlines()]
    assert [r["source"]["line"] - 1 for r in rows] == marked
    assert [r["model_answer"] for r in rows] == [answers[i] for i in marked]
    assert 1 not in marked or not answers[1].strip()
    assert f"{len(marked)} of 3 held-out rows (the rows it got wrong by normalized_match)" in result.output

    # an existing OUT (it may hold edits) is refused before anything loads; --force replaces it
    wrong.write_text("my edits\n")
    refused = _eval(run_copy, feedback, wrong)
    assert refused.exit_code == 2 and "the file exists" in refused.output and "--force" in refused.output
    assert wrong.read_text() == "my edits\n"
    alone = CliRunner().invoke(main, ["eval", str(run_copy), "--review-all"])
    assert alone.exit_code == 2 and "--review-all goes with --review" in alone.output


def test_reviewed_answers_become_training_rows(run_copy, trained_run, tmp_path):
    """The --review output, edited by hand, through `data accept` (eval file: the recipe's data.eval)."""
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [chat(q, "wrong on purpose") for q in QUESTIONS[:2]])
    review = tmp_path / "review.jsonl"
    assert _eval(run_copy, feedback, review).exit_code == 0
    rows = [json.loads(line) for line in review.read_text().splitlines()]
    assert len(rows) == 2  # no answer of the run is "wrong on purpose"
    rows[0]["corrected"], rows[0]["accept"] = '{"word": "moss"}', True
    write_jsonl(review, rows)
    into = tmp_path / "corrections.jsonl"
    result = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into),
                                       "-r", str(run_copy / "recipe.yaml")])
    assert result.exit_code == 0, result.output
    assert "accepted 1, unreviewed 1" in result.output
    assert [json.loads(line) for line in into.read_text().splitlines()] == [
        {"messages": [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": '{"word": "moss"}'}]}
    ]
