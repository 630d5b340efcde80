"""``quicktune plan``: will a recipe fit the GPU, how much disk, how long, before anything loads.

Pure arithmetic on the model's shape (its config.json when local or cached, the GGUF's
metadata, or the table below) and the recipe. No torch. The constants name their source;
where a number is our own modelling, it says so and is checked against published
measurements in tests/test_plan.py.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from quicktune.errors import QuicktuneError
from quicktune.models import read_gguf_header, resolve_model
from quicktune.recipe import (  # methods trained on pairs: two sequences a row
    ADAPTER_ON_EITHER_BASE,
    PREFERENCE_METHODS,
    too_many_layers,
)

GB = 1e9
GIB = 2**30

# NF4 with double quantization: 4 bits + 0.127 bits of constants per parameter
# (QLoRA, Dettmers et al. 2023, arXiv:2305.14314, section 2 "Double Quantization").
NF4_BYTES_PER_PARAM = 4.127 / 8
# 8-bit Adam keeps two 8-bit states per parameter (Dettmers et al. 2021, arXiv:2110.02861);
# torch AdamW keeps two float32 states.
OPTIMIZER_BYTES = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "adamw_torch": 8}
# PEFT keeps LoRA weights (and so their gradients) in float32 under a 16-bit base
# (peft's autocast_adapter_dtype, on by default since peft 0.12).
LORA_WEIGHT_BYTES = 4
# CUDA context, cuBLAS workspace and allocator slack. Our modelling, calibrated on
# Unsloth's published 7.92 GB peak for Llama 3.1 8B QLoRA (tests/test_plan.py).
RUNTIME_OVERHEAD_BYTES = 0.5 * GB
# During the backward pass of a checkpointed layer its activations are recomputed and their
# gradients exist alongside. Fitted (our modelling) to two published Unsloth figures for
# Llama 3.1 8B QLoRA: 7.92 GB peak at 2 x 2048 tokens on a T4, and 78,475 tokens of context
# at batch 1, r=32 in 24 GB (tests/test_plan.py checks both within 15%).
RECOMPUTE_FACTOR = 0.9
# A 16-bit LoRA needs more than its 2 bytes per weight: Unsloth's requirements table gives
# minimums of 8 GB (3B), 19 GB (7B), 22 GB (8B), 24 GB (9B), about 2.65 bytes per parameter
# (https://unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements).
# The 0.65 bytes our tensor count does not explain are added as measured there.
SIXTEEN_BIT_EXTRA_BYTES_PER_PARAM = 0.65
# Unsloth's fused cross-entropy computes the logits in chunks (we model 4): it never holds
# batch x seq x vocab logits at once. Our modelling of unsloth_zoo's chunked loss.
UNSLOTH_LOGIT_CHUNKS = 4
USABLE_VRAM = 0.95  # leave 5% for fragmentation

# Bits per weight of llama.cpp's file types on a 7-8B Llama (llama.cpp tools/quantize/README.md,
# "Q4_K_M 4.89", "Q5_K_M 5.70", "Q8_0 8.50"; F16/BF16 16).
GGUF_BITS = {"q4_k_m": 4.89, "q5_k_m": 5.70, "q8_0": 8.50, "f16": 16.0, "bf16": 16.0}


@dataclass(frozen=True)
class Arch:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    source: str

    @property
    def linear_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear_params + self.embedding_params + norms

    def lora_params(self, rank: int, targets: list[str], layers: int | None = None) -> int:
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip
        return self.trained_layers(layers) * sum(rank * sum(shapes[t]) for t in targets if t in shapes)

    def trained_layers(self, last: int | None) -> int:
        """Decoder layers with an adapter: all, or the last ``last`` (lora.last_layers)."""
        return self.layers if last is None else min(last, self.layers)

    def activation_bytes_per_token(self) -> int:
        """Tensors autograd keeps for one decoder layer per token, in 16-bit (our count for a
        Llama-style layer with flash/xformers attention: norms and residuals 5h, q and attention
        output 2q, k and v 2kv, the gated MLP's gate, up, act(gate) and product 4i)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * (5 * self.hidden + 2 * q + 2 * kv + 4 * self.intermediate)


def _arch(name, layers, hidden, intermediate, heads, kv_heads, vocab, tied, source, head_dim=None):
    return Arch(
        name, layers, hidden, intermediate, heads, kv_heads, head_dim or hidden // heads, vocab, tied, source
    )


# The built-in recipes' models, from each repository's config.json on the Hugging Face hub.
KNOWN = {
    "meta-llama-3.1-8b": _arch(
        "Llama 3.1 8B", 32, 4096, 14336, 32, 8, 128256, False, "meta-llama/Llama-3.1-8B-Instruct config.json"
    ),
    "qwen2.5-7b": _arch("Qwen2.5 7B", 28, 3584, 18944, 28, 4, 152064, False, "Qwen/Qwen2.5-7B-Instruct config.json"),
    "mistral-7b": _arch(
        "Mistral 7B v0.3", 32, 4096, 14336, 32, 8, 32768, False, "mistralai/Mistral-7B-Instruct-v0.3 config.json"
    ),
    "gemma-2-9b": _arch(
        "Gemma 2 9B", 42, 3584, 14336, 16, 8, 256000, True, "google/gemma-2-9b-it config.json", head_dim=256
    ),
    "phi-3.5-mini": _arch(
        "Phi-3.5 mini", 32, 3072, 8192, 32, 32, 32064, False, "microsoft/Phi-3.5-mini-instruct config.json"
    ),
    "smollm2-135m": _arch(
        "SmolLM2 135M", 30, 576, 1536, 9, 3, 49152, True, "HuggingFaceTB/SmolLM2-135M-Instruct config.json"
    ),
}


@dataclass(frozen=True)
class Gpu:
    name: str
    vram_gib: float
    bf16_tflops: float  # dense 16-bit tensor throughput with float32 accumulation (vendor spec sheets)


GPUS = {
    "t4": Gpu("Tesla T4", 15.0, 65.0),  # NVIDIA T4 datasheet: 16 GB, 65 FP16 TFLOPS (no bf16)
    "rtx 3060": Gpu("RTX 3060 12GB", 12.0, 25.6),  # NVIDIA Ampere GA102 whitepaper, appendix
    "rtx 3090": Gpu("RTX 3090", 24.0, 71.0),  # NVIDIA Ampere GA102 whitepaper: 71 TFLOPS FP16/FP32-acc
    "rtx 4090": Gpu("RTX 4090", 24.0, 165.2),  # NVIDIA Ada Lovelace whitepaper: 165.2 TFLOPS FP16/FP32-acc
    "l4": Gpu("L4", 24.0, 121.0),  # NVIDIA L4 datasheet
    "a100": Gpu("A100 80GB", 80.0, 312.0),  # NVIDIA A100 datasheet
    "h100": Gpu("H100 SXM", 80.0, 989.0),  # NVIDIA H100 datasheet
}
# Share of peak throughput a QLoRA/LoRA step reaches, our calibration on Unsloth's published
# Llama 3.1 8B run on a T4 (462.7 s for 60 steps of 8 Alpaca rows, see the recipe header),
# assuming ~250 tokens per Alpaca row with the template.
MODEL_FLOPS_UTILIZATION = 0.2


def find_gpu(text: str) -> Gpu:
    key = text.lower().replace("nvidia", "").replace("geforce", "").strip()
    for name, gpu in GPUS.items():
        if name in key or key in name:
            return gpu
    raise QuicktuneError(
        f"unknown GPU {text!r}", hint=f"Known: {', '.join(g.name for g in GPUS.values())}; or give --vram GB."
    )


# --- the model's shape -----------------------------------------------------------------------------


def arch_from_config(config: dict, source: str) -> Arch:
    text = config.get("text_config", config)
    hidden = text["hidden_size"]
    heads = text["num_attention_heads"]
    return Arch(
        text.get("model_type", "model"),
        text["num_hidden_layers"],
        hidden,
        text["intermediate_size"],
        heads,
        text.get("num_key_value_heads") or heads,
        text.get("head_dim") or hidden // heads,
        text["vocab_size"],
        bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        source,
    )


def arch_from_gguf(path: Path) -> Arch:
    header = read_gguf_header(path, tensors=True)
    fields = header.fields
    arch = fields.get("general.architecture")
    heads = fields.get(f"{arch}.attention.head_count")
    hidden = fields.get(f"{arch}.embedding_length")
    return Arch(
        arch,
        fields.get(f"{arch}.block_count"),
        hidden,
        fields.get(f"{arch}.feed_forward_length"),
        heads,
        fields.get(f"{arch}.attention.head_count_kv") or heads,
        fields.get(f"{arch}.attention.key_length") or hidden // heads,
        len(fields["tokenizer.ggml.tokens"]),
        "output.weight" not in {t.name for t in header.tensors},
        f"{path.name} metadata",
    )


def _known(name: str) -> Arch | None:
    key = name.lower().split("/")[-1]
    return next((arch for prefix, arch in KNOWN.items() if prefix in key), None)


def find_arch(base: str) -> Arch:
    """config.json of a local folder or the hub cache (never downloads), a GGUF, or the table."""
    source = resolve_model(base)
    if source.kind == "gguf":
        known = _known(source.path.name)
        return known if known is not None else arch_from_gguf(source.path)
    if source.kind == "dir" and (source.path / "config.json").is_file():
        return arch_from_config(json.loads((source.path / "config.json").read_text()), f"{source.path}/config.json")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json")
        if isinstance(cached, str):
            return arch_from_config(json.loads(Path(cached).read_text()), f"{base} config.json (hub cache)")
    except Exception:
        pass
    known = _known(base)
    if known is not None:
        return known
    raise QuicktuneError(
        f"quicktune does not know the shape of {base}",
        hint="Point model.base at a local folder with config.json (or download it once) and plan again.",
    )


# --- the estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    method: str  # qlora, lora, full, dpo, orpo
    batch: int
    seq: int
    rank: int
    targets: tuple[str, ...]
    gradient_checkpointing: bool
    optimizer: str  # adamw_8bit, adamw_torch, ...
    unsloth: bool = True
    four_bit: bool | None = None  # the base loaded in 4 bits; None: as the method says (qlora)
    last_layers: int | None = None  # lora.last_layers: LoRA (and backpropagation) in the last N layers only
    generations: int = 1  # grpo: answers sampled per prompt (grpo.num_generations)
    completion: int = 0  # grpo: tokens each sampled answer may take (grpo.max_completion_length)

    @property
    def quantized(self) -> bool:
        return self.method == "qlora" if self.four_bit is None else self.four_bit

    @property
    def sequences_per_row(self) -> int:
        """A preference row is a pair: chosen and rejected go through the model side by side; a GRPO
        prompt is a group: each of its sampled answers goes through with the prompt."""
        if self.method == "grpo":
            return self.generations
        return 2 if self.method in PREFERENCE_METHODS else 1

    @property
    def work_factor(self) -> float:
        """Compute per trained token against SFT: DPO also runs its frozen reference forward
        (2N FLOPs per token on top of the 6N of forward + backward with recomputation)."""
        return (6 + 2) / 6 if self.method == "dpo" else 1.0


@dataclass
class Estimate:
    parts: dict[str, float]  # bytes
    total: float
    trainable: int

    def fits(self, vram_gib: float) -> bool:
        return self.total <= vram_gib * GIB * USABLE_VRAM


def estimate(arch: Arch, s: Settings) -> Estimate:
    tokens = s.batch * s.seq * s.sequences_per_row
    if s.quantized:
        weights = arch.linear_params * NF4_BYTES_PER_PARAM + (arch.params - arch.linear_params) * 2
    else:
        weights = arch.params * (2 + SIXTEEN_BIT_EXTRA_BYTES_PER_PARAM)
    optimizer = OPTIMIZER_BYTES.get(s.optimizer, 2)
    if s.method == "full":
        trainable = arch.params
        state = trainable * (2 + optimizer)  # 16-bit gradients + optimizer state
    else:
        trainable = arch.lora_params(s.rank, list(s.targets), s.last_layers)
        state = trainable * (2 * LORA_WEIGHT_BYTES + optimizer)
    layer = arch.activation_bytes_per_token() * tokens
    if s.gradient_checkpointing:
        # Unsloth offloads the checkpoints to CPU RAM; plain transformers keeps each layer's input.
        kept = 0 if s.unsloth else arch.layers * arch.hidden * 2 * tokens
        activations = kept + RECOMPUTE_FACTOR * layer
    else:  # autograd keeps activations only where it will backpropagate: the layers with an adapter
        activations = (arch.layers if s.method == "full" else arch.trained_layers(s.last_layers)) * layer
    logits = tokens * arch.vocab * (2 / UNSLOTH_LOGIT_CHUNKS if s.unsloth else 2 + 4)
    if s.method == "grpo":  # TRL's per-token log-probabilities: the logits of the answers, in float32
        logits = s.batch * s.generations * s.completion * arch.vocab * 4
    parts = {
        "weights": weights,
        "LoRA + optimizer" if s.method != "full" else "gradients + optimizer": state,
        "activations": activations,
        "logits/loss": logits,
        "CUDA runtime": RUNTIME_OVERHEAD_BYTES,
    }
    if s.method == "grpo":  # sampling the group: a 16-bit key and value per layer, token and answer
        per_token = arch.layers * 2 * arch.kv_heads * arch.head_dim * 2
        parts["generation KV cache"] = s.batch * s.generations * s.seq * per_token
    return Estimate(parts, sum(parts.values()), trainable)


@dataclass(frozen=True)
class Fix:
    sets: tuple[str, ...]  # --set arguments
    note: str
    estimate: Estimate


def suggestions(arch: Arch, s: Settings, vram_gib: float, grad_accumulation: int = 1) -> list[Fix]:
    """The nearest settings that fit: one change at a time, the mildest first."""
    options: list[tuple[tuple[str, ...], str, Settings]] = []
    if not s.gradient_checkpointing:
        options.append(
            (
                ("training.gradient_checkpointing=true",),
                "recompute activations",
                replace(s, gradient_checkpointing=True),
            )
        )
    batch = s.batch
    while batch > 1:
        batch //= 2
        accumulation = grad_accumulation * s.batch // batch
        options.append(
            (
                (f"training.batch_size={batch}", f"training.grad_accumulation={accumulation}"),
                "same rows per step",
                replace(s, batch=batch),
            )
        )
    seq = s.seq
    while seq > 512:
        seq //= 2
        options.append(((f"model.max_seq_length={seq}",), "longer rows are cut", replace(s, seq=seq)))
    if s.method == "grpo":
        if s.generations >= 4:
            options.append(((f"grpo.num_generations={s.generations // 2}",), "fewer answers a prompt (less signal)",
                            replace(s, generations=s.generations // 2)))
        if s.completion >= 128:
            options.append(((f"grpo.max_completion_length={s.completion // 2}",), "shorter answers",
                            replace(s, completion=s.completion // 2)))
    if s.method in ADAPTER_ON_EITHER_BASE and not s.quantized:
        options.append(
            (("model.load_in_4bit=true",), "4-bit base weights", replace(s, four_bit=True, optimizer="adamw_8bit"))
        )
    elif not s.quantized:
        options.append(
            (
                ("method=qlora", "model.load_in_4bit=true"),
                "4-bit base weights",
                replace(s, method="qlora", optimizer="adamw_8bit"),
            )
        )
    if s.rank > 8:
        options.append(((f"lora.r={s.rank // 2}",), "a smaller adapter", replace(s, rank=s.rank // 2)))
    fitting = []
    for sets, note, candidate in options:
        result = estimate(arch, candidate)
        if result.fits(vram_gib):
            fitting.append(Fix(sets, note, result))
    return fitting[:3]


def disk_bytes(arch: Arch, s: Settings, quantizations: list[str], kept_checkpoints: int = 3) -> dict[str, float]:
    trainable = arch.params if s.method == "full" else arch.lora_params(s.rank, list(s.targets), s.last_layers)
    per_checkpoint = (
        trainable * (2 if s.method == "full" else LORA_WEIGHT_BYTES) + trainable * OPTIMIZER_BYTES.get(s.optimizer, 2)
    )
    out = {
        "checkpoints": kept_checkpoints * per_checkpoint, "merged 16-bit": arch.params * 2, "F16 GGUF": arch.params * 2
    }
    for quant in quantizations:
        if quant not in ("f16",):
            out[f"{quant} GGUF"] = arch.params * GGUF_BITS[quant] / 8
    return out


# Training on the CPU (float32): our measurement, the README's quick start on a 2-core VM: SmolLM2-135M,
# LoRA r=16, 120 steps of 8 demo rows (2.4 epochs of ~55,000 tokens by data_tokens' estimate) in 546 s.
# grpo: the demo GRPO run (smollm2-demo-grpo, 7 December 2026, 2-core Xeon): 40 steps of 8 answers of up to
# 64 tokens (about 40 sampled), 7.8-10.1 s a step, 9.0 the median. Sampling is token by token.
GRPO_CPU_REFERENCE = {"seconds_per_step": 9.0, "answers_per_step": 8, "completion": 64}
GENERATION_UTILIZATION = 0.03  # share of a card's 16-bit throughput that HF generate reaches (assumed)
GRPO_PROMPT_TOKENS = 256  # a prompt's length, as the GPU estimate assumes it (no tokenizer in the plan)

# Scaled by parameter count (the work per token); a CPU with more cores is faster.
CPU_REFERENCE = {"seconds": 546.0, "tokens": 2.4 * 55_358, "params": 134_515_008, "cores": 2}


def cpu_seconds_per_epoch(arch: Arch, tokens: int) -> float:
    per_token = CPU_REFERENCE["seconds"] / CPU_REFERENCE["tokens"]
    return tokens * per_token * arch.params / CPU_REFERENCE["params"]


def layer_work_factor(arch: Arch, s: Settings) -> float:
    """Compute per token against an adapter on every layer. With lora.last_layers the backward pass
    stops at the lowest layer with an adapter: forward 2N + backward through the frozen weights 2N x the
    share of layers trained. With gradient checkpointing the input's gradient is switched on, so the
    backward pass runs through every layer anyway."""
    if s.method == "full" or s.last_layers is None or s.gradient_checkpointing:
        return 1.0
    return (2 + 2 * arch.trained_layers(s.last_layers) / arch.layers) / 4


def seconds_per_epoch(arch: Arch, tokens: int, gpu: Gpu, gradient_checkpointing: bool = True) -> float:
    # forward 2N + backward through the frozen weights 2N (+ 2N recomputed with checkpointing)
    flops_per_token = (6 if gradient_checkpointing else 4) * arch.params
    return tokens * flops_per_token / (gpu.bf16_tflops * 1e12 * MODEL_FLOPS_UTILIZATION)


@dataclass(frozen=True)
class MeasuredSteps:
    """Optimizer steps of the recipe timed on this machine (``quicktune plan --measure``,
    quicktune/train/measure.py): the median after the warm-up steps."""

    seconds_per_step: float
    steps: int  # steps timed, after the warm-up
    warmup: int
    device: str  # "cpu" or "cuda", as the training backend ran
    step_times: tuple[float, ...] = ()  # every timed step, warm-up left out

    def describe(self) -> str:
        each = f"{self.seconds_per_step:.{1 if self.seconds_per_step >= 1 else 2}f} s/step"
        steps = f"{self.steps} step{'' if self.steps == 1 else 's'}"
        warmup = f"{self.warmup} warm-up step{'' if self.warmup == 1 else 's'}"
        device = "GPU" if self.device == "cuda" else "CPU"
        return f"measured: {each} over {steps} on this machine ({device}, after {warmup})"


@dataclass
class Plan:
    arch: Arch
    settings: Settings
    vram_gib: float  # 0 for a CPU plan
    gpu: Gpu | None  # the card named (or the default); None when only --vram was given, or on the CPU
    estimate: Estimate
    disk: dict[str, float]
    data_tokens: int | None
    epoch_seconds: float | None
    fixes: list = field(default_factory=list)
    device: str = "gpu"  # "cpu": a recipe whose hardware line says CPU, planned without --gpu/--vram
    time_note: str = ""  # where the time estimate comes from, or why there is none
    rows: int | None = None  # rows one epoch trains on (train_rows); None: not countable here
    steps_per_epoch: int | None = None  # optimizer steps in one epoch (steps_per_epoch)
    steps: int | None = None  # optimizer steps the run as configured takes (run_steps)
    step_seconds: float | None = None  # one optimizer step, estimated or measured
    measured: MeasuredSteps | None = None  # `plan --measure`: the steps timed on this machine
    steps_from: str = ""  # what sets the run's steps: training.max_steps, or training.epochs

    @property
    def run_seconds(self) -> float | None:
        """The training steps of the run as configured (training.max_steps, else its epochs)."""
        if self.step_seconds is None or self.steps is None:
            return None
        return self.step_seconds * self.steps

    @property
    def fits(self) -> bool:
        return self.device == "cpu" or self.estimate.fits(self.vram_gib)


def is_cpu_recipe(recipe) -> bool:
    """The recipe says it is for the CPU (its hardware line, e.g. smollm2-demo's "CPU only ...")."""
    return recipe.hardware.strip().lower().startswith("cpu")


def optimizer_for(setting: str, device: str) -> str:
    """The optimizer ``training.optimizer`` means on ``device``: auto is 8-bit AdamW on CUDA
    (bitsandbytes), PyTorch's AdamW on the CPU. Training and the plan both use this."""
    if setting != "auto":
        return setting
    return "adamw_8bit" if device == "cuda" else "adamw_torch"


def settings_for(recipe, unsloth: bool = True, device: str = "cuda") -> Settings:
    t = recipe.training
    optimizer = optimizer_for(t.optimizer, device)
    return Settings(
        recipe.method,
        t.batch_size,
        recipe.model.max_seq_length,
        recipe.lora.r,
        tuple(recipe.lora.target_modules),
        t.gradient_checkpointing,
        optimizer,
        unsloth,
        recipe.model.load_in_4bit if recipe.method in ADAPTER_ON_EITHER_BASE else None,
        recipe.lora.last_layers if recipe.method != "full" else None,
        recipe.grpo.num_generations if recipe.method == "grpo" else 1,
        recipe.grpo.max_completion_length if recipe.method == "grpo" else 0,
    )


def data_tokens(recipe) -> int | None:
    """Tokens in one epoch of training data, estimated at 4 characters per token (no tokenizer)."""
    total = 0
    for path in recipe.data.train:
        file = Path(path)
        if not file.is_file():
            return None
        total += file.stat().st_size
    return int(total / 4)


def make_plan(
    recipe, *, gpu: str | None = None, vram: float | None = None, tokens: int | None = None,
    prompts: int | None = None, measured: MeasuredSteps | None = None,
) -> Plan:
    """Plan for the GPU named, else for a GPU of ``vram`` GiB, else for the CPU when the recipe is
    a CPU recipe, else for the RTX 4090 the built-in GPU recipes are written for. ``tokens`` and ``prompts``
    (rows): one epoch's, counted by the caller (a Hub dataset's); None: from the data files. ``measured``:
    steps timed on this machine (``plan --measure``), which then give the time instead of the model."""
    arch = find_arch(recipe.model.base)
    on_cpu = gpu is None and vram is None and is_cpu_recipe(recipe)
    settings = settings_for(recipe, device="cpu" if on_cpu else "cuda")
    if settings.last_layers is not None and settings.last_layers > arch.layers:  # training refuses it too
        raise too_many_layers(recipe, settings.last_layers, arch.layers)
    result = estimate(arch, settings)
    tokens = data_tokens(recipe) if tokens is None else tokens
    rows = train_rows(recipe, prompts)
    disk = disk_bytes(arch, settings, recipe.export.quantizations)
    if on_cpu:
        epoch = (cpu_seconds_per_epoch(arch, tokens) * settings.work_factor
                 * layer_work_factor(arch, settings)) if tokens else None
        note = (
            f"scaled from our run of the quick start on a {CPU_REFERENCE['cores']}-core CPU "
            f"({CPU_REFERENCE['seconds']:.0f} s for 120 steps of 8 rows of SmolLM2-135M); more cores are faster"
        )
        if settings.method == "grpo" and tokens:
            epoch = grpo_cpu_seconds_per_epoch(arch, settings, recipe, rows or 0)
            note = (f"scaled from our demo GRPO run on a {CPU_REFERENCE['cores']}-core CPU "
                    f"({GRPO_CPU_REFERENCE['seconds_per_step']:g} s a step of {GRPO_CPU_REFERENCE['answers_per_step']} "
                    "answers of SmolLM2-135M); more cores are faster")
        plan = Plan(arch, settings, 0.0, None, result, disk, tokens, epoch, device="cpu",
                    time_note=note + _preference_note(settings))
        return _timed(plan, recipe, rows, measured)
    card = find_gpu(gpu) if gpu else (None if vram else GPUS["rtx 4090"])
    vram_gib = vram or card.vram_gib
    if card is not None:
        epoch = (seconds_per_epoch(arch, tokens, card, settings.gradient_checkpointing) * settings.work_factor
                 * layer_work_factor(arch, settings)) if tokens else None
        if settings.method == "grpo" and tokens:
            epoch = grpo_gpu_seconds_per_epoch(arch, settings, recipe, card, rows or 0)
        note = f"on {card.name}, from its 16-bit throughput at {MODEL_FLOPS_UTILIZATION:.0%} utilisation"
    else:
        epoch, note = None, "not estimated: --vram says how much memory, not how fast; name the card with --gpu"
    plan = Plan(arch, settings, vram_gib, card, result, disk, tokens, epoch,
                time_note=note + (_preference_note(settings) if card is not None else ""))
    if not plan.fits:
        plan.fixes = suggestions(arch, settings, vram_gib, recipe.training.grad_accumulation)
    return _timed(plan, recipe, rows, measured)


def _timed(plan: Plan, recipe, rows: int | None, measured: MeasuredSteps | None) -> Plan:
    """``plan`` with the run's steps and their time: one step is an epoch's time over its steps, or the step
    ``measured`` on this machine (which then also gives the epoch's time)."""
    plan.rows = rows
    plan.steps_per_epoch = steps_per_epoch(recipe, rows) if rows else None
    plan.steps = run_steps(recipe, rows) if rows is not None or recipe.training.max_steps else None
    t = recipe.training
    plan.steps_from = "training.max_steps" if t.max_steps else f"training.epochs {t.epochs:g}"
    if measured is not None:
        plan.measured = measured
        plan.step_seconds = measured.seconds_per_step
        plan.epoch_seconds = measured.seconds_per_step * plan.steps_per_epoch if plan.steps_per_epoch else None
        plan.time_note = measured.describe()
    elif plan.epoch_seconds is not None and plan.steps_per_epoch:
        plan.step_seconds = plan.epoch_seconds / plan.steps_per_epoch
    return plan


# --- rows and steps: the run as configured ---------------------------------------------------------


def count_rows(path: Path) -> int | None:
    """Rows in one local data file, as quicktune/data/load.py reads them (before validation and
    deduplication); None: a file type or content counted only by loading it."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        if suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
            return len(value) if isinstance(value, list) else None
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return sum(1 for _ in csv.DictReader(handle))
        if suffix == ".parquet":
            import pyarrow.parquet as pq  # the loader's reader; no torch

            return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, ImportError):
        return None
    return None


def train_rows(recipe, rows: int | None = None) -> int | None:
    """Rows one epoch trains on: the training files' rows (or ``rows``, counted by the caller: a Hub
    dataset's), less the share data.eval_fraction holds out (quicktune/data/quality.hold_out's rule).
    None: a file is missing or cannot be counted without loading it."""
    if rows is None:
        rows = 0
        for entry in recipe.data.train:
            counted = count_rows(Path(entry)) if Path(entry).is_file() else None
            if counted is None:
                return None
            rows += counted
    if recipe.data.eval_fraction and not recipe.data.eval and rows:
        rows -= max(1, round(rows * recipe.data.eval_fraction))
    return rows


def steps_per_epoch(recipe, rows: int) -> int:
    """Optimizer steps in one pass over ``rows``: a step takes batch_size x grad_accumulation rows (prompts
    for GRPO, pairs for DPO/ORPO), whatever training.gpus splits it over."""
    t = recipe.training
    return math.ceil(rows / (t.batch_size * t.grad_accumulation))


def run_steps(recipe, rows: int | None) -> int:
    """Optimizer steps the run takes: training.max_steps when set, else its epochs over ``rows``. The rule
    of quicktune/train/config.planned_steps, which training uses (tests/test_plan.py checks they agree)."""
    if recipe.training.max_steps:
        return recipe.training.max_steps
    return max(1, math.ceil(steps_per_epoch(recipe, rows or 0) * recipe.training.epochs))


def grpo_prompts(recipe) -> int:
    """Prompts in one epoch: the training files' rows (``count_rows``; 0 when one is missing or uncounted)."""
    counts = [count_rows(Path(path)) if Path(path).is_file() else None for path in recipe.data.train]
    return 0 if None in counts else sum(counts)


def grpo_cpu_seconds_per_epoch(arch: Arch, s: Settings, recipe, prompts: int | None = None) -> float:
    """A GRPO epoch on the CPU, scaled by parameter count and answers sampled from our measured demo run
    (``GRPO_CPU_REFERENCE``): sampling and training both grow with the answers and their length."""
    ref = GRPO_CPU_REFERENCE
    answers = (grpo_prompts(recipe) if prompts is None else prompts) * s.generations
    per_answer = ref["seconds_per_step"] / ref["answers_per_step"] * s.completion / ref["completion"]
    return answers * per_answer * arch.params / CPU_REFERENCE["params"]


def grpo_gpu_seconds_per_epoch(arch: Arch, s: Settings, recipe, card: Gpu, prompts: int | None = None) -> float:
    """A GRPO epoch on ``card``: training on every sampled answer with its prompt (SFT's estimate for
    those tokens), plus sampling them token by token, which reads every weight for each new token and
    so runs far below the card's throughput (``GENERATION_UTILIZATION``, an assumption)."""
    answers = (grpo_prompts(recipe) if prompts is None else prompts) * s.generations
    train_tokens = answers * min(s.seq, s.completion + GRPO_PROMPT_TOKENS)
    training = seconds_per_epoch(arch, train_tokens, card, s.gradient_checkpointing)
    sampling = answers * s.completion * 2 * arch.params / (card.bf16_tflops * 1e12 * GENERATION_UTILIZATION)
    return training + sampling


def _preference_note(s: Settings) -> str:
    if s.method == "grpo":
        return (f"; GRPO: {s.generations} answers of up to {s.completion} tokens sampled a prompt, then trained on; "
                "sampling dominates")
    if s.method == "dpo":
        return (
            "; DPO: chosen and rejected side by side, plus the frozen reference's forward pass "
            f"(x{s.work_factor:.2f})"
        )
    if s.method == "orpo":
        return "; ORPO: chosen and rejected side by side"
    return ""


def detect_vram_gib() -> float | None:
    """The first CUDA GPU's memory, from nvidia-smi (no torch); None without an NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return float(done.stdout.split()[0]) / 1024 if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
