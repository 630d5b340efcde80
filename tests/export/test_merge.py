"""Merging: the merged model computes what the adapter model computes.

The kinds of adapter tensors PEFT can save are each built on a tiny random Llama (f32),
given non-zero weights, saved with save_pretrained and merged; the reference is PEFT's own
forward, never our formula. The real SmolLM2 run checks the whole path once.
"""

from __future__ import annotations

import json

import pytest

from quicktune import adapters, runs
from quicktune.errors import QuicktuneError
from quicktune.export import merge
from tests.conftest import SMOLLM2

IDS = [[1, 5, 9, 2, 33, 17, 60, 4, 8, 63, 0, 12]]


def _tiny_model(tied: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).float().eval()


def _perturb(peft_model) -> int:
    """Non-zero trained values for every adapter tensor (LoRA B starts at zero, DoRA's m at ||W||)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    changed = 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator)
                if "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.2 * noise)
                elif "modules_to_save" in name:
                    param.add_(0.1 * noise)
                else:
                    param.copy_(0.2 * noise)
                changed += 1
    return changed


def _logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


def _build(tmp_path, *, tied: bool = False, shard: str | None = None, head_stored: bool = False, **lora):
    """A base folder, an adapter folder, and the adapter model's logits (PEFT's forward).

    ``head_stored``: the tied base's checkpoint holds lm_head.weight as well (some do).
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    model = _tiny_model(tied)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model.save_pretrained(base_dir, **({"max_shard_size": shard} if shard else {}))
    if head_stored:
        weights = load_file(str(base_dir / "model.safetensors"))
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        save_file(weights, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    assert _perturb(peft_model) > 0
    peft_model.eval()
    expected = _logits(peft_model)
    preflight = adapters.check_mergeable(peft_model)  # what `train` checks before the first step
    peft_model.save_pretrained(adapter_dir)
    assert preflight.updates == adapters.read_plan(adapter_dir).updates  # ... is what the export will merge
    return base_dir, adapter_dir, expected


def _merged_logits(base_dir, adapter_dir, out):
    import torch
    from transformers import AutoModelForCausalLM

    merge.merge_adapter(base_dir, adapter_dir, out)
    return _logits(AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval())


def _adapter_keys(adapter_dir) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as reader:
        return list(reader.keys())


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KINDS = {
    # name: (tied, LoraConfig arguments, a key the adapter file must hold: the kind really is there)
    "lora": (False, dict(r=4, lora_alpha=8, target_modules=LINEAR), ".lora_A.weight"),
    "rslora": (False, dict(r=4, lora_alpha=8, use_rslora=True, target_modules=LINEAR), ".lora_B.weight"),
    "rank-alpha-pattern": (False, dict(r=4, lora_alpha=8, target_modules=LINEAR,
                                       rank_pattern={"v_proj": 2, r"layers\.1\.mlp\.up_proj": 6},
                                       alpha_pattern={"o_proj": 3, "down_proj": 32}), ".lora_A.weight"),
    "dora": (False, dict(r=4, lora_alpha=8, use_dora=True, target_modules=LINEAR), ".lora_magnitude_vector"),
    # lora.last_layers: the adapter in the last layer only (its first layer has none; see the test)
    "last-layers": (False, dict(r=4, lora_alpha=8, target_modules=LINEAR, layers_to_transform=[1]),
                    "layers.1.mlp.down_proj.lora_B.weight"),
    "dora-rslora": (False, dict(r=4, lora_alpha=8, use_dora=True, use_rslora=True,
                                 target_modules=["q_proj", "v_proj"]),
                    ".lora_magnitude_vector"),
    "embedding-lora": (False, dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
                       "embed_tokens.lora_embedding_A"),
    "embedding-dora": (False, dict(r=4, lora_alpha=8, use_dora=True, target_modules=["embed_tokens", "v_proj"]),
                       "embed_tokens.lora_magnitude_vector"),
    "lm-head-lora": (False, dict(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"]), "lm_head.lora_B.weight"),
    "modules-to-save": (False, dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                    modules_to_save=["embed_tokens", "lm_head"]), "model.model.embed_tokens.weight"),
    "tied-embedding-lora": (True, dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
                            "embed_tokens.lora_embedding_B"),
    "tied-embedding-dora": (True, dict(r=4, lora_alpha=8, use_dora=True, target_modules=["embed_tokens"]),
                            "embed_tokens.lora_magnitude_vector"),
    "tied-lm-head-lora": (True, dict(r=4, lora_alpha=8, target_modules=["lm_head", "k_proj"]),
                          "lm_head.lora_A.weight"),
    "tied-lm-head-dora": (True, dict(r=4, lora_alpha=8, use_dora=True, target_modules=["lm_head"]),
                          "lm_head.lora_magnitude_vector"),
    "tied-embedding-saved": (True, dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
                             "model.model.embed_tokens.weight"),
    # What Unsloth makes of embed_tokens + lm_head on a tied model: one trained copy, the head tied to it.
    "tied-both-saved": (True, dict(r=4, lora_alpha=8, target_modules=["q_proj"], ensure_weight_tying=True,
                                   modules_to_save=["embed_tokens", "lm_head"]), "model.model.embed_tokens.weight"),
    "tied-embedding-lora-tied-head": (True, dict(r=4, lora_alpha=8, target_modules=["embed_tokens"],
                                                 ensure_weight_tying=True), "embed_tokens.lora_embedding_A"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_merged_logits_equal_peft_logits(kind, tmp_path):
    tied, lora, marker = KINDS[kind]
    base_dir, adapter_dir, expected = _build(tmp_path, tied=tied, **lora)
    assert any(key.endswith(marker) for key in _adapter_keys(adapter_dir)), _adapter_keys(adapter_dir)
    if "layers_to_transform" in lora:
        assert not any(".layers.0." in key for key in _adapter_keys(adapter_dir))
    actual = _merged_logits(base_dir, adapter_dir, tmp_path / "merged")
    change = (expected - _logits(_tiny_model(tied))).abs().max().item()
    error = (expected - actual).abs().max().item()
    print(f"{kind}: adapter changes logits by {change:.2e}, merged differs from PEFT by {error:.2e}")
    assert change > 1e-3  # the adapter really changes the model
    assert error < 1e-5


def test_tied_head_is_untied_unless_peft_kept_them_one_tensor(tmp_path):
    """Untying is always exact; a tied pair stays tied where PEFT saved one trained tensor for both.
    (PEFT's tied LoRA saves the head's own A/B copies: they are merged as the untied head.)"""
    from safetensors import safe_open

    cases = (("tied-embedding-lora", True), ("tied-both-saved", False), ("tied-embedding-lora-tied-head", True))
    for kind, untied in cases:
        tied, lora, _ = KINDS[kind]
        base_dir, adapter_dir, _ = _build(tmp_path / kind, tied=tied, **lora)
        out = merge.merge_adapter(base_dir, adapter_dir, tmp_path / kind / "merged")
        with safe_open(str(out / "model.safetensors"), framework="pt") as reader:
            assert ("lm_head.weight" in reader.keys()) is untied, kind  # noqa: SIM118 safe_open is not iterable
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is not untied, kind


def test_a_tied_head_stored_in_the_checkpoint_is_untied_in_the_config(tmp_path):
    tied, lora, _ = KINDS["tied-embedding-lora"]
    base_dir, adapter_dir, expected = _build(tmp_path, tied=tied, head_stored=True, **lora)
    actual = _merged_logits(base_dir, adapter_dir, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    assert (expected - actual).abs().max().item() < 1e-5


def test_untied_head_in_a_sharded_model(tmp_path):
    tied, lora, _ = KINDS["tied-lm-head-lora"]
    base_dir, adapter_dir, expected = _build(tmp_path, tied=tied, shard="20KB", **lora)
    assert (base_dir / "model.safetensors.index.json").is_file()
    actual = _merged_logits(base_dir, adapter_dir, tmp_path / "merged")
    weight_map = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["lm_head.weight"] == weight_map["model.embed_tokens.weight"]
    assert (expected - actual).abs().max().item() < 1e-5


def _rewrite_adapter(adapter_dir, change_tensors=None, change_config=None):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if change_config:
        change_config(config)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))


def test_an_unknown_adapter_tensor_is_an_error_naming_it(tmp_path):
    import torch

    base_dir, adapter_dir, _ = _build(tmp_path, **KINDS["lora"][1])
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"
    _rewrite_adapter(adapter_dir, lambda tensors: tensors.__setitem__(key, torch.zeros(4, 4)))
    with pytest.raises(QuicktuneError) as error:
        merge.merge_adapter(base_dir, adapter_dir, tmp_path / "merged")
    assert key in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]


def test_a_lora_half_pair_and_a_wrong_rank_are_errors(tmp_path):
    base_dir, adapter_dir, _ = _build(tmp_path, **KINDS["lora"][1])
    _rewrite_adapter(adapter_dir, lambda t: t.pop("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"))
    with pytest.raises(QuicktuneError, match=r"layers\.1\.mlp\.up_proj: has lora_A without"):
        merge.merge_adapter(base_dir, adapter_dir, tmp_path / "merged")
    _build(tmp_path / "again", **KINDS["lora"][1])
    _rewrite_adapter(tmp_path / "again" / "adapter", change_config=lambda c: c.update(r=8))
    with pytest.raises(QuicktuneError, match="rank 4 in the file, 8 in the config"):
        merge.merge_adapter(tmp_path / "again" / "base", tmp_path / "again" / "adapter", tmp_path / "merged")


@pytest.mark.parametrize("setting", [{"bias": "all"}, {"init_lora_weights": "pissa"}, {"fan_in_fan_out": True},
                                     {"use_qalora": True}, {"trainable_token_indices": [3, 4]}])
def test_settings_the_merge_does_not_implement_are_refused(setting, tmp_path):
    base_dir, adapter_dir, _ = _build(tmp_path, **KINDS["lora"][1])
    _rewrite_adapter(adapter_dir, change_config=lambda c: c.update(setting))
    with pytest.raises(QuicktuneError, match=next(iter(setting))):
        merge.merge_adapter(base_dir, adapter_dir, tmp_path / "merged")


def test_the_preflight_refuses_an_adapter_the_merge_cannot_reproduce():
    from peft import LoraConfig, get_peft_model

    # PiSSA moves the adapter's principal part out of the base weights: merged into the
    # original base, it would count twice.
    model = get_peft_model(_tiny_model(False), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    with pytest.raises(QuicktuneError, match="init_lora_weights: 'pissa'"):
        adapters.check_mergeable(model)


@pytest.mark.slow  # the dry run reads SmolLM2's tokenizer to check the data
def test_train_from_a_parent_that_cannot_be_merged_is_refused_at_dry_run(make_recipe, tmp_path):
    import shutil

    from quicktune.workflow import train_command

    make_recipe("tiny")
    _build(tmp_path / "made", **KINDS["lora"][1])
    parent = tmp_path / "runs" / "tiny" / "v1"
    shutil.copytree(tmp_path / "made" / "adapter", parent / "adapter")
    runs.write_manifest(parent, {"status": "finished", "base_model": {"spec": SMOLLM2}})
    _rewrite_adapter(parent / "adapter", change_config=lambda c: c.update(init_lora_weights="olora"))
    with pytest.raises(QuicktuneError, match="init_lora_weights: 'olora'"):
        train_command(str(tmp_path / "tiny.yaml"), [], str(tmp_path / "runs"), "v1", dry_run=True)
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["v1"]


def test_every_lora_config_default_is_known_to_the_merge():
    """A new LoraConfig field that is on by default would change the weights unseen: it must be listed."""
    from peft import LoraConfig

    adapters.check_config(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]).to_dict())


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run, runs.read_manifest(trained_run.run_dir)["base_model"]["loaded_from"]


@pytest.mark.slow
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
    # float32 rounding over 30 layers, logits up to ~35: PEFT adds x A^T B^T where the merge adds B A
    # to W (7.6e-5 and 1.0e-4 seen on two runs; the same for either order of the merge's sums)
    assert (expected - actual).abs().max().item() < 2e-4
    assert expected.argmax(-1).equal(actual.argmax(-1))


@pytest.mark.slow
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
