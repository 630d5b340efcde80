"""A light tokenizer for data work: the Rust ``tokenizers`` backend plus the chat template.

``data check`` and data preparation need only the tokenizer, and importing
transformers pulls in torch (several seconds). So the tokenizer is read straight
from ``tokenizer.json`` + ``tokenizer_config.json``. A GGUF file has no
``tokenizer.json``: the first time, transformers converts its vocabulary and the
result is cached; the special tokens and chat template are read from the GGUF
metadata itself (transformers 5.17 reports SmolLM2's eos as ``<|im_start|>``
where the GGUF says ``<|im_end|>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune import templates
from quicktune.errors import QuicktuneError
from quicktune.models import ModelSource, read_gguf_fields, resolve_model

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_PROBE = "\x00quicktune-probe\x00"


def cache_dir() -> Path:
    root = os.environ.get("QUICKTUNE_CACHE") or Path.home() / ".cache" / "quicktune"
    return Path(root)


@dataclass
class ChatTokenizer:
    backend: Any  # tokenizers.Tokenizer
    chat_template: str | None
    special: dict[str, str | None] = field(default_factory=dict)
    source: str = ""
    template_family: str = "auto"
    source_folder: str | None = None  # where tokenizer.json was read from
    _accepts_system: bool | None = field(default=None, repr=False)

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self.token_id(self.special.get("pad_token"))

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
        if not self.chat_template:
            raise QuicktuneError(
                f"{self.source}: the tokenizer has no chat template",
                hint="Set model.chat_template to the family the model was trained with "
                f"({', '.join(templates.FAMILY_TEMPLATES)}).",
            )
        if messages and messages[0]["role"] == "system" and not self.accepts_system():
            messages = fold_system(messages)
        return templates.render(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt, special_tokens=self.special
        )

    def end_of_turn(self) -> str:
        """The text the template puts right after an assistant's answer (e.g. ``<|im_end|>``)."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        rendered = self.render(probe)
        return rendered[rendered.index(_PROBE) + len(_PROBE) :].strip()

    def accepts_system(self) -> bool:
        """False for templates that raise on a system message (Gemma 2's does)."""
        if self._accepts_system is None:
            probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
            try:
                templates.render(self.chat_template, probe, special_tokens=self.special)
                self._accepts_system = True
            except templates.TemplateError:
                self._accepts_system = False
        return self._accepts_system

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The ids of a prompt that ends where the assistant's answer starts, as in training."""
        return self.encode_batch([self.render(messages, add_generation_prompt=True)])[0].ids

    def encode_batch(self, texts: list[str]) -> list[Any]:
        """Encodings with ids and character offsets; special tokens come from the template only."""
        return self.backend.encode_batch(texts, add_special_tokens=False)


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """For templates without a system role: the system text opens the first user turn."""
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def load_chat_tokenizer(
    base: str, *, chat_template: str = "auto", revision: str | None = None
) -> ChatTokenizer:
    source = resolve_model(base)
    if source.kind == "gguf":
        tokenizer = _from_gguf(source)
    elif source.kind == "dir":
        tokenizer = _from_folder(source.path, source.spec)
    else:
        tokenizer = _from_hub(source, revision)
    if chat_template != "auto":
        tokenizer.chat_template = templates.FAMILY_TEMPLATES[chat_template]
        tokenizer.template_family = chat_template
    return tokenizer


def _special_value(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _from_folder(folder: Path, spec: str) -> ChatTokenizer:
    from tokenizers import Tokenizer

    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise QuicktuneError(
            f"{spec}: no tokenizer.json in {folder}",
            hint="quicktune needs a fast tokenizer; save one with transformers' save_pretrained.",
        )
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template = config.get("chat_template")
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    if isinstance(template, list):  # several named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    special = {key: _special_value(config.get(key)) for key in SPECIAL_KEYS}
    return ChatTokenizer(
        Tokenizer.from_file(str(tokenizer_file)), template, special, spec, source_folder=str(folder)
    )


def _from_hub(source: ModelSource, revision: str | None) -> ChatTokenizer:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise QuicktuneError("huggingface_hub is needed to fetch a tokenizer from the hub") from None
    folder = None
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        try:
            folder = Path(hf_hub_download(source.spec, name, revision=revision)).parent
        except EntryNotFoundError:
            if name == "tokenizer.json":
                raise QuicktuneError(f"{source.spec}: the repository has no tokenizer.json") from None
        except Exception as exc:  # offline, unknown repo, gated repo, network error
            raise QuicktuneError(
                f"{source.spec}: could not get its tokenizer ({type(exc).__name__}: {exc})".splitlines()[0],
                hint="Check the model id, or point model.base at a local folder when offline.",
            ) from None
    return _from_folder(folder, source.spec)


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]


def _from_gguf(source: ModelSource) -> ChatTokenizer:
    folder = cache_dir() / "tokenizers" / _gguf_cache_key(source.path)
    if not (folder / "tokenizer_config.json").is_file():
        _convert_gguf_tokenizer(source.path, folder)
    return _from_folder(folder, source.spec)


_GGUF_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}


def gguf_special_tokens(fields: dict[str, Any]) -> dict[str, str | None]:
    """bos/eos/pad/unk token texts from GGUF metadata fields (``tokens`` + their ids)."""
    tokens = fields.get("tokenizer.ggml.tokens") or []
    special = {}
    for key, gguf_key in _GGUF_SPECIAL_IDS.items():
        index = fields.get(gguf_key)
        special[key] = tokens[index] if index is not None and index < len(tokens) else None
    return special


def _convert_gguf_tokenizer(gguf_path: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    converted = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    meta = read_gguf_fields(gguf_path, "tokenizer.")
    for key, gguf_key in _GGUF_SPECIAL_IDS.items():
        if meta.get(gguf_key) is not None:
            setattr(converted, key, converted.backend_tokenizer.id_to_token(int(meta[gguf_key])))
    if meta.get("tokenizer.chat_template"):
        converted.chat_template = meta["tokenizer.chat_template"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        converted.save_pretrained(str(staging))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
