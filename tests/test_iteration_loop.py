"""The iteration loop of issue 18 through the CLI, on the real SmolLM2: one way to name a run,
eval reports that are kept, the GGUF that chat picks, chat inside its context, Ctrl-C's exit
status, and a run too short to log a loss."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.runs import read_manifest, write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs_root(trained_run, tmp_path_factory) -> Path:
    """Two runs of one recipe, v1 and v2: copies of the session's trained run (no export, no eval)."""
    root = tmp_path_factory.mktemp("loop") / "runs"
    for version in ("v1", "v2"):
        target = root / trained_run.run_dir.parent.name / version
        shutil.copytree(trained_run.run_dir, target, ignore=shutil.ignore_patterns("export", "eval*"))
        manifest = read_manifest(target)
        manifest.pop("export", None)
        write_manifest(target, {**manifest, "version": version})
    return root


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def test_every_command_takes_the_same_run_references(runs_root):
    run = runs_root / "tiny-export" / "v1"
    compare = ["runs", "--runs-dir", str(runs_root), "compare", "v1", "v9"]
    for command in (["eval", "v9"], ["export", "v9"], ["chat", "v9"], compare):
        args = command if command[0] == "runs" else [*command, "--runs-dir", str(runs_root)]
        result = cli(*args)
        assert result.exit_code == 2, (command, result.output)
        assert "no run found at 'v9'" in result.output, command
        assert f"runs in {runs_root}: tiny-export/v1, tiny-export/v2" in flat(result.output), command
        assert "Traceback" not in result.output

    compared = cli("runs", "--runs-dir", str(runs_root), "compare", "v1", "v2")  # bare versions: one recipe
    assert compared.exit_code == 0, compared.output
    assert "tiny-export/v1 vs tiny-export/v2" in compared.output

    recipe = str(run / "recipe.yaml")
    for parent in ("v1", "tiny-export/v1", str(run), str(run / "adapter")):
        done = cli("train", recipe, "--from", parent, "--dry-run", "--runs-dir", str(runs_root))
        assert done.exit_code == 0, (parent, done.output)
        assert f"starts from the adapter of {run.resolve()}" in flat(done.output)
    refused = cli("train", recipe, "--from", "v7", "--dry-run", "--runs-dir", str(runs_root))
    assert refused.exit_code == 2 and "tiny-export/v1, tiny-export/v2" in flat(refused.output)


def _reports(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*.json"))}


def test_eval_keeps_each_comparison_and_runs_reads_the_right_one(runs_root, wide_console):
    v1, v2 = runs_root / "tiny-export" / "v1", runs_root / "tiny-export" / "v2"
    budget = ["--max-new-tokens", "8", "--runs-dir", str(runs_root)]
    asked = (
        ["v1", "--limit", "2"], ["v2", "--against", "v1", "--limit", "2"], ["v1", "--against", "none", "--limit", "1"]
    )
    for args in asked:
        done = cli("eval", *args, *budget)
        assert done.exit_code == 0, (args, done.output)
        assert "replaces" not in done.output

    first = _reports(v1)
    two_rows = next(r for r in first.values() if r["against"] == "base")["data"]["sha256"]
    one_row = next(r for r in first.values() if r["against"] is None)["data"]["sha256"]
    assert two_rows != one_row
    assert sorted(first) == sorted([f"base-{two_rows[:12]}.json", f"alone-{one_row[:12]}.json"])
    assert all((v1 / "eval" / name).with_suffix(".png").is_file() for name in first)
    assert list(_reports(v2)) == [f"tiny-export-v1-{two_rows[:12]}.json"]

    # the headline: the latest report against base, not the later one of v1 alone
    base_report = first[f"base-{two_rows[:12]}.json"]
    own = next(s for s in base_report["subjects"] if s["label"] == "tiny-export/v1")
    listed = cli("runs", "--runs-dir", str(runs_root))
    assert listed.exit_code == 0, listed.output
    metric = base_report["metric"]  # the recipe's eval.metric (normalized_match by default)
    assert f"{metric} {own['metrics'][metric]:.1%}" in listed.output

    compared = cli("runs", "--runs-dir", str(runs_root), "compare", "v1", "v2")
    assert compared.exit_code == 0, compared.output
    assert f"eval scores from tiny-export/v2/eval/tiny-export-v1-{two_rows[:12]}.json" in flat(compared.output)
    assert "held-out rows (sha256)" in compared.output

    again = cli("eval", "v1", "--limit", "2", *budget)  # the same question on the same rows
    assert again.exit_code == 0 and "replaces the earlier report of this same comparison" in flat(again.output)
    assert sorted(_reports(v1)) == sorted(first)


@pytest.fixture
def wide_console():
    from quicktune.console import console

    width = console.width
    console.width = 250
    yield
    console.width = width


def test_chat_uses_the_quantization_asked_for_and_stays_inside_its_context(runs_root):
    run = runs_root / "tiny-export" / "v1"
    args = ["--runs-dir", str(runs_root)]
    done = cli("export", "v1", "--quant", "q8_0", "--prompts", "2", *args)
    assert done.exit_code == 0, done.output
    manifest = read_manifest(run)
    assert set(manifest["export"]["ggufs"]) == {"f16", "q8_0"}
    assert [row["name"] for row in manifest["export"]["fidelity"]["ggufs"]] == ["f16", "q8_0"]

    # only q8_0 was asked for: chat uses it, and says so (not the F16 reference)
    chatted = CliRunner().invoke(main, ["chat", "v1", *args], input="/exit\n")
    assert chatted.exit_code == 0, chatted.output
    assert "chatting with tiny-export/v1 (q8_0), a 2048-token context" in flat(chatted.output)
    modelfile = (run / "export" / "Modelfile.q8_0").read_text()
    assert "\nPARAMETER num_ctx 2048\n" in modelfile  # not max_seq_length (96): a chat grows by every turn
    why = ("# num_ctx 2048: max(model.max_seq_length 96, 2048): room for several turns; "
           "the base model was trained on 8192")
    assert why in modelfile

    # export without --quant writes the recipe's q4_k_m and checks the q8_0 added before as well
    again = cli("export", "v1", "--prompts", "2", *args)
    assert again.exit_code == 0, again.output
    rows = [row["name"] for row in read_manifest(run)["export"]["fidelity"]["ggufs"]]
    assert sorted(rows) == ["f16", "q4_k_m", "q8_0"]

    # the export folder and a GGUF inside it name the run (the GGUF: with its quantization)
    q4 = next((run / "export").glob("*-q4_k_m.gguf"))
    for ref, label in ((run / "export", "tiny-export/v1 ("), (q4, "tiny-export/v1 (q4_k_m)")):
        chatted = CliRunner().invoke(main, ["chat", str(ref), *args], input="/exit\n")
        assert chatted.exit_code == 0 and f"chatting with {label}" in chatted.output, chatted.output

    # a long talk in a small context: the oldest exchanges go, and the chat says so
    long = ("Please read this sentence about the weather in the hills near the old town, "
            "then answer with one JSON object.")
    lines = [f"{long} Message {i}." for i in range(6)]
    small = ["chat", "v1", "--quant", "q8_0", "--ctx", "256", "--max-tokens", "24", *args]
    talk = CliRunner().invoke(main, small, input="\n".join([*lines, "/exit"]) + "\n")
    assert talk.exit_code == 0, talk.output
    assert "a 256-token context" in talk.output
    assert "outgrew the 256-token context: forgot the oldest" in flat(talk.output)
    assert talk.output.count("model ›") == len(lines)


def test_the_session_never_sends_more_than_its_context(runs_root):
    from quicktune.chat import open_session, resolve_target

    target = resolve_target("v1", runs_root, "q8_0", num_ctx=256)
    session = open_session(target, max_tokens=24)
    n_ctx, dropped = session.llm.n_ctx(), 0
    for i in range(6):
        message = f"Tell me about the weather in the hills near the old town, part {i}, as one JSON object."
        pieces = session.reply(message)  # the history is trimmed now; the answer comes as it streams
        sent = session.prompt_tokens(session.messages(message))
        assert len(sent) + min(24, n_ctx // 4) <= n_ctx  # the prompt, with room for the answer
        "".join(pieces)
        dropped += session.dropped
    assert dropped >= 1 and n_ctx == 256


def _train(recipe_file: Path, runs_dir: Path, *sets: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "quicktune", "train", str(recipe_file), "--runs-dir", str(runs_dir)]
    command += [f"--set={item}" for item in sets]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(make_recipe, tmp_path):
    make_recipe("tiny", steps=400)
    recipe_file, runs_dir = tmp_path / "tiny.yaml", tmp_path / "runs"
    process = _train(recipe_file, runs_dir, "training.logging_every=1")
    metrics = runs_dir / "tiny" / "v1" / "metrics.jsonl"
    deadline = time.monotonic() + 1800  # loading Unsloth and the model took ~10 min on a shared, busy 2-core VM
    while not (metrics.is_file() and metrics.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"training never logged a step (exit status {process.poll()})")
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (out, err)
    text = flat(out)
    assert "interrupted at step" in text and f"Resume with: quicktune train {recipe_file}" in text
    assert "Traceback" not in err
    run = runs_dir / "tiny" / "v1"
    assert read_manifest(run)["status"] == "interrupted" and list((run / "checkpoints").glob("checkpoint-*"))
    readme = (run / "checkpoints" / "README.md").read_text()
    assert "# Checkpoints of tiny/v1" in readme and "[None]" not in readme  # ours, not TRL's model card


def test_a_run_too_short_to_log_a_loss_ends_with_the_summary(make_recipe, tmp_path):
    make_recipe("tiny", steps=2, eval_file=True)
    process = _train(tmp_path / "tiny.yaml", tmp_path / "runs", "training.logging_every=5")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, (out, err)
    text = flat(out)
    assert "✓ trained" in text and "no loss logged (fewer steps than training.logging_every)" in text
    run = tmp_path / "runs" / "tiny" / "v1"
    for command in ("export", "eval", "chat"):
        assert f"quicktune {command} {run}" in text, command
    assert "fine-tuned version of" not in (run / "checkpoints" / "README.md").read_text()
