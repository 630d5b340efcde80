"""Which weights a QLoRA adapter is merged into: 16-bit ones, never a 4-bit checkpoint."""

from __future__ import annotations

import json

import pytest

from quicktune.errors import QuicktuneError
from quicktune.export.exporter import _merge_base
from quicktune.recipe import validate_recipe


def _recipe(base: str, merge_base: str | None = None):
    data = {"name": "q", "method": "qlora", "model": {"base": base}, "data": {"train": ["x.jsonl"]}}
    if merge_base:
        data["export"] = {"merge_base": merge_base}
    return validate_recipe(data)


def test_qlora_merges_into_the_16_bit_repository(monkeypatch):
    from quicktune.export import exporter

    asked = []

    def no_hub(repo, revision, console):
        asked.append(repo)
        raise QuicktuneError("offline")

    monkeypatch.setattr(exporter, "_download", no_hub)
    manifest = {"base_model": {"kind": "hub", "spec": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"}}
    with pytest.raises(QuicktuneError):
        _merge_base(_recipe("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"), manifest, None)
    assert asked == ["unsloth/Meta-Llama-3.1-8B-Instruct"]


def test_a_quantized_merge_base_is_refused_with_what_to_set(tmp_path):
    folder = tmp_path / "four-bit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"quantization_config": {"load_in_4bit": True}}))
    manifest = {"base_model": {"kind": "dir", "spec": str(folder), "loaded_from": str(folder)}}
    with pytest.raises(QuicktuneError, match="quantized weights") as caught:
        _merge_base(_recipe(str(folder)), manifest, None)
    assert "export.merge_base" in caught.value.hint

    plain = tmp_path / "sixteen-bit"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert _merge_base(_recipe(str(folder), merge_base=str(plain)), manifest, None) == plain


def test_the_merged_folder_has_the_bases_tokenizer_files_and_the_trained_template(tmp_path):
    """llama.cpp's converter needs tokenizer.model for Gemma/Phi-3; adapters do not carry it."""
    import torch
    from safetensors.torch import save_file

    from quicktune.export.merge import merge_adapter

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, str(base / "model.safetensors"))
    (base / "config.json").write_text("{}")
    (base / "tokenizer.model").write_bytes(b"spm")
    (base / "tokenizer.json").write_text('{"from": "base"}')
    save_file(
        {
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 4),
            "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.ones(4, 2),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    (adapter / "tokenizer.json").write_text('{"from": "adapter"}')
    (adapter / "chat_template.jinja").write_text("trained template")
    out = merge_adapter(base, adapter, tmp_path / "merged")
    assert (out / "tokenizer.model").read_bytes() == b"spm"
    # the files training tokenized with (the base's, not transformers' re-saved copy) and the trained template
    assert json.loads((out / "tokenizer.json").read_text()) == {"from": "base"}
    assert (out / "chat_template.jinja").read_text() == "trained template"
