"""Merging on the real SmolLM2: the merged model computes what the adapter model computes."""

from __future__ import annotations

import pytest

from quicktune.errors import QuicktuneError
from quicktune.export import merge
from quicktune.train import runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run, runs.read_manifest(trained_run.run_dir)["base_model"]["loaded_from"]


def test_merged_logits_equal_adapter_logits(trained, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    result, base_dir = trained
    out = merge.merge_adapter(base_dir, result.adapter_dir, tmp_path / "merged")
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()

    base_weights = load_file(f"{base_dir}/model.safetensors")
    merged_weights = load_file(f"{out}/model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not merged_weights[name].equal(base_weights[name])  # the adapter really changed it
    assert merged_weights["model.norm.weight"].equal(base_weights["model.norm.weight"])  # untouched

    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 26843, 2]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(result.adapter_dir)
        )
        expected = adapted(input_ids=ids).logits
        actual = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)(input_ids=ids).logits
    assert (expected - actual).abs().max().item() < 1e-4
    assert expected.argmax(-1).equal(actual.argmax(-1))


def test_merge_never_overwrites_and_leaves_nothing_when_interrupted(trained, tmp_path, monkeypatch):
    result, base_dir = trained
    existing = tmp_path / "merged"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(QuicktuneError, match="already exists"):
        merge.merge_adapter(base_dir, result.adapter_dir, existing)
    assert (existing / "keep.txt").read_text() == "mine"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "merge_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge.merge_adapter(base_dir, result.adapter_dir, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
