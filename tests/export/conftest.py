from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_data):
    """A real (short) training run of SmolLM2, with held-out data: what `quicktune export` gets."""
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train
    from tests.conftest import SMOLLM2

    train_file, eval_file = tiny_data
    folder = tmp_path_factory.mktemp("trained")
    recipe_file = folder / "tiny-export.yaml"
    recipe_file.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\n  system_prompt: Answer with one JSON object.\n"
        "training:\n  max_steps: 3\n  batch_size: 2\n  grad_accumulation: 1\n"
        "  learning_rate: 0.005\n  warmup_ratio: 0.0\nexport:\n  quantizations: [q4_k_m]\n  temperature: 0\n"
    )
    return train(load_recipe(str(recipe_file)), runs_root=folder / "runs")


@pytest.fixture(scope="session")
def official_templates() -> Path:
    """llama.cpp's copies of the models' official chat templates, from the llama-cpp-python sdist.

    Downloaded from PyPI once and cached; QUICKTUNE_LLAMA_TEMPLATES points at a folder instead.
    """
    if os.environ.get("QUICKTUNE_LLAMA_TEMPLATES"):
        return Path(os.environ["QUICKTUNE_LLAMA_TEMPLATES"])
    version = importlib.metadata.version("llama-cpp-python")
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache_root / "quicktune-tests" / f"llama-cpp-python-{version}-templates"
    if any(folder.glob("*.jinja")):
        return folder
    with tempfile.TemporaryDirectory() as temp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            + [f"llama-cpp-python=={version}", "-d", temp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        archives = list(Path(temp).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            pytest.skip(f"could not download the llama-cpp-python {version} sdist for its templates: {done.stderr[-300:]}")
        staging = Path(temp) / "templates"
        staging.mkdir()
        with tarfile.open(archives[0]) as sdist:
            for member in sdist.getmembers():
                if "/vendor/llama.cpp/models/templates/" in member.name and member.name.endswith(".jinja"):
                    member.name = Path(member.name).name
                    sdist.extract(member, staging, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(staging), folder)
    return folder
