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

import contextlib
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
_EDGE_PROBE = "QtEdgeProbe-"


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
    _trims: bool | None = field(default=None, repr=False)

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
        if self.trims_messages():
            messages = strip_edges(messages)
        if messages and messages[0]["role"] == "system" and not self.accepts_system():
            messages = fold_system(messages)
        return templates.render(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt, special_tokens=self.special
        )

    def end_of_turn(self) -> str:
        """The token the template puts right after an assistant's answer (e.g. ``<|im_end|>``).

        One token, never the whole tail: Phi-3.5's template writes ``<|end|>`` and a newline
        after every answer and ``<|endoftext|>`` after the last one; the end of a turn is
        ``<|end|>``. With a vocabulary, the longest token the tail starts with; without one,
        the tail's first word, cut after its first ``>`` (special tokens look like ``<...>``).
        """
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        rendered = self.render(probe)
        tail = rendered[rendered.index(_PROBE) + len(_PROBE) :].lstrip()
        if not tail:
            return ""
        if self.backend is not None:
            for end in range(len(tail), 0, -1):
                if self.backend.token_to_id(tail[:end]) is not None:
                    return tail[:end]
        word = tail.split(maxsplit=1)[0]
        return word[: word.index(">") + 1] if word.startswith("<") and ">" in word else word

    def trims_messages(self) -> bool:
        """True for templates that strip the edges of a message's text (Llama 3.x, Gemma).

        Read off a probe render, not the family's name. quicktune then strips message
        edges itself wherever it renders (training data, ``chat``, ``eval``, the export's
        checks): Ollama's Go templates have no trim, so only a prompt without edge
        whitespace is served as it was trained.
        """
        if self._trims is None and not self.chat_template:
            self._trims = False
        if self._trims is None:
            edged = {role: f" \n {_EDGE_PROBE}{role} \n " for role in ("system", "user", "assistant")}
            probe = [{"role": role, "content": text} for role, text in edged.items()]
            if not self.accepts_system():
                probe = probe[1:]
            try:
                rendered = templates.render(self.chat_template, probe, special_tokens=self.special)
            except templates.TemplateError:
                rendered = ""
            self._trims = any(
                m["content"].strip() in rendered and m["content"] not in rendered for m in probe
            )
        return self._trims

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
    """For templates without a system role (Gemma 2): the system text opens the first user turn.

    Joined by one newline, as llama.cpp does (``common/chat.cpp``,
    ``system_message_not_supported``): llama-server, and Ollama when it renders the GGUF's
    template, fold a system message that way, and the Modelfile TEMPLATE is read off this
    function; so training, Ollama and llama-server build the same prompt.
    """
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n{first['content']}"}, *rest]


def strip_edges(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each message's text without leading and trailing whitespace (what Jinja's ``trim`` does)."""
    return [{**m, "content": m["content"].strip()} for m in messages]


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


def gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERSION_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _from_gguf(source: ModelSource) -> ChatTokenizer:
    folder = cache_dir() / "tokenizers" / gguf_cache_key(source.path)
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


_NORMAL = 1  # gguf.TokenType.NORMAL: llama.cpp matches it inside text like any piece, never whole


def tokenization_warnings(fields: dict[str, Any], tokenizer: ChatTokenizer) -> list[str]:
    """Where llama.cpp will tokenize the trained chat format differently from training, and why.

    ``fields``: a GGUF's metadata. Two causes are known (tests/export/test_architectures.py):
    a template's special token stored as NORMAL, and SentencePiece spacing after a special token.
    """
    if not tokenizer.chat_template:
        return []
    try:
        rendered = tokenizer.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}])
    except QuicktuneError:
        return []
    # every added token the template writes: each is one token in training, special or user-defined
    added = tokenizer.backend.get_added_tokens_decoder().values()
    specials = [token.content for token in added if token.content in rendered]
    tokens = fields.get("tokenizer.ggml.tokens") or []
    types = fields.get("tokenizer.ggml.token_type") or []
    index = {token: i for i, token in enumerate(tokens)}
    ends = {fields.get("tokenizer.ggml.eos_token_id"), fields.get("tokenizer.ggml.eot_token_id")}
    warnings = []
    spelled = [t for t in specials if t in index and index[t] < len(types) and types[index[t]] == _NORMAL]
    spelled = [t for t in spelled if index[t] not in ends]  # llama.cpp makes its end-of-turn tokens CONTROL
    if spelled:
        warnings.append(
            f"{', '.join(spelled)}: one token each in training but NORMAL tokens in the GGUF, so llama.cpp and "
            "Ollama spell them out as text; the converter reads user-defined tokens only from "
            "tokenizer_config.json's added_tokens_decoder or added_tokens.json, which the base's folder lacks"
        )
    marker = next((t for t in specials if t not in spelled), None)
    if fields.get("tokenizer.ggml.model") == "llama" and fields.get("tokenizer.ggml.add_space_prefix", True) and marker:
        after = tokenizer.backend.encode(marker + "\nHi", add_special_tokens=False).tokens
        if len(after) > 1 and not after[1].startswith("\u2581"):
            warnings.append(
                f"llama.cpp puts a space ('\u2581') before the text after each special token of a SentencePiece "
                f"vocabulary (add_space_prefix); the trained tokenizer does not ({marker}\\n -> {after[:3]}: "
                "a legacy=False tokenizer.json, Metaspace with prepend_scheme 'first'), so served prompts "
                "carry one extra token after every turn marker"
            )
    return warnings


# --- a GGUF's vocabulary, tokenized as llama.cpp tokenizes it ---------------------------------
#
# transformers' GGUF converter gets the vocabulary and merges right but not always the text
# splitting: it gives Llama 3's vocabulary GPT-2's pre-tokenizer (digits in runs, not in threes),
# Phi-3's SentencePiece vocabulary no space handling at all, Qwen's an NFC normalizer that
# llama.cpp does not apply, and SmolLM2's a SentencePiece-style byte fallback. So quicktune sets
# the normalizer, pre-tokenizer and decoder from what llama.cpp does for the GGUF's
# ``tokenizer.ggml.model`` and ``tokenizer.ggml.pre``, and refuses vocabularies it has not
# checked (tests/data/test_real_vocabs.py: llama.cpp's own test strings, every one equal).

_CONVERSION_VERSION = 2  # bump when the conversion changes: cached tokenizers are re-made
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_WS = r"\s*[\r\n]+|\s+(?!\S)|\s+"
# tokenizer.ggml.pre -> the regex llama.cpp splits text with before byte-level BPE
BPE_SPLITS = {
    "llama-bpe": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _WS,
    "qwen2": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _WS,
    "qwen35": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|" + _WS,
}
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
# SmolLM2: GPT-2's split, each digit on its own
_SMOLLM = [{"type": "Digits", "individual_digits": True}, {**_BYTE_LEVEL, "use_regex": True}]
# What quicktune supports: (tokenizer.ggml.model, tokenizer.ggml.pre) -> the families that use it.
SUPPORTED_VOCABS = {
    ("gpt2", "llama-bpe"): "Llama 3.x",
    ("gpt2", "qwen2"): "Qwen2, Qwen2.5, Qwen3",
    ("gpt2", "qwen35"): "Qwen3.5",
    ("gpt2", "smollm"): "SmolLM2",
    ("llama", None): "SentencePiece: Llama 2, Mistral v0.1-v0.3, Phi-3/3.5",
}


def _vocab_kind(meta: dict[str, Any], gguf_path: Path) -> tuple[str, str | None]:
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    kind = (model, None if model == "llama" else pre)
    if kind not in SUPPORTED_VOCABS:
        supported = "; ".join(f"{m}/{p or 'any'} ({name})" for (m, p), name in SUPPORTED_VOCABS.items())
        raise QuicktuneError(
            f"{gguf_path.name}: quicktune cannot reproduce llama.cpp's tokenizer {model!r} with pre-tokenizer "
            f"{pre!r}; training on it would tokenize differently from the exported model",
            hint=f"Supported vocabularies (tokenizer.ggml.model/pre): {supported}. Or point model.base at "
            "the model's Hugging Face folder or hub id.",
        )
    return kind


def _match_llama_cpp(tokenizer: dict[str, Any], kind: tuple[str, str | None], meta: dict[str, Any]) -> None:
    """Normalizer, pre-tokenizer and decoder as llama.cpp splits this vocabulary (in place)."""
    model, pre = kind
    if model == "gpt2":
        tokenizer["normalizer"] = None
        if pre == "smollm":
            splits = _SMOLLM
        else:
            split = {"type": "Split", "pattern": {"Regex": BPE_SPLITS[pre]}, "behavior": "Isolated", "invert": False}
            splits = [split, _BYTE_LEVEL]
        tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": splits}
        tokenizer["decoder"] = {**_BYTE_LEVEL, "use_regex": True}
        tokenizer["model"]["byte_fallback"] = False
        # Llama 3 takes a split that is itself in the vocabulary whole, whatever the merges say
        tokenizer["model"]["ignore_merges"] = pre == "llama-bpe"
        if pre == "llama-bpe":
            # llama.cpp adds <|begin_of_text|> for Llama 3 though the GGUF need not say so; llama.cpp's
            # converter hashes the pre-tokenizer with it (without: 'smaug-bpe', another split)
            tokenizer["post_processor"] = _prepend_bos(meta)
        return
    # SentencePiece: spaces are '▁', and llama.cpp puts one before the text at the start and
    # after every special token (add_space_prefix, on unless the GGUF says otherwise).
    steps = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": steps}
    tokenizer["pre_tokenizer"] = None
    tokenizer["model"]["byte_fallback"] = True


def _prepend_bos(meta: dict[str, Any]) -> dict[str, Any]:
    bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    bos = meta["tokenizer.ggml.tokens"][bos_id]
    first = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    second = [{"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]
    return {
        "type": "TemplateProcessing",
        "single": first,
        "pair": first + second,
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def _sentencepiece_model(meta: dict[str, Any]) -> bytes:
    """The GGUF's SentencePiece vocabulary as a ``tokenizer.model``.

    llama.cpp's converter reads some families' vocabulary only from this file (Phi-3 refuses
    to convert without it), and a folder made from a GGUF has no other. GGUF token types
    use SentencePiece's numbers (NORMAL 1 ... BYTE 6), so pieces go over as they are.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = spm.ModelProto()
    scores = meta.get("tokenizer.ggml.scores") or []
    ids = {key: meta.get(f"tokenizer.ggml.{key}_token_id", -1) for key in ("unknown", "bos", "eos", "padding")}
    unknown, unused = spm.ModelProto.SentencePiece.UNKNOWN, spm.ModelProto.SentencePiece.UNUSED
    for i, (token, kind) in enumerate(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"])):
        # SentencePiece allows one UNKNOWN piece; Phi-3's GGUF also marks its padding pieces so
        kind = unknown if i == ids["unknown"] else unused if kind == unknown else int(kind)
        model.pieces.add(piece=token, score=float(scores[i]) if i < len(scores) else 0.0, type=kind)
    model.trainer_spec.model_type = spm.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(model.pieces)
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id = ids["unknown"], ids["bos"]
    model.trainer_spec.eos_id, model.trainer_spec.pad_id = ids["eos"], ids["padding"]
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    return model.SerializeToString()


def _convert_gguf_tokenizer(gguf_path: Path, folder: Path) -> None:
    meta = read_gguf_fields(gguf_path, "tokenizer.")
    kind = _vocab_kind(meta, gguf_path)  # before transformers, which fails on some architectures
    from transformers import AutoTokenizer

    converted = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for key, gguf_key in _GGUF_SPECIAL_IDS.items():
        if meta.get(gguf_key) is not None:
            setattr(converted, key, converted.backend_tokenizer.id_to_token(int(meta[gguf_key])))
    if meta.get("tokenizer.chat_template"):
        converted.chat_template = meta["tokenizer.chat_template"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        converted.save_pretrained(str(staging))
        tokenizer_file = staging / "tokenizer.json"
        tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        _match_llama_cpp(tokenizer, kind, meta)
        tokenizer_file.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        if kind[0] == "llama":
            (staging / "tokenizer.model").write_bytes(_sentencepiece_model(meta))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stop_token_ids(tokenizer: ChatTokenizer) -> set[int]:
    """Ids that end an answer: the eos and the template's end-of-turn token."""
    ids = {tokenizer.eos_id}
    with contextlib.suppress(Exception):  # a template without assistant turns has no end-of-turn marker
        ids.add(tokenizer.token_id(tokenizer.end_of_turn()))
    ids.discard(None)
    return ids
