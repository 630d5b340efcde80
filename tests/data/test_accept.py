"""`quicktune data accept`: a reviewed file (as `eval --review` writes it) becomes training rows. No model loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from quicktune.cli import main
from quicktune.data.check import load_examples
from quicktune.data.heldout import EvalSet
from quicktune.evaluate.review import review_rows, write_review
from quicktune.evaluate.runner import EvalReport, SubjectResult
from quicktune.metrics import Answer
from tests.conftest import chat, write_jsonl

QUESTIONS = ["Capital of France?", "Two plus two?", "Colour of the sky?", "Opposite of hot?",
             "Largest planet in the solar system?"]


def _review_file(folder: Path, eval_file: Path) -> Path:
    """What `eval --review-all` writes for a run that answered every feedback question "no idea";
    the last feedback row asks what the eval file's first row asks."""
    feedback = write_jsonl(folder / "feedback.jsonl", [chat(q, f"answer {i}") for i, q in enumerate(QUESTIONS)])
    examples, _ = load_examples([str(feedback)])
    run = SubjectResult("tiny/v1", "hf", {}, None, [Answer("no idea", True) for _ in examples])
    report = EvalReport(folder / "runs" / "tiny" / "v1", EvalSet(examples, str(feedback)), "normalized_match", [run])
    path = folder / "review.jsonl"
    write_review(path, review_rows(report, every_row=True))
    return path


def _edit(path: Path, edits: dict[int, dict]) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for index, changes in edits.items():
        rows[index].update(changes)
    write_jsonl(path, rows)
    return rows


def test_accepted_rows_become_training_rows_once_and_leaks_are_refused(tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [chat("largest planet in the solar system", "Jupiter")])
    review = _review_file(tmp_path, eval_file)
    rows = _edit(review, {
        0: {"accept": True},  # the expected answer, as it is
        1: {"corrected": "Four."},  # edited, accept left at null: taken
        3: {"accept": False},  # declined; row 2 left as written: unreviewed
        4: {"accept": True},  # asks what the eval row asks: refused
    })
    assert rows[0]["model_answer"] == "no idea" and rows[0]["expected"] == rows[0]["corrected"] == "answer 0"
    assert rows[0]["source"]["line"] == 1 and rows[0]["source"]["run"] == "tiny/v1"
    into = tmp_path / "corrections.jsonl"

    result = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into), "--eval", str(eval_file)])
    assert result.exit_code == 0, result.output
    assert "accepted 2, unreviewed 1, declined 1, duplicates 0, leaked (refused) 1" in result.output
    assert f"{review}:5" in result.output and f"{eval_file}:1" in result.output
    written = [json.loads(line) for line in into.read_text().splitlines()]
    assert written == [
        {"messages": [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "answer 0"}]},
        {"messages": [{"role": "user", "content": QUESTIONS[1]}, {"role": "assistant", "content": "Four."}]},
    ]
    before = into.read_bytes()

    again = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into), "--eval", str(eval_file)])
    assert again.exit_code == 0, again.output
    assert "accepted 0, unreviewed 1, declined 1, duplicates 2, leaked (refused) 1" in again.output
    assert into.read_bytes() == before

    _edit(review, {2: {"accept": True}})  # one more reviewed: appended after the others
    more = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into), "--eval", str(eval_file)])
    assert more.exit_code == 0, more.output
    assert into.read_bytes().startswith(before) and len(into.read_text().splitlines()) == 3


def test_the_recipes_eval_file_is_what_leakage_is_checked_against(tmp_path, make_recipe, tiny_data):
    _, held = tiny_data  # "One word for snow?" and "One word for figs?"
    recipe = make_recipe(eval_file=True)
    review = write_jsonl(tmp_path / "review.jsonl", [
        {"messages": [{"role": "user", "content": "One word for snow?"}], "corrected": "cold", "accept": True},
        {"messages": [{"role": "user", "content": "One word for sand?"}], "corrected": "dry", "accept": True},
    ])
    into = tmp_path / "corrections.jsonl"
    result = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into), "-r", recipe._source])
    assert result.exit_code == 0, result.output
    assert f"{review}:1" in result.output and f"{held}:1" in result.output
    assert [json.loads(line)["messages"][0]["content"] for line in into.read_text().splitlines()] == [
        "One word for sand?"]

    unchecked = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(tmp_path / "c2.jsonl")])
    assert unchecked.exit_code == 0 and "not checked for eval leakage" in unchecked.output


def test_a_broken_line_names_file_line_and_field_and_writes_nothing(tmp_path):
    into = write_jsonl(tmp_path / "corrections.jsonl", [chat("kept?", "yes")])
    before = into.read_bytes()
    review = write_jsonl(tmp_path / "review.jsonl", [
        {"messages": [{"role": "user", "content": "ok?"}], "corrected": "fine", "accept": True},
        {"messages": [{"role": "user", "content": "where is it?"}], "accept": True},  # no corrected
        '{"messages": [',  # cut short
        {"messages": [{"role": "user", "content": "x"}], "corrected": "y", "accept": "yes"},
        {"messages": [{"role": "robot", "content": "x"}], "corrected": "y", "accept": True},
    ])
    result = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(into)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{review}:2: corrected" in result.output
    assert f"{review}:3: invalid JSON" in result.output
    assert f"{review}:4: accept" in result.output
    assert f"{review}:5: messages[0]" in result.output
    assert into.read_bytes() == before and list(tmp_path.glob(".corrections*")) == []

    fresh = tmp_path / "new.jsonl"
    result = CliRunner().invoke(main, ["data", "accept", str(review), "--into", str(fresh)])
    assert result.exit_code == 2 and not fresh.exists()


def test_accepting_a_thousand_rows_imports_no_torch(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}: what is {i} times 3?"}],
             "model_answer": "?", "expected": str(i * 3), "corrected": str(i * 3), "accept": True if i % 4 else None,
             "source": {"file": "feedback.jsonl", "line": i + 1, "run": "tiny/v1"}} for i in range(1000)]
    review = write_jsonl(tmp_path / "review.jsonl", rows)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [chat("question 7: what is 7 times 3?", "21")])
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from quicktune.data.accept import accept_reviewed
        start = time.perf_counter()
        result = accept_reviewed(Path({str(review)!r}), Path({str(tmp_path / 'c.jsonl')!r}),
                                 eval_files=[{str(eval_file)!r}])
        seconds = time.perf_counter() - start
        print(result.accepted, result.unreviewed, len(result.leaked), "torch" in sys.modules, f"{{seconds:.3f}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          check=False)
    assert done.returncode == 0, done.stderr
    accepted, unreviewed, leaked, torch, seconds = done.stdout.split()
    assert (accepted, unreviewed, leaked, torch) == ("749", "250", "1", "False")
    print(f"data accept, 1,000 reviewed rows: {seconds} s")
