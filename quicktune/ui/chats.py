"""The dashboard's chat: exported GGUFs (and a run's GGUF base) through ``quicktune.chat``.

A model is named ``recipe/vN:QUANT`` (a GGUF the run's export wrote) or ``base:recipe/vN`` (the
GGUF the run was trained from, with the run's served system prompt and sampling settings, so
base and run answer the same prompt the same way). Never a file path: what can be loaded is what
the runs folder's manifests name. Each model is loaded once (llama.cpp, on first use) and answers
one request at a time; the browser keeps the conversation and sends it with every message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.chat import open_session, resolve_target
from quicktune.data.system_prompt import served_prompt
from quicktune.errors import QuicktuneError
from quicktune.models import resolve_model
from quicktune.recipe import load_recipe
from quicktune.runs import QUANT_ORDER, list_runs, read_manifest, run_label
from quicktune.ui.views import run_folder

BASE = "base:"
MAX_TOKENS_CAP = 2048


def _base_gguf(manifest: dict[str, Any]) -> Path | None:
    spec = (manifest.get("base_model") or {}).get("spec")
    try:
        source = resolve_model(spec) if spec else None
    except QuicktuneError:
        return None
    return source.path if source is not None and source.kind == "gguf" else None


def chat_models(root: Path) -> list[dict[str, str]]:
    """What the chat page offers: every exported GGUF, then each run's GGUF base, served as that run is."""
    models, bases = [], []
    for summary in list_runs(root):
        label = run_label(summary.path)
        models.extend({"id": f"{label}:{quant}", "name": f"{label} ({quant})"} for quant in summary.exported)
        base = _base_gguf(read_manifest(summary.path))
        if base is not None:
            bases.append({"id": f"{BASE}{label}", "name": f"base of {label}: {base.name}"})
    return models + bases


def chat_target(root: Path, model: str):
    if model.startswith(BASE):
        run_dir = run_folder(root, model[len(BASE):])
        manifest = read_manifest(run_dir)
        gguf = _base_gguf(manifest)
        if gguf is None:
            raise QuicktuneError(
                f"{run_label(run_dir)}'s base model is not a GGUF file: llama.cpp chats with GGUF files",
                hint=f"Export the run (quicktune export {run_label(run_dir)}) and chat with that.",
            )
        as_served = _served_settings(run_dir, manifest)
        target = resolve_target(str(gguf), root, None)  # a GGUF no run exported: as it is
        target.system, target.temperature, target.top_p = as_served
        target.label = f"base {gguf.name}"
        return target
    name, _, quant = model.rpartition(":")
    if quant not in QUANT_ORDER:
        raise QuicktuneError(f"{model!r} is not a chat model: expected recipe/vN:QUANT or base:recipe/vN")
    return resolve_target(str(run_folder(root, name)), root, quant)


def _served_settings(run_dir: Path, manifest: dict[str, Any]) -> tuple[str | None, float, float]:
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    return served_prompt(recipe, manifest), recipe.export.temperature, recipe.export.top_p


@dataclass
class _Loaded:
    session: Any  # quicktune.chat.ChatSession
    system: str | None  # the target's own system prompt, restored before each request
    label: str
    lock: threading.Lock


class ChatPool:
    def __init__(self, root: Path):
        self.root = root
        self._loaded: dict[str, _Loaded] = {}
        self._loading = threading.Lock()  # one load at a time: llama.cpp's model loading is not made for threads

    def _get(self, model: str) -> _Loaded:
        with self._loading:
            if model not in self._loaded:
                target = chat_target(self.root, model)
                session = open_session(target)
                self._loaded[model] = _Loaded(session, session.system, target.label, threading.Lock())
            return self._loaded[model]

    def prepare(
        self, model: str, history: list[dict[str, str]], message: str, max_tokens: int
    ) -> tuple[str, Iterator[str]]:
        """Load the model (errors surface here, before any answer is streamed), then the answer's pieces."""
        if not isinstance(message, str) or not message.strip():
            raise QuicktuneError("the message is empty")
        _check_history(history)
        loaded = self._get(model)
        budget = max(1, min(int(max_tokens), MAX_TOKENS_CAP))
        return loaded.label, self._answer(loaded, history, message.strip(), budget)

    @staticmethod
    def _answer(loaded: _Loaded, history: list[dict[str, str]], message: str, budget: int) -> Iterator[str]:
        with loaded.lock:  # one llama.cpp context: one answer at a time
            session = loaded.session
            session.system = loaded.system
            session.history = [dict(turn) for turn in history]
            session.max_tokens = budget
            yield from session.reply(message)


def _check_history(history: Any) -> None:
    if not isinstance(history, list) or len(history) % 2:
        raise QuicktuneError("history must be a list of user/assistant turns")
    for index, turn in enumerate(history):
        role = "user" if index % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != role or not isinstance(turn.get("content"), str):
            raise QuicktuneError(f"history[{index}]: expected a {role} turn with text content")
