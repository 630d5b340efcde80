"""The GGUF side of the fidelity check runs in a child process: a crash of llama.cpp there (an uncaught
C++ exception aborts the process) ends in a clear message, and quicktune goes on to report it.

The crash is real: a tiny Llama-architecture model with llama.cpp's real SentencePiece vocabulary
(llama-spm), one byte token renamed, so that tokenizing a character the vocabulary has no piece for
makes ``llama_vocab::byte_to_token`` look the byte up with ``unordered_map::at`` and throw.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quicktune.errors import QuicktuneError
from quicktune.export.gguf_check import check_ggufs

TEXT = "hi \N{LLAMA}"  # U+1F999: not a piece of Llama 2's vocabulary, so byte fallback: <0xF0> <0x9F> ...


def _request(gguf: Path, prompt: list[int], sent) -> dict:
    answer = prompt[:3]
    return {
        "ggufs": {"f16": str(gguf)},
        "prompts": [prompt],
        "reference": [answer],
        "reference_top": [[[[token, -0.1]] for token in answer]],
        "stop_ids": [2],
        "max_new_tokens": 3,
        "tolerance": 0.05,
        "sent": sent,
    }


def test_an_error_in_the_child_comes_back_as_the_same_quicktune_error(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(QuicktuneError, match="not a GGUF file") as raised:
        check_ggufs(_request(not_gguf, [1, 2, 3], None))
    assert "crashed" not in str(raised.value)


@pytest.fixture(scope="module")
def byte_less_gguf(tmp_path_factory, llama_cpp_src) -> tuple[Path, Path]:
    """A tiny model's GGUF, and a copy whose vocabulary lacks the byte token <0xF0>."""
    from quicktune import llamacpp
    from quicktune.models import read_gguf_fields
    from tests.export.test_architectures import ARCHS, Sources, build_model

    folder = tmp_path_factory.mktemp("byte-less")
    arch = next(a for a in ARCHS if a.id == "mistral")
    model_dir = build_model(arch, folder / "model", Sources(None, llama_cpp_src / "models"))
    gguf = llamacpp.convert(model_dir, folder / "model.gguf", "f16", name="tiny")
    tokens = list(read_gguf_fields(gguf, "tokenizer.")["tokenizer.ggml.tokens"])
    tokens[tokens.index("<0xF0>")] = "<0xF0>renamed"
    return gguf, llamacpp.rewrite_metadata(gguf, folder / "byte-less.gguf", values={"tokenizer.ggml.tokens": tokens})


def _tokenize_in_process(gguf: Path) -> subprocess.CompletedProcess:
    """What the check did in quicktune's own process before: load the GGUF and tokenize the text."""
    code = (
        "import sys; from quicktune import llamacpp; "
        "llm = llamacpp.load(sys.argv[1], n_ctx=64); "
        f"print(llm.tokenize({TEXT!r}.encode(), add_bos=False, special=True))"
    )
    return subprocess.run([sys.executable, "-c", code, str(gguf)], capture_output=True, text=True,
                          env={**os.environ, "GGML_NO_BACKTRACE": "1"}, timeout=300)


@pytest.mark.slow
def test_a_crash_of_llama_cpp_in_the_check_ends_in_a_message_not_in_a_dead_quicktune(byte_less_gguf):
    good, broken = byte_less_gguf
    # The fault is real, and in one process it is fatal: llama.cpp aborts (SIGABRT, exit status 134).
    fine = _tokenize_in_process(good)
    assert fine.returncode == 0, fine.stderr
    prompt = ast.literal_eval(fine.stdout.strip().splitlines()[-1])  # the ids llama.cpp gave the text
    crashed = _tokenize_in_process(broken)
    assert crashed.returncode in (-6, 134), crashed.returncode
    assert "std::out_of_range" in crashed.stderr

    # Through the check: the same GGUF and text end in a QuicktuneError that names the crash and the step.
    with pytest.raises(QuicktuneError) as raised:
        check_ggufs(_request(broken, prompt, [(TEXT, False)]))
    message = str(raised.value)
    assert "llama.cpp crashed (SIGABRT, exit status 134) during the export's fidelity check" in message
    assert "(f16: llama.cpp on the same prompts)" in message and "std::out_of_range" in message
    assert "--no-verify" in message

    # ... and the good GGUF goes through the same child and comes back with its row.
    answer = check_ggufs(_request(good, prompt, [(TEXT, False)]))
    assert answer["prompt_tokens_equal"] == 1 and answer["rows"][0]["name"] == "f16"
