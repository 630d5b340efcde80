"""Export on the real SmolLM2: run folder -> merged -> GGUF -> quantized -> Modelfile -> fidelity, chat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune import llamacpp
from quicktune.cli import main
from quicktune.errors import QuicktuneError
from quicktune.export.exporter import export_run
from quicktune.models import read_gguf_fields
from quicktune.runs import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained_run):
    return export_run(trained_run.run_dir, prompts=2, max_new_tokens=24)


def test_export_writes_gguf_modelfile_and_fidelity(exported, trained_run):
    from quicktune.models import resolve_model
    from tests.conftest import SMOLLM2

    f16, q4 = exported.ggufs["f16"], exported.ggufs["q4_k_m"]
    assert f16.name == f"{exported.name}-f16.gguf" and q4.is_file() and f16.is_file()
    assert not list(exported.export_dir.glob(".*"))  # no temporary file left behind

    fields = read_gguf_fields(f16)
    source = read_gguf_fields(resolve_model(SMOLLM2).path, "tokenizer.")
    assert fields["general.architecture"] == "llama"
    assert fields["general.name"] == exported.name
    assert fields["tokenizer.ggml.pre"] == "smollm"  # llama.cpp's SmolLM2 pre-tokenizer, not "default"
    assert fields["tokenizer.ggml.tokens"] == source["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.merges"] == source["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.tokens"][fields["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    trained_template = (trained_run.adapter_dir / "chat_template.jinja").read_text(encoding="utf-8")
    assert fields["tokenizer.chat_template"] == trained_template
    assert read_gguf_fields(q4, "tokenizer.chat_template")["tokenizer.chat_template"] == trained_template

    fidelity = exported.fidelity
    f16_row = fidelity.ggufs[0]
    assert f16_row.name == "f16" and f16_row.identical_answers == fidelity.prompts == 2
    assert f16_row.same_top_token == 1.0 and f16_row.greedy_agreement == 1.0
    assert fidelity.prompt_tokens_equal == 2  # Ollama's prompt, tokenized by llama.cpp == training tokens
    assert [row.name for row in fidelity.ggufs] == ["f16", "q4_k_m"]

    modelfile = exported.modelfiles["q4_k_m"].read_text(encoding="utf-8")
    assert f"FROM ./{q4.name}\n" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0\n" in modelfile
    assert 'SYSTEM """Answer with one JSON object."""' in modelfile

    record = read_manifest(trained_run.run_dir)["export"]
    assert record["ggufs"]["q4_k_m"]["file"] == f"export/{q4.name}"
    assert record["ggufs"]["f16"]["bytes"] == f16.stat().st_size
    assert record["fidelity"]["ggufs"][0]["identical_answers"] == 2
    assert record["metadata"]["pre_tokenizer"] == "smollm"
    # SmolLM2's template has no tools or thinking: Ollama renders the TEMPLATE, checked with Go.
    assert record["metadata"]["ollama_renderer"] == "go"
    assert fidelity.ollama_renderer == "Go TEMPLATE (template has no tools or thinking)"
    assert "# Ollama renders prompts with: Go TEMPLATE (template has no tools or thinking).\n" in modelfile


def test_llama_cpp_loads_it_without_tokenizer_warnings(exported):
    code = "import llama_cpp, sys; llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=True)"
    for path in (exported.ggufs["f16"], exported.ggufs["q4_k_m"]):
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-2000:]
        assert "tokenizer.ggml.pre" in log and "smollm" in log
        assert "missing pre-tokenizer" not in log and "DEGRADED" not in log


def test_reexport_adds_a_quantization_and_keeps_the_rest(exported, trained_run):
    before = {p.name: p.stat().st_mtime_ns for p in exported.export_dir.glob("*.gguf")}
    result = export_run(trained_run.run_dir, ["q8_0"], verify=False)
    assert set(result.reused) >= {"merged", "f16"}
    assert result.ggufs["q8_0"].is_file() and (exported.export_dir / "Modelfile.q8_0").is_file()
    assert dict(before) == {
        p.name: p.stat().st_mtime_ns for p in exported.export_dir.glob("*.gguf") if p.name in before
    }
    record = read_manifest(trained_run.run_dir)["export"]
    assert set(record["ggufs"]) == {"f16", "q4_k_m", "q8_0"}
    assert record["fidelity"]["prompts"] == 2  # the earlier check is kept, not erased
    assert [row["name"] for row in record["fidelity"]["ggufs"]] == ["f16", "q4_k_m"]


def test_chat_answers_with_the_trained_template(exported, trained_run):
    result = CliRunner().invoke(
        main, ["chat", str(trained_run.run_dir), "--prompt", "One word for tea?", "--max-tokens", "24"]
    )
    assert result.exit_code == 0, result.output
    answer = result.output.strip()
    assert answer and "<|im_end|>" not in answer and "<|im_start|>" not in answer

    from quicktune.chat import open_session, resolve_target

    session = open_session(resolve_target(str(trained_run.run_dir), Path("runs"), "q4_k_m"), max_tokens=8)
    first = "".join(session.reply("One word for rain?"))
    assert session.history == [
        {"role": "user", "content": "One word for rain?"},
        {"role": "assistant", "content": first},
    ]
    tokens = session.prompt_tokens(session.messages("again"))
    assert session.llm.tokenize(b"Answer with one JSON object.", add_bos=False)[0] in tokens  # recipe's system prompt
    session.reset()
    assert session.history == []


def test_a_killed_export_leaves_nothing_at_the_final_path(exported, trained_run):
    target = exported.export_dir / f"{exported.name}-bf16.gguf"
    command = [sys.executable, "-m", "quicktune", "export", str(trained_run.run_dir), "--quant", "bf16", "--no-verify"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(exported.export_dir.glob(".*.partial")):
        assert process.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the converter child too, as a closed terminal would
    process.wait()
    assert not target.exists()

    again = CliRunner().invoke(main, ["export", str(trained_run.run_dir), "--quant", "bf16", "--no-verify"])
    assert again.exit_code == 0, again.output
    assert "left by an export that was stopped" in again.output
    assert target.is_file() and not list(exported.export_dir.glob(".*.partial"))


def test_atomic_path_keeps_nothing_when_the_writer_fails(tmp_path):
    final = tmp_path / "model.gguf"
    with pytest.raises(KeyboardInterrupt), llamacpp.atomic_path(final) as temp:
        temp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_unfinished_run(trained_run, tmp_path):
    run_dir = tmp_path / "runs" / "tiny" / "v1"
    run_dir.mkdir(parents=True)
    manifest = read_manifest(trained_run.run_dir)
    manifest["status"] = "interrupted"
    manifest.pop("export", None)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "recipe.yaml").write_text((trained_run.run_dir / "recipe.yaml").read_text())
    result = CliRunner().invoke(main, ["export", str(run_dir)])
    assert result.exit_code == 2 and "is not finished" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(QuicktuneError, match="not been exported"):
        from quicktune.chat import resolve_target

        resolve_target(str(run_dir), tmp_path, None)
