"""Eval answers kept for the next eval that asks the same model the same questions the same way.

An answer is a function of the model's files, the exact prompt tokens, and how it was decoded (greedy,
the answer budget, the stop tokens, the batching, the libraries' versions). ``quicktune run`` ends with an
eval against the base model; ``quicktune eval RUN --against fewshot`` right after asked the base model and
the run those same rows again. Each subject's answers (with its loss and preference-pair scores, computed
from the same loaded model) are kept under a key of all of that, and reused when the key matches:

- a run's own answers in its folder (``RUN/eval/answers/``), next to what they describe;
- the base model's, alone and few-shot, in the user cache (``QUICKTUNE_CACHE/eval-answers/``), since every
  run of a recipe asks the same base.

One file per key, written whole by ``write_atomic`` (a temp file, then a rename): two evals at once that
compute the same key write the same answers and the last rename wins; a reader sees a whole file or none,
so no lock is needed (an append-only log would need one, and compaction). A file that cannot be read is
computed again and replaced. Each folder keeps its ``MAX_ENTRIES`` most recently used files; deleting a
folder is always safe. Answers from a server (``--endpoint``) and the judge's verdicts are never kept:
what a server runs can change behind the same URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune import llamacpp
from quicktune.data import tokenizer as data_tokenizer  # cache_dir looked up when called: tests move the cache
from quicktune.metrics import Answer
from quicktune.runs import now, sha256_file, write_atomic

FORMAT = 1  # raised when how answers are computed changes in a way the key does not see
MAX_ENTRIES = 200  # files kept per folder, the most recently used (an entry is a few KB)
RUN_FOLDER = Path("eval") / "answers"
USER_FOLDER = "eval-answers"
HASHES = "eval-file-hashes.json"  # in the user cache: model files' sha256 by (path, size, mtime), hashed once
MAX_HASHES = 5000  # files remembered; past that the memo starts again

USE, REFRESH, OFF = "use", "refresh", "off"  # reuse kept answers; compute again and keep them; neither


@dataclass(frozen=True)
class AnswerCache:
    """Where one model's answers are kept, and the model's identity (its files' hashes) every key starts
    with; ``identity`` None: this model's answers are not kept (it has no identity that pins its weights)."""

    folder: Path | None = None
    identity: dict[str, Any] | None = None
    mode: str = OFF

    @property
    def active(self) -> bool:
        return self.mode != OFF and self.folder is not None and self.identity is not None

    def key(self, parts: dict[str, Any]) -> str | None:
        """The key of the answers to one set of prompts (``parts``: everything but the model), None when
        not kept."""
        if not self.active:
            return None
        payload = {"format": FORMAT, "model": self.identity, **parts}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def read(self, key: str | None, rows: int) -> dict[str, Any] | None:
        """The entry kept under ``key`` (with ``answers`` as ``Answer``s), None when there is none, it cannot
        be read, it holds other than ``rows`` answers, or ``--no-cache`` asked for fresh answers."""
        if key is None or self.mode != USE:
            return None
        path = self.folder / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            answers = [Answer(a["text"], a["stopped"]) for a in entry["answers"]]
            if entry.get("format") != FORMAT or len(answers) != rows or not all(
                isinstance(a.text, str) and isinstance(a.stopped, bool) for a in answers
            ):
                return None
            if not {"computed", "loss", "prompt_tokens"} <= entry.keys() or not isinstance(
                entry.get("pair_metrics", {}), dict
            ):
                return None
            entry["answers"] = answers
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing or unreadable: computed again, and replaced
        with contextlib.suppress(OSError):  # a folder that cannot be written is still read
            os.utime(path)  # recently used: kept longest
        return entry

    def write(self, key: str | None, answers: list[Answer], loss: float | None, seconds: float,
              prompt_tokens: float | None, pair_metrics: dict[str, Any] | None = None) -> None:
        """Keeps one subject's answers under ``key``; a cache that cannot be written costs time next run,
        nothing else."""
        if key is None or not self.active:
            return
        entry = {"format": FORMAT, "computed": now(), "seconds": seconds, "loss": loss,
                 "prompt_tokens": prompt_tokens, "pair_metrics": pair_metrics or {},
                 "answers": [{"text": a.text, "stopped": a.stopped} for a in answers]}
        try:
            write_atomic(self.folder / f"{key}.json", json.dumps(entry, ensure_ascii=False))
            prune(self.folder)
        except OSError:
            pass


NOT_KEPT = AnswerCache()  # answers computed, and not kept


def prune(folder: Path, keep: int = MAX_ENTRIES) -> None:
    """Deletes all but the ``keep`` most recently used entries of ``folder``."""
    entries = []
    for path in folder.glob("*.json"):
        try:
            entries.append((path.stat().st_mtime, path))
        except OSError:
            continue  # deleted by another eval meanwhile
    for _, path in sorted(entries, reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def for_base(manifest: dict[str, Any], mode: str) -> AnswerCache:
    """The base model's answers (alone and few-shot), in the user cache; kept only when the base has a
    fingerprint (a GGUF's sha256, or model.revision's commit): a hub id without a revision can change."""
    fingerprint = (manifest.get("base_model") or {}).get("fingerprint")
    if not fingerprint:
        return NOT_KEPT
    return AnswerCache(data_tokenizer.cache_dir() / USER_FOLDER, {"base": fingerprint}, mode)


def for_run(run_dir: Path, manifest: dict[str, Any], trained: Path, full: bool, mode: str) -> AnswerCache:
    """A run's answers, in its folder: keyed by the files it trained (``trained``: the adapter, or the whole
    model of a full fine-tune) and, for an adapter, the base it sits on."""
    if mode == OFF:
        return NOT_KEPT
    base = None if full else (manifest.get("base_model") or {}).get("fingerprint")
    if not full and not base:
        return NOT_KEPT
    try:
        identity = {"trained": folder_hash(trained), **({} if full else {"base": base})}
    except OSError:
        return NOT_KEPT  # eval itself says what is wrong with the folder
    return AnswerCache(run_dir / RUN_FOLDER, identity, mode)


def for_file(run_dir: Path, model_file: Path, mode: str) -> AnswerCache:
    """A run's exported GGUF's answers through llama.cpp, in the run's folder, keyed by the file's sha256."""
    if mode == OFF:
        return NOT_KEPT
    try:
        return AnswerCache(run_dir / RUN_FOLDER, {"gguf": folder_hash(model_file)}, mode)
    except OSError:
        return NOT_KEPT


def folder_hash(folder: Path) -> str:
    """sha256 over the names and sha256s of every file in ``folder`` (a file alone: its sha256). A file whose
    size and modification time are those recorded in the user cache is not read again."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    memo_path = data_tokenizer.cache_dir() / HASHES
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        memo = memo if isinstance(memo, dict) and len(memo) < MAX_HASHES else {}
    except (OSError, ValueError):
        memo = {}
    digest, changed = hashlib.sha256(), False
    for path in files:
        stat = path.stat()
        name = str(path.resolve())
        seen = memo.get(name)
        if isinstance(seen, list) and seen[:2] == [stat.st_size, stat.st_mtime_ns]:
            sha = seen[2]
        else:
            sha, changed = sha256_file(path), True
            memo[name] = [stat.st_size, stat.st_mtime_ns, sha]
        digest.update(f"{path.relative_to(folder) if folder.is_dir() else path.name}\0{sha}\n".encode())
    if changed:
        with contextlib.suppress(OSError):  # not remembered: hashed again next time
            write_atomic(memo_path, json.dumps(memo))
    return digest.hexdigest()


def hf_parts(prompts: list[list[int]], tokenized: list, pairs: list, budget: int, *, batch: int,
             loss_batch_tokens: int, stops: set[int], pad_id: int | None, loading: list, backend: list,
             packages: dict[str, Any]) -> dict[str, Any]:
    """Everything but the model that a Hugging Face model's greedy answers, loss and pair scores depend on:
    the prompt tokens, the trained tokens of the loss, the pairs (by text: the tokenizer is pinned by the
    prompt tokens), the budget, the stops and pad, which rows share a batch, how the model is loaded, and
    the libraries' versions."""
    return {
        "decoding": "greedy",
        "prompts": prompts,
        "answers": [[t.input_ids, t.labels] for t in tokenized],
        "pairs": pairs,
        "budget": budget,
        "batch": batch,
        "loss_batch_tokens": loss_batch_tokens,
        "stops": sorted(stops),
        "pad": pad_id,
        "loading": loading,
        "backend": backend,
        "packages": packages,
    }


def gguf_parts(prompts: list[list[int]], tokenized: list, budget: int, stops: set[int], context: int) -> dict[str, Any]:
    """Everything but the GGUF that llama.cpp's greedy answers and loss depend on: the prompt and trained
    tokens, the budget, the stops, the context size, and the bindings' version and build (GPU offload)."""
    return {
        "decoding": "llama.cpp greedy",
        "prompts": prompts,
        "answers": [[t.input_ids, t.labels] for t in tokenized],
        "budget": budget,
        "stops": sorted(stops),
        "context": context,
        "llama.cpp": [llamacpp.version(), llamacpp.build_info()[0]],
    }
