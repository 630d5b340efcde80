"""Make a recipe's base model loadable by the trainer and record where it came from; follow a
finished run back to its recipe, chat tokenizer and base model (``TrainedRun``).

A hub id or a local folder is used as it is. A GGUF file (the demo's SmolLM2) is
converted once into an ordinary Hugging Face folder in quicktune's cache: transformers
de-quantizes the weights (stored in float32, so nothing more is lost), and the
tokenizer is the one ``data check`` uses, with the GGUF's own eos/pad and template.
transformers is imported inside the functions that convert, after ``load_backend()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from quicktune.backend import load_backend
from quicktune.data.tokenizer import ChatTokenizer, cache_dir, load_chat_tokenizer
from quicktune.errors import QuicktuneError
from quicktune.models import ModelSource, resolve_model
from quicktune.recipe import Recipe, load_recipe
from quicktune.runs import read_manifest, sha256_file, trained_dir


@dataclass
class BaseModel:
    spec: str  # as the recipe wrote it
    load_from: str  # hub id or local folder handed to from_pretrained
    kind: str
    fingerprint: str | None  # sha256 of a GGUF file, or the hub revision when known


def prepare_base(spec: str, revision: str | None = None) -> BaseModel:
    source = resolve_model(spec)
    if source.kind == "gguf":
        return BaseModel(spec, str(_converted_gguf(source)), "gguf", f"sha256:{sha256_file(source.path)}")
    if source.kind == "dir":
        return BaseModel(spec, str(source.path), "dir", None)
    if revision is not None:  # model.revision pins the weights too: the files of that commit, loaded by path
        return BaseModel(spec, str(_snapshot(spec, revision)), "hub", revision)
    return BaseModel(spec, spec, "hub", revision)


# What training loads from a hub snapshot: weights, configs, tokenizer and chat template files.
SNAPSHOT_FILES = ["*.safetensors", "*.json", "*.model", "*.jinja", "*.txt"]


def _snapshot(repo: str, revision: str) -> Path:
    """The folder of ``repo`` at ``revision`` (downloaded once into the hub cache, offline after)."""
    from huggingface_hub import snapshot_download

    try:
        try:  # already in the cache: no network at all (a commit hash is otherwise listed online)
            return Path(
                snapshot_download(repo, revision=revision, allow_patterns=SNAPSHOT_FILES, local_files_only=True)
            )
        except Exception:
            return Path(snapshot_download(repo, revision=revision, allow_patterns=SNAPSHOT_FILES))
    except Exception as exc:  # offline without that commit cached, an unknown revision, no network, ...
        raise QuicktuneError(
            f"model.revision {revision}: could not get {repo} at that revision "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
            hint="Check the revision (a branch, tag or commit of the model's hub repository) and the network; "
            "offline, only a revision already in the hub cache loads.",
        ) from None


def base_folder(manifest: dict, recipe) -> str:
    """The folder a finished run's base weights were loaded from, re-made if the cache lost it."""
    loaded = (manifest.get("base_model") or {}).get("loaded_from")
    if loaded and (Path(loaded) / "config.json").is_file():
        return loaded
    load_backend()  # Unsloth before transformers, which prepare_base imports
    return prepare_base(recipe.model.base, recipe.model.revision).load_from


@dataclass
class TrainedRun:
    """A run folder followed the way eval and export follow it: run folder -> manifest -> recipe ->
    what it trained (``adapter/`` or ``model/``) and its chat tokenizer -> the base model's folder.

    The manifest is read when the run is opened (``open_run``); the recipe, the tokenizer and the
    base folder only when asked, in the order the caller asks, so its errors come in that order."""

    run_dir: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str | None:
        return self.manifest.get("status")

    @property
    def full(self) -> bool:
        """A full fine-tune: ``trained`` holds the whole model, no adapter to put on a base."""
        return self.manifest.get("method") == "full"

    @property
    def trained(self) -> Path:
        """The folder of what the run trained: ``model/`` for a full fine-tune, else ``adapter/``."""
        return trained_dir(self.run_dir, self.manifest)

    @cached_property
    def recipe(self) -> Recipe:
        """The resolved recipe the run wrote into its folder (``recipe.yaml``), read once."""
        return load_recipe(str(self.run_dir / "recipe.yaml"))

    def require_finished(self, missing: str = "", hint: str | None = None) -> None:
        """Raise unless training finished; ``missing`` ends the message (what there is not), ``hint`` says
        what to do."""
        if self.status != "finished":
            raise QuicktuneError(f"{self.run_dir} is not finished (status: {self.status}){missing}", hint=hint)

    def chat_tokenizer(self) -> ChatTokenizer:
        """The chat tokenizer saved with what the run trained (its trained template, eos and pad)."""
        return load_chat_tokenizer(str(self.trained))

    def base_folder(self) -> str:
        """The folder the base weights were loaded from (``base_folder``: re-made if the cache lost it)."""
        return base_folder(self.manifest, self.recipe)


def open_run(run_dir: Path) -> TrainedRun:
    """The run at ``run_dir`` with its manifest read; the rest is read when asked."""
    return TrainedRun(run_dir, read_manifest(run_dir))


def _converted_gguf(source: ModelSource) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_chat_tokenizer(source.spec)  # converts and caches the tokenizer first
    key = Path(tokenizer.source_folder).name
    folder = cache_dir() / "models" / key
    if (folder / "config.json").is_file():
        return folder
    model = AutoModelForCausalLM.from_pretrained(
        str(source.path.parent), gguf_file=source.path.name, dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # "quantized with gguf" models refuse save_pretrained otherwise
        quantizer.remove_quantization_config(model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(str(staging))
        for item in Path(tokenizer.source_folder).iterdir():
            shutil.copy2(item, staging / item.name)
        try:
            os.replace(staging, folder)
        except OSError:  # another process converted the same GGUF meanwhile: use its (whole) folder
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
