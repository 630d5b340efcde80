"""The CUDA path: 4-bit loading and Unsloth's GPU kernels. Skipped, with the reason, without CUDA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs CUDA: 4-bit QLoRA loading and Unsloth's GPU kernels"),
]


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    """A small Llama with random weights, saved locally (no hub download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quicktune.data.tokenizer import load_chat_tokenizer
    from tests.conftest import SMOLLM2

    folder = tmp_path_factory.mktemp("random-llama")
    tokenizer = load_chat_tokenizer(SMOLLM2)
    config = LlamaConfig(
        vocab_size=tokenizer.backend.get_vocab_size(), hidden_size=512, intermediate_size=1536,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
        pad_token_id=2, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    import shutil
    from pathlib import Path

    for item in Path(tokenizer.source_folder).iterdir():
        shutil.copy2(item, folder / item.name)
    return folder


def test_qlora_trains_on_cuda_with_unsloth(random_llama, tiny_data, tmp_path):
    from quicktune.backend import load_backend
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train

    assert load_backend().name == "unsloth"
    train_file, _ = tiny_data
    path = tmp_path / "gpu.yaml"
    path.write_text(
        f"method: qlora\nmodel:\n  base: {random_llama}\n  max_seq_length: 128\n"
        f"data:\n  train: {train_file}\ntraining:\n  max_steps: 3\n  batch_size: 2\n  grad_accumulation: 1\n"
    )
    result = train(load_recipe(str(path)), runs_root=tmp_path / "runs")
    assert result.status == "finished"
    assert result.metrics["peak_gpu_memory_gib"] > 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
