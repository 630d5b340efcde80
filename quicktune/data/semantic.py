"""Semantic near-duplicates: rows that ask the same thing in other words.

Each row's prompt (its user turns; a text row's text) is embedded once with WordLlama's
static token embeddings (the ``wordllama`` wheel ships the 256-dimensional
``l2_supercat`` table and its tokenizer, so nothing is downloaded): the mean of the
prompt's token vectors, scaled to unit length. Two prompts are semantic duplicates when
the cosine of their embeddings is at least ``data.semantic_threshold`` (off by default;
0.85 suggested). The same vectors serve the train/eval leakage search.

Why WordLlama (bench/semantic.py, numbers in bench/README.md): it needs neither torch
(``data check`` must not import it) nor a forward pass of a model, and at 0.85 it found
every reworded prompt of the planted set with no false positive among distinct prompts or
the 1,999,000 pairs of 2,000 templated rows (on 100k such rows it reported 229 pairs nobody
planted, not inspected); it catches only a few paraphrases that share few words.
all-MiniLM-L6-v2 and SmolLM2's own hidden states (through llama.cpp) were measured too.

The files are read here rather than through ``wordllama.WordLlama.load``: importing
``wordllama.inference`` calls ``logging.basicConfig(level=INFO)``, which would send
every library's INFO logging to the terminal, and its loader falls back to a hub
download when a file is missing, where quicktune wants a clear error.

Search: eval against train (leakage) and small sets are compared exactly, block by
block. Larger sets find candidates by sorting sign-of-random-projection codes (a
pair at cosine 0.9 agrees on ~86% of the bits, so it shares a long prefix in some of
the orders) and comparing each row with its neighbours in each order; every
candidate's cosine is then computed exactly, so no pair below the threshold is
reported.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from quicktune.errors import DataError

SEMANTIC_THRESHOLD = 0.85  # suggested data.semantic_threshold: no false positive in bench/semantic.py (bench/README.md)
_WEIGHTS = "weights/l2_supercat_256.safetensors"
_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
_EXACT_PAIRS = 400_000_000  # up to this many comparisons the search is exact (a few seconds)
_BLOCK = 512  # query rows per matrix product
_ORDERS = 12  # random-projection orders searched
_BITS = 24  # sign bits per order
_WINDOW = 12  # neighbours on each side compared in each order
_EMBED_BATCH = 4096  # texts per tokenizer call
_POOL_TEXTS = 64  # texts per gather-and-sum


@dataclass(frozen=True, slots=True)
class Pair:
    first: int
    second: int
    similarity: float


class WordLlamaEmbedder:
    """Mean-pooled, unit-length WordLlama token embeddings."""

    name = "wordllama l2_supercat 256"

    def __init__(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = _wordllama_root()
        self.table = load_file(str(root / _WEIGHTS))["embedding.weight"].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(root / _TOKENIZER))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def embed(self, texts: list[str]) -> np.ndarray:
        table, dim = self.table, self.table.shape[1]
        out = np.zeros((len(texts), dim), dtype=np.float32)
        gathered = np.empty((0, dim), dtype=np.float32)
        for start in range(0, len(texts), _EMBED_BATCH):
            # encode_batch_fast: no character offsets, which pooling does not need
            encodings = self.tokenizer.encode_batch_fast(texts[start : start + _EMBED_BATCH], add_special_tokens=False)
            lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
            ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
            np.clip(ids, 0, len(table) - 1, out=ids)
            ends = np.cumsum(lengths)
            # Sum each text's token vectors a few texts at a time, into one reused buffer: gathering a whole
            # batch at once touches hundreds of MB of fresh memory and took 5x as long (bench/README.md).
            for first in range(0, len(encodings), _POOL_TEXTS):
                last = min(first + _POOL_TEXTS, len(encodings))
                begin, end = int(ends[first] - lengths[first]), int(ends[last - 1])
                if end == begin:
                    continue
                if len(gathered) < end - begin:
                    gathered = np.empty((end - begin, dim), dtype=np.float32)
                np.take(table, ids[begin:end], axis=0, out=gathered[: end - begin])
                nonempty = np.flatnonzero(lengths[first:last]) + first
                offsets = ends[nonempty] - lengths[nonempty] - begin
                out[start + nonempty] = np.add.reduceat(gathered[: end - begin], offsets, axis=0)
        return unit_rows(out)


@lru_cache(maxsize=1)
def default_embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


class PromptVectors:
    """Each example's prompt embedded once, for the duplicate search and the leakage search alike."""

    def __init__(self, examples: list, prompt_text: Callable[[Any], str]) -> None:
        embedder = default_embedder()
        self.name, self._embed, self._prompt_text = embedder.name, embedder.embed, prompt_text
        self._row = {id(e): i for i, e in enumerate(examples)}
        self._vectors = self._embed([prompt_text(e) for e in examples])

    def rows(self, indices: list[int]) -> np.ndarray:
        return self._vectors[np.asarray(indices, dtype=np.int64)]

    def of(self, examples: list) -> np.ndarray:
        """Vectors of ``examples``: looked up when they were embedded already, else embedded now."""
        rows = [self._row.get(id(e)) for e in examples]
        out = np.empty((len(examples), self._vectors.shape[1]), dtype=np.float32)
        known = [i for i, r in enumerate(rows) if r is not None]
        out[known] = self._vectors[[rows[i] for i in known]]
        new = [i for i, r in enumerate(rows) if r is None]
        if new:
            out[new] = self._embed([self._prompt_text(examples[i]) for i in new])
        return out


def _wordllama_root() -> Path:
    spec = importlib.util.find_spec("wordllama")  # finds the files without running the package's imports
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the semantic duplicate check needs the wordllama package (its wheel carries the embeddings)",
            hint="pip install 'wordllama>=0.4,<0.5', or turn the check off with --set data.semantic_threshold=null",
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    missing = [name for name in (_WEIGHTS, _TOKENIZER) if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"the installed wordllama package lacks {', '.join(missing)} under {root}",
            hint="reinstall it: pip install --force-reinstall 'wordllama>=0.4,<0.5'",
        )
    return root


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def similar_pairs(embeddings: np.ndarray, threshold: float, *, split: int | None = None) -> list[Pair]:
    """Pairs (i < j) whose cosine is at least ``threshold``; with ``split`` only i < split <= j.

    ``embeddings`` are unit rows. Sorted by (second, first).
    """
    n = len(embeddings)
    if n < 2 or split == 0 or split == n:
        return []
    comparisons = (split * (n - split)) if split is not None else n * (n - 1) // 2
    if comparisons <= _EXACT_PAIRS:
        found = _exact(embeddings, threshold, split)
    else:
        found = _projected(embeddings, threshold, split)
    return sorted(found, key=lambda p: (p.second, p.first))


def _exact(embeddings: np.ndarray, threshold: float, split: int | None) -> list[Pair]:
    pairs = []
    for block in range(0 if split is None else split, len(embeddings), _BLOCK):
        rows = embeddings[block : block + _BLOCK]
        if split is None:  # each pair once, as (earlier, later): a row meets only the rows before it
            scores = rows @ embeddings[: block + len(rows)].T
            later = np.arange(scores.shape[1])[None, :] >= np.arange(block, block + len(rows))[:, None]
            scores[later] = -1.0
        else:
            scores = rows @ embeddings[:split].T
        row, col = np.nonzero(scores >= threshold)
        pairs += [Pair(int(c), int(block + r), float(scores[r, c])) for r, c in zip(row, col)]
    return pairs


def _projected(embeddings: np.ndarray, threshold: float, split: int | None) -> list[Pair]:
    n, dim = embeddings.shape
    rng = np.random.default_rng(1234)
    weights = (np.uint64(1) << np.arange(_BITS, dtype=np.uint64))[::-1]
    firsts, seconds = [], []
    for _ in range(_ORDERS):
        planes = rng.standard_normal((dim, _BITS)).astype(np.float32)
        codes = ((embeddings @ planes) > 0).astype(np.uint64) @ weights
        order = np.argsort(codes, kind="stable")
        for step in range(1, _WINDOW + 1):
            a, b = order[:-step], order[step:]
            low, high = np.minimum(a, b), np.maximum(a, b)
            if split is not None:
                keep = (low < split) & (high >= split)
                low, high = low[keep], high[keep]
            firsts.append(low)
            seconds.append(high)
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    codes = np.unique(first.astype(np.int64) * n + second)
    first, second = codes // n, codes % n
    pairs = []
    for start in range(0, len(first), 1_000_000):
        i, j = first[start : start + 1_000_000], second[start : start + 1_000_000]
        scores = np.einsum("ij,ij->i", embeddings[i], embeddings[j])
        hit = scores >= threshold
        pairs += [Pair(int(a), int(b), float(s)) for a, b, s in zip(i[hit], j[hit], scores[hit])]
    return pairs
