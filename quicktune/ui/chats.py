"""The dashboard's chat: exported GGUFs (and a run's GGUF base) through ``quicktune.chat``.

A model is named ``recipe/vN:QUANT`` (a GGUF the run's export wrote) or ``base:recipe/vN`` (the
GGUF the run was trained from, with the run's served system prompt and sampling settings, so
base and run answer the same prompt the same way). Never a file path: what can be loaded is what
the runs folder's manifests name. Each model is loaded once (llama.cpp, on first use) and answers
one request at a time; the browser keeps the conversation and sends it with every message.

Loaded models are keyed by the GGUF file they read (resolved) and its context size, not by the name asked
for: every run trained from one base shares one loaded base. At most ``MAX_LOADED`` models (and
``MAX_LOADED_BYTES`` of GGUF files) stay loaded; the least recently used goes first, and its memory is
freed once no answer uses it any more.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.chat import open_session, resolve_target
from quicktune.data.system_prompt import served_prompt
from quicktune.errors import QuicktuneError
from quicktune.models import resolve_model
from quicktune.recipe import load_recipe
from quicktune.runs import QUANT_ORDER, read_manifest, run_label
from quicktune.ui.views import contained_runs, run_folder

BASE = "base:"
MAX_TOKENS_CAP = 2048
MAX_LOADED = 3  # the chat page compares two models; one more switches back without a reload
MAX_LOADED_BYTES = 12 << 30  # of GGUF files loaded at once (the one in use is kept whatever its size)


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
    for summary in contained_runs(root):
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
    session: Any  # quicktune.chat.ChatSession: the model, its context, its tokenizer
    size: int  # bytes of its GGUF file
    lock: threading.Lock  # one llama.cpp context: one answer at a time


class ChatPool:
    def __init__(self, root: Path, max_models: int = MAX_LOADED, max_bytes: int = MAX_LOADED_BYTES):
        self.root = root
        self.max_models, self.max_bytes = max_models, max_bytes
        self._loaded: OrderedDict[tuple[Path, int], _Loaded] = OrderedDict()  # least recently used first
        self._loading = threading.Lock()  # one load at a time: llama.cpp's model loading is not made for threads

    def loaded(self) -> list[tuple[Path, int]]:
        """(GGUF file, context size) of every model loaded now, least recently used first."""
        with self._loading:
            return list(self._loaded)

    def _get(self, target) -> _Loaded:
        key = (target.gguf.resolve(), target.num_ctx)
        with self._loading:
            found = self._loaded.get(key)
            if found is None:
                found = _Loaded(open_session(target), key[0].stat().st_size, threading.Lock())
                self._loaded[key] = found
            self._loaded.move_to_end(key)
            while len(self._loaded) > 1 and (
                len(self._loaded) > self.max_models or sum(m.size for m in self._loaded.values()) > self.max_bytes
            ):
                self._loaded.popitem(last=False)  # freed when the last answer using it ends
            return found

    def prepare(
        self, model: str, history: list[dict[str, str]], message: str, max_tokens: Any,
        gone: Callable[[], bool] = lambda: False,
    ) -> tuple[str, Iterator[str]]:
        """Load the model (errors surface here, before any answer is streamed), then the answer's pieces.
        ``gone`` says whether the client went away: asked before the answer starts and after each piece."""
        if not isinstance(model, str) or not model:
            raise QuicktuneError("no model named: expected recipe/vN:QUANT or base:recipe/vN")
        if not isinstance(message, str) or not message.strip():
            raise QuicktuneError("the message is empty")
        _check_history(history)
        budget = _answer_budget(max_tokens)
        target = chat_target(self.root, model)
        loaded = self._get(target)
        return target.label, self._answer(loaded, target, history, message.strip(), budget, gone)

    @staticmethod
    def _answer(loaded: _Loaded, target, history: list[dict[str, str]], message: str, budget: int,
                gone: Callable[[], bool]) -> Iterator[str]:
        with loaded.lock:
            if gone():  # left while it waited for the model: nothing to answer
                return
            session = loaded.session
            session.system, session.temperature, session.top_p = target.system, target.temperature, target.top_p
            session.history = [dict(turn) for turn in history]
            session.max_tokens = budget
            pieces = session.reply(message)
            try:
                for piece in pieces:
                    yield piece
                    if gone():
                        return
            finally:
                pieces.close()


def _answer_budget(max_tokens: Any) -> int:
    finite = isinstance(max_tokens, int) or (isinstance(max_tokens, float) and math.isfinite(max_tokens))
    if isinstance(max_tokens, bool) or not finite:
        raise QuicktuneError(f"max_tokens must be a number, not {repr(max_tokens)[:40]}")
    return max(1, min(int(max_tokens), MAX_TOKENS_CAP))


def _check_history(history: Any) -> None:
    if not isinstance(history, list) or len(history) % 2:
        raise QuicktuneError("history must be a list of user/assistant turns")
    for index, turn in enumerate(history):
        role = "user" if index % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != role or not isinstance(turn.get("content"), str):
            raise QuicktuneError(f"history[{index}]: expected a {role} turn with text content")
