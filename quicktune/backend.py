"""The one seam to the training stack: Unsloth first, plain transformers + peft if it cannot load.

Unsloth patches transformers, trl and peft when it is imported, so it must be imported
before any of them, and only here. ``load_backend()`` is the first thing every
training or merging entry point calls. On a machine without CUDA, Unsloth's CPU
fallback trains with stock transformers/peft/trl (and its own fused loss); where
Unsloth cannot be imported at all, the same code runs on plain transformers + peft.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from quicktune.errors import QuicktuneError

_BACKEND: Backend | None = None


@dataclass
class Backend:
    name: str  # "unsloth" or "transformers"
    device: str  # "cuda" or "cpu"
    notice: str | None = None  # why Unsloth is not used, when it is not

    def load_model(self, model_dir: str, *, max_seq_length: int, load_in_4bit: bool, dtype: str, full: bool):
        """The model at ``model_dir`` (and its tokenizer), loaded for training or inference: through
        Unsloth, or transformers (4-bit NF4 with bitsandbytes when ``load_in_4bit``)."""
        torch_dtype = _torch_dtype(dtype, self.device)
        if self.name == "unsloth":
            from unsloth import FastLanguageModel

            model, tokenizer = FastLanguageModel.from_pretrained(
                model_dir,
                max_seq_length=max_seq_length,
                load_in_4bit=load_in_4bit,
                dtype=torch_dtype,
                full_finetuning=full,
            )
            return model, tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
            )
            if self.device == "cuda":  # quantized onto this process's GPU (one per process in a multi-GPU run)
                import torch

                kwargs["device_map"] = {"": torch.cuda.current_device()}
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        if self.device == "cuda" and not load_in_4bit:
            model = model.to("cuda")
        return model, AutoTokenizer.from_pretrained(model_dir)

    def add_lora(self, model, *, r: int, alpha: int, dropout: float, targets: list[str], dora: bool, rslora: bool,
                 gradient_checkpointing: bool, seed: int, layers: list[int] | None = None):
        """A new adapter on ``targets`` in every decoder layer, or in ``layers`` (their indices) only."""
        if self.name == "unsloth":
            from unsloth import FastLanguageModel

            return FastLanguageModel.get_peft_model(
                model,
                r=r,
                lora_alpha=alpha,
                lora_dropout=dropout,
                target_modules=targets,
                use_dora=dora,
                use_rslora=rslora,
                use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
                random_state=seed,
                layers_to_transform=layers,
            )
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        config = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, use_dora=dora, use_rslora=rslora,
            layers_to_transform=layers, task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def for_inference(self, model, adapter_dir: str | None = None):
        """The model (with a saved adapter on top, when given) ready to generate and score."""
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
        if self.name == "unsloth":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
        model.eval()
        if self.device == "cpu":
            _four_bit_as_trained(model)
        return model

    def load_trained(self, base_dir: str, adapter_dir: str, *, max_seq_length: int, load_in_4bit: bool, dtype: str):
        """The model as it was trained: the base loaded the way training loaded it (4-bit for
        QLoRA), the adapter on top, ready to generate and score."""
        model, _ = self.load_model(base_dir, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, dtype=dtype,
                                   full=False)
        return self.for_inference(model, adapter_dir)

    def load_adapter(self, model, adapter_dir: str, *, gradient_checkpointing: bool):
        """Continue training from a saved adapter (``--from``): its weights, trainable."""
        from peft import PeftModel

        if gradient_checkpointing and self.name != "unsloth":
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def _four_bit_as_trained(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer at its first forward pass in
    eval mode and then multiplies in bfloat16 (activations and scales cast down), where training
    de-quantized and multiplied in the compute dtype. A Linear4bit has no dropout or other
    train-mode behaviour, so flagging it as training keeps inference on the path training took
    (and its weight de-quantizable: the repacked layout is not)."""
    if "bitsandbytes" not in sys.modules:
        return  # nothing was loaded in 4 bits
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.training = True


def four_bit_summary(model) -> dict[str, Any] | None:
    """How the base was quantized, read off its 4-bit layers (None when none is 4-bit): for the manifest."""
    if "bitsandbytes" not in sys.modules:
        return None
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        return None
    state = layers[0].weight.quant_state
    return {
        "library": f"bitsandbytes {bnb.__version__}",
        "layers": len(layers),
        "quant_type": state.quant_type,
        "blocksize": state.blocksize,
        "double_quant": bool(state.nested),
        "compute_dtype": str(layers[0].compute_dtype).removeprefix("torch."),
    }


def _torch_dtype(name: str, device: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # exact, and what the GGUF export and fidelity check compare against


def load_backend(unsloth: bool = True) -> Backend:
    """Import the training stack once, Unsloth first. Call before importing transformers.

    ``unsloth=False``: plain transformers + peft, for the processes of a multi-GPU run
    (quicktune.train.distributed), which Unsloth's patches are not made for."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    late = [name for name in ("transformers", "trl", "peft") if name in sys.modules and "unsloth" not in sys.modules]
    notice = None
    if not unsloth:
        import torch

        _BACKEND = Backend(name="transformers", device="cuda" if torch.cuda.is_available() else "cpu")
        return _BACKEND
    try:
        import unsloth

        name = "unsloth"
        if late:
            notice = f"{', '.join(late)} was imported before Unsloth; some of its speed-ups may be missing"
    except Exception as exc:  # ImportError, or a broken CUDA/torchvision stack raising at import
        name = "transformers"
        notice = (f"Unsloth could not be imported ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                  "training with plain transformers + peft")
    import torch

    _BACKEND = Backend(name=name, device="cuda" if torch.cuda.is_available() else "cpu", notice=notice)
    return _BACKEND


def require_device_for(method: str, load_in_4bit: bool, backend: Backend) -> None:
    """A 4-bit base needs bitsandbytes that can quantize on this device (GPU, or CPU in recent versions)."""
    if not load_in_4bit:
        return
    hint = ("Install or upgrade bitsandbytes (0.50.2 runs NF4 on the CPU), "
            "or train 16-bit weights with method: lora")
    try:
        import bitsandbytes.functional as bnb_functional
        import torch
    except Exception as exc:  # ImportError, or a broken native library raising at import
        raise QuicktuneError(
            f"method {method} loads the base model in 4 bits with bitsandbytes, which cannot be imported "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
            hint=hint,
        ) from None
    try:
        bnb_functional.quantize_4bit(torch.ones(64, 64, device=backend.device), quant_type="nf4")
    except Exception as exc:  # an old bitsandbytes has no CPU kernels
        raise QuicktuneError(
            f"method {method}: bitsandbytes cannot quantize to 4 bits on the {backend.device} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
            hint=hint,
        ) from None


def mixed_precision(setting: str, backend: Backend) -> str:
    """What ``training.precision`` means on this backend: "bf16", "fp16" or "fp32" (no autocast).

    On the CPU auto is fp32: bf16 autocast did not win there. Measured on a 2-core Xeon with AMX (bench/README.md,
    "Training speed", 7 December 2026): the demo's 120 steps took 237.5 s in bf16 against 230.4 s in fp32 (batch 4,
    eval passes included); `plan --measure` gave 1.7 against 1.8 s a step at batch 4, 3.1 against 3.6 at batch 8."""
    if backend.device == "cuda":
        import torch

        has_bf16 = torch.cuda.is_bf16_supported()
        if setting == "bf16" and not has_bf16:
            raise QuicktuneError("training.precision: bf16: this GPU has no bfloat16",
                                 hint="Set training.precision: fp16 (or auto, which picks it here).")
        if setting == "auto":
            return "bf16" if has_bf16 else "fp16"
        return setting
    if setting == "fp16":
        raise QuicktuneError("training.precision: fp16 needs a CUDA GPU; the CPU trains in bf16 or fp32",
                             hint="Set training.precision: bf16 (CPUs with AVX512-BF16 or AMX) or fp32, or auto.")
    return "fp32" if setting == "auto" else setting


PACKAGES = ("quicktune", "torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "datasets", "accelerate")


def package_versions() -> dict[str, str]:
    """Python's and the training stack's versions, for a run's manifest and the key of cached eval answers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
