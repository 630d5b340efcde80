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
