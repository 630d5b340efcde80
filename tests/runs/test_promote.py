"""Promotion, rollback and history (issue 32), through the CLI on real runs: the session's SmolLM2 run,
exported and scored once by a real ``quicktune eval``, then copied as v1, v2, ... of a fresh runs folder.

Ollama cannot be installed here (no binary on PyPI, npm or Debian): an ``ollama`` executable of the
tests' own stands in for it on PATH. It records each call's argv and working folder, reads the
Modelfile it is given (and its ``FROM`` GGUF, relative to the Modelfile, as Ollama does), keeps the
models it made, and answers as Ollama's CLI does: ``create`` prints "success"; ``cp`` "copied 'a' to
'b'"; ``show`` describes a model it has and fails with "Error: model 'x' not found" otherwise;
``FAKE_OLLAMA_FAIL=create`` makes ``create`` fail as Ollama does when its server is not running.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.errors import QuicktuneError
from quicktune.runs import (
    HISTORY,
    pick_quantization,
    read_history,
    read_manifest,
    resolve_run,
    run_label,
    write_manifest,
)
from tests.conftest import copy_run

FAKE_OLLAMA = '''#!{python}
import json, os, sys
from pathlib import Path

here = Path(__file__).parent
state = here / "models.json"
models = json.loads(state.read_text()) if state.exists() else {{}}
with open(here / "calls.jsonl", "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")


def full(name):
    return name if ":" in name else name + ":latest"


def fail(message):
    print("Error: " + message, file=sys.stderr)
    sys.exit(1)


command, args = sys.argv[1], sys.argv[2:]
if os.environ.get("FAKE_OLLAMA_FAIL") == command:
    fail("could not connect to ollama app, is it running?")
if command == "create":
    modelfile = Path(args[args.index("-f") + 1])
    if not modelfile.is_file():
        fail(f"open {{modelfile}}: no such file or directory")
    source = next(line.split(None, 1)[1].strip() for line in modelfile.read_text().splitlines()
                  if line.upper().startswith("FROM "))
    gguf = modelfile.parent / source
    if not gguf.is_file():
        fail(f"open {{gguf}}: no such file or directory")
    models[full(args[0])] = {{"from": str(gguf.resolve())}}
    print("success")
elif command == "cp":
    if full(args[0]) not in models:
        fail(f"model '{{args[0]}}' not found")
    models[full(args[1])] = models[full(args[0])]
    print(f"copied '{{args[0]}}' to '{{args[1]}}'")
elif command == "show":
    if full(args[0]) not in models:
        fail(f"model '{{args[0]}}' not found")
    print("  Model\\n    architecture        llama\\n    quantization        Q4_K_M\\n")
else:
    fail(f"unknown command {{command!r}} for \\"ollama\\"")
state.write_text(json.dumps(models))
'''

LEAVE_OUT = ("checkpoints", "merged", "*-f16.gguf")  # what promotion never reads: smaller copies


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """A copy of the session's run, exported here (its recipe's q4_k_m only: other tests export the session's
    run in more quantizations, and which one a promotion tags depends on them) and scored by a real
    ``quicktune eval`` against base."""
    from quicktune.export.exporter import export_run

    source = trained_run.run_dir
    run_dir = copy_run(source, tmp_path_factory.mktemp("promote-source") / source.parent.name / source.name)
    export_run(run_dir, verify=False)
    done = CliRunner().invoke(main, ["eval", str(run_dir), "--limit", "2", "--max-new-tokens", "8"])
    assert done.exit_code == 0, done.output
    return run_dir


def promoted_quant(run_dir: Path) -> str:
    """The quantization a promotion tags: the one ``pick_quantization`` picks (q4_k_m, as ``evaluated`` exports)."""
    return pick_quantization(run_dir, read_manifest(run_dir))


def promoted_modelfile(run_dir: Path) -> str:
    return f"Modelfile.{promoted_quant(run_dir)}"


def add_version(source: Path, root: Path, version: str, *, worse: bool = False,
                leave_out: tuple[str, ...] = LEAVE_OUT) -> Path:
    """A copy of ``source`` as ``root/<recipe>/<version>``. Its eval reports are the real ones ``quicktune
    eval`` wrote for ``source``, relabelled to the copy; ``worse`` edits the copy's own scores to model a
    worse run (every share 0.5 lower, the loss on the answers half again as high)."""
    target = copy_run(source, root / source.parent.name / version, leave_out=leave_out)
    for path in (target / "eval").glob("*.json"):
        report = json.loads(path.read_text(encoding="utf-8"))
        for subject in report.get("subjects", []):  # (a probe report has none)
            if subject["label"] != run_label(source):
                continue
            subject["label"] = run_label(target)
            if worse:
                subject["metrics"] = {k: v if v is None else max(0.0, v - 0.5) for k, v in subject["metrics"].items()}
                subject["loss"] = subject["loss"] * 1.5
        path.write_text(json.dumps(report), encoding="utf-8")
    return target


@pytest.fixture
def ollama(tmp_path, monkeypatch) -> Path:
    """The stand-in ``ollama`` first on PATH; returns its folder (calls.jsonl, models.json)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "ollama"
    script.write_text(FAKE_OLLAMA.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_OLLAMA_FAIL", raising=False)
    return folder


def calls(folder: Path) -> list[tuple[list[str], str]]:
    log = folder / "calls.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    return [(c["argv"], c["cwd"]) for c in map(json.loads, lines)]


def runs_cli(root: Path, *args: str):
    return CliRunner().invoke(main, ["runs", "--runs-dir", str(root), *args])


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def test_promote_refuse_force_resolve_and_roll_back(evaluated, tmp_path, ollama):
    root = tmp_path / "runs"
    v1 = add_version(evaluated, root, "v1")
    v2 = add_version(evaluated, root, "v2", worse=True)
    recipe_dir, export = v1.parent, v1 / "export"
    modelfile = promoted_modelfile(v1)

    first = runs_cli(root, "promote", "v1")
    assert first.exit_code == 0, first.output
    assert calls(ollama) == [
        (["create", "tiny-export:v1", "-f", modelfile], str(export)),
        (["show", "tiny-export:v1"], str(export)),
        (["cp", "tiny-export:v1", "tiny-export:latest"], str(export)),
        (["show", "tiny-export:latest"], str(export)),
    ]
    [entry] = read_history(recipe_dir)
    assert (entry.action, entry.run, entry.why) == ("promote", "tiny-export/v1", "passed the checks")
    assert entry.ollama == "done" and entry.modelfile == f"export/{modelfile}"
    assert entry.tags == ["tiny-export:v1", "tiny-export:latest"] and entry.compared["with"] is None
    listed = runs_cli(root)
    assert listed.exit_code == 0 and listed.output.count("★ promoted") == 1, listed.output
    assert "tiny-export/v1 ★ promoted" in flat(listed.output)

    refused = runs_cli(root, "promote", "v2")
    assert refused.exit_code == 2, refused.output
    assert "tiny-export/v1 (promoted) vs tiny-export/v2" in refused.output and "▼" in refused.output
    assert "is not promoted: worse than the promoted tiny-export/v1 on" in flat(refused.output)
    assert "loss on the answers: " in refused.output and "Traceback" not in refused.output
    assert len(read_history(recipe_dir)) == 1 and len(calls(ollama)) == 4  # nothing recorded, Ollama not asked

    no_reason = runs_cli(root, "promote", "v2", "--force")
    assert no_reason.exit_code == 2 and "--force needs --reason" in no_reason.output
    forced = runs_cli(root, "promote", "v2", "--force", "--reason", "fixes the dates")
    assert forced.exit_code == 0, forced.output
    second = read_history(recipe_dir)[-1]
    assert (second.run, second.why, second.forced, second.replaced) == ("tiny-export/v2", "fixes the dates", True,
                                                                         "tiny-export/v1")
    assert "loss on the answers" in second.compared["regressions"]
    assert second.compared["after"]["loss on the answers"] > second.compared["before"]["loss on the answers"]

    # `promoted` and `promoted~1` name runs everywhere a run is named
    assert resolve_run("promoted", root) == v2.resolve()
    assert resolve_run("promoted~1", root) == v1.resolve()
    assert resolve_run("tiny-export/promoted", root) == v2.resolve()
    assert resolve_run("promoted", root, "tiny-export") == v2.resolve()
    compared = runs_cli(root, "compare", "promoted~1", "promoted")
    assert compared.exit_code == 0 and "tiny-export/v1 vs tiny-export/v2" in compared.output, compared.output
    chat = CliRunner().invoke(main, ["chat", "promoted", "--runs-dir", str(root), "--prompt", "Hi",
                                     "--max-tokens", "4"])
    assert chat.exit_code == 0, chat.output

    back = runs_cli(root, "rollback")
    assert back.exit_code == 0, back.output
    assert calls(ollama)[-3:] == [
        (["show", "tiny-export:v1"], str(export)),
        (["cp", "tiny-export:v1", "tiny-export:latest"], str(export)),
        (["show", "tiny-export:latest"], str(export)),
    ]
    rolled = read_history(recipe_dir)
    assert [(e.action, e.run) for e in rolled] == [("promote", "tiny-export/v1"), ("promote", "tiny-export/v2"),
                                                   ("rollback", "tiny-export/v1")]
    assert rolled[-1].why == "rolled back from tiny-export/v2"
    assert json.loads((ollama / "models.json").read_text())["tiny-export:latest"]["from"].endswith(
        f"v1/export/tiny-export-v1-{promoted_quant(v1)}.gguf")
    assert resolve_run("promoted", root) == v1.resolve()
    with pytest.raises(QuicktuneError, match="no version promoted 1 before the current one"):
        resolve_run("promoted~1", root)
    again = runs_cli(root, "rollback")
    assert again.exit_code == 2 and "nothing to roll back to" in again.output

    shown = runs_cli(root, "history")
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if " by " in line]
    assert "promoted now: tiny-export/v1" in flat(shown.output)
    assert "fixes the dates; checked against tiny-export/v1 (worse on" in flat(shown.output)
    assert "rollback tiny-export/v1" in flat(shown.output) and len(lines) == 3, shown.output

    copy_run(v1, root / "other" / "v1")  # a second recipe: a bare `promoted` no longer says which
    with pytest.raises(QuicktuneError, match="'promoted' is ambiguous") as ambiguous:
        resolve_run("promoted", root)
    assert "e.g. other/promoted" in str(ambiguous.value)
    assert resolve_run("tiny-export/promoted", root) == resolve_run(str(recipe_dir / "promoted"), root) == v1.resolve()


def test_what_cannot_be_promoted(evaluated, tmp_path, ollama):
    root = tmp_path / "runs"
    unscored = add_version(evaluated, root, "v1", leave_out=(*LEAVE_OUT, "eval"))
    refused = runs_cli(root, "promote", "v1")
    assert refused.exit_code == 2 and "has no eval report" in refused.output
    assert "quicktune eval tiny-export/v1" in flat(refused.output)

    add_version(evaluated, root, "v2", leave_out=(*LEAVE_OUT, "export"))
    unexported = runs_cli(root, "promote", "v2")
    assert unexported.exit_code == 2 and "has not been exported yet" in unexported.output
    assert "quicktune export" in unexported.output

    failed = add_version(evaluated, root, "v3")
    write_manifest(failed, {**read_manifest(failed), "status": "failed"})
    assert "only a finished run can be promoted" in runs_cli(root, "promote", "v3").output

    bad_name = runs_cli(root, "promote", "v4", "--as", "My:Model")
    assert bad_name.exit_code == 2 and "no run found" in bad_name.output
    add_version(evaluated, root, "v4")
    assert "not an Ollama model name" in runs_cli(root, "promote", "v4", "--as", "My:Model").output

    assert calls(ollama) == [] and not (unscored.parent / HISTORY).exists()


def test_a_failing_ollama_records_nothing(evaluated, tmp_path, ollama, monkeypatch):
    root = tmp_path / "runs"
    v1 = add_version(evaluated, root, "v1")
    monkeypatch.setenv("FAKE_OLLAMA_FAIL", "create")
    failed = runs_cli(root, "promote", "v1")
    assert failed.exit_code == 2, failed.output
    assert "ollama said: Error: could not connect to ollama app, is it running?" in flat(failed.output)
    assert "Traceback" not in failed.output and not (v1.parent / HISTORY).exists()

    # a rollback to a version whose tag Ollama lost creates it again from its Modelfile
    monkeypatch.delenv("FAKE_OLLAMA_FAIL")
    add_version(evaluated, root, "v2")
    assert runs_cli(root, "promote", "v1").exit_code == 0 and runs_cli(root, "promote", "v2").exit_code == 0
    models = json.loads((ollama / "models.json").read_text())
    (ollama / "models.json").write_text(json.dumps({k: v for k, v in models.items() if k != "tiny-export:v1"}))
    back = runs_cli(root, "rollback", "tiny-export", "--reason", "v2 lost its manners")
    assert back.exit_code == 0, back.output
    export, modelfile = v1 / "export", promoted_modelfile(v1)
    assert [argv for argv, _ in calls(ollama)[-5:]] == [
        ["show", "tiny-export:v1"], ["create", "tiny-export:v1", "-f", modelfile], ["show", "tiny-export:v1"],
        ["cp", "tiny-export:v1", "tiny-export:latest"], ["show", "tiny-export:latest"],
    ]
    assert {cwd for _, cwd in calls(ollama)[-5:]} == {str(export)}
    assert read_history(v1.parent)[-1].why == "v2 lost its manners"


def test_without_ollama_the_commands_are_printed_and_nothing_loads_torch(evaluated, tmp_path):
    root = tmp_path / "runs"
    v1 = add_version(evaluated, root, "v1")
    add_version(evaluated, root, "v2")
    script = (
        "import sys, time\nfrom quicktune.cli import main\nstart = time.perf_counter()\n"
        "for args in (['promote', 'v1'], ['promote', 'v2', '--as', 'extractor'], ['rollback'], ['history']):\n"
        f"    try:\n        main(['runs', '--runs-dir', {str(root)!r}, *args])\n"
        "    except SystemExit as done:\n        assert not done.code, (args, done.code)\n"
        "print('seconds', time.perf_counter() - start, 'torch', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(tmp_path), "COLUMNS": "200"})  # no ollama on PATH
    assert done.returncode == 0, done.stdout + done.stderr
    modelfile = promoted_modelfile(v1)
    assert f"ollama create tiny-export:v1 -f {modelfile}" in done.stdout
    assert "ollama cp tiny-export:v1 tiny-export:latest" in done.stdout
    assert "ollama cp extractor:v2 extractor:latest" in done.stdout
    assert f"cd {v1 / 'export'}" in done.stdout or "cd runs" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith("torch False")
    assert [(e.action, e.ollama, e.name) for e in read_history(v1.parent)] == [
        ("promote", "printed", "tiny-export"), ("promote", "printed", "extractor"),
        ("rollback", "printed", "tiny-export"),
    ]


def test_two_promotions_at_once_one_fails_cleanly(evaluated, tmp_path, ollama):
    root = tmp_path / "runs"
    v1 = add_version(evaluated, root, "v1")
    with open(v1.parent / ".lock", "a+") as held:  # another promotion holding the recipe, as lock_run does
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("process 4242 (quicktune runs promote, since now)\n")
        held.flush()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "quicktune", "runs", "--runs-dir", str(root), "promote", "v1"],
                              capture_output=True, text=True, timeout=60)
        seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert "another promotion or rollback is being recorded: process 4242" in flat(done.stderr)
    assert "Traceback" not in done.stderr and seconds < 20
    assert calls(ollama) == [] and not (v1.parent / HISTORY).exists()
    assert runs_cli(root, "promote", "v1").exit_code == 0  # once it is free
