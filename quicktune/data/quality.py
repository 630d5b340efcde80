"""Duplicates and train/eval leakage.

Two texts are *near duplicates* when the Jaccard similarity of their character
5-gram sets, after normalisation (lower case, every run of non-alphanumeric
characters one space), is at least ``NEAR_THRESHOLD``. Candidates are found with
MinHash + LSH (32 hashes in 8 bands of 4: a pair at 0.8 shares a band with
probability 0.98) computed with numpy over all texts at once, then checked exactly.
System prompts are left out: one shared system prompt would make every row look alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from quicktune.data.records import Example

NEAR_THRESHOLD = 0.8
SHINGLE = 5
_BANDS, _ROWS = 8, 4
_SHIFT = np.uint64(32)
_NON_ALNUM = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def dialogue_text(example: Example) -> str:
    """What the model learns from, without the system prompt."""
    if example.text is not None:
        return example.text
    return "\n".join(m.content for m in example.messages if m.role != "system")


def prompt_text(example: Example) -> str:
    """What the model is asked, without the system prompt."""
    if example.text is not None:
        return example.text
    return "\n".join(m.content for m in example.messages if m.role == "user")


@dataclass(frozen=True, slots=True)
class Pair:
    first: int
    second: int
    similarity: float


def exact_duplicates(texts: list[str]) -> list[Pair]:
    """(first occurrence, later duplicate) for every repeated normalised text."""
    seen: dict[str, int] = {}
    pairs = []
    for index, text in enumerate(texts):
        key = normalise(text)
        if key in seen:
            pairs.append(Pair(seen[key], index, 1.0))
        else:
            seen[key] = index
    return pairs


def _shingle_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial hashes of every 5-byte window, concatenated; plus each text's start offset."""
    encoded = [normalise(t).encode("utf-8") or b" " for t in texts]
    encoded = [e if len(e) >= SHINGLE else e.ljust(SHINGLE) for e in encoded]
    lengths = np.fromiter((len(e) - SHINGLE + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    text_starts = np.concatenate(([0], np.cumsum([len(e) for e in encoded])[:-1]))
    windows = np.concatenate([np.arange(s, s + n) for s, n in zip(text_starts, lengths)]) if len(texts) else data[:0]
    hashes = np.zeros(len(windows), dtype=np.uint64)
    for k in range(SHINGLE):
        hashes = hashes * np.uint64(257) + data[windows + k]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return hashes, offsets


def near_duplicate_pairs(texts: list[str], threshold: float = NEAR_THRESHOLD) -> list[Pair]:
    """Pairs of texts whose 5-gram Jaccard similarity is at least ``threshold``.

    Within an LSH bucket only neighbours are paired (a chain rather than all pairs,
    ordered by the whole signature), which keeps templated data with huge buckets
    linear in time.
    Candidates whose MinHash estimate is far below the threshold are dropped before
    the exact check.
    """
    if len(texts) < 2:
        return []
    hashes, offsets = _shingle_hashes(texts)
    rng = np.random.default_rng(1234)
    # Multiply-shift hashing: (a * x + b) mod 2**64 with a random odd a, keeping the
    # high 32 bits. numpy's uint64 arithmetic wraps, which is the mod 2**64.
    a = rng.integers(0, np.iinfo(np.uint64).max, size=_BANDS * _ROWS, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=_BANDS * _ROWS, dtype=np.uint64)
    mix = rng.integers(0, np.iinfo(np.uint64).max, size=_ROWS, dtype=np.uint64) | np.uint64(1)
    signatures = np.empty((len(texts), _BANDS * _ROWS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(_BANDS * _ROWS):
            signatures[:, column] = np.minimum.reduceat((hashes * a[column] + b[column]) >> _SHIFT, offsets)
    firsts, seconds = [], []
    for band in range(_BANDS):
        with np.errstate(over="ignore"):
            keys = (signatures[:, band * _ROWS : (band + 1) * _ROWS] * mix).sum(axis=1)
        # Inside a bucket, order by the whole signature so the most alike end up adjacent.
        order = np.lexsort((*signatures.T[::-1], keys))
        same = keys[order][1:] == keys[order][:-1]
        firsts.append(order[:-1][same])
        seconds.append(order[1:][same])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    codes = np.unique(np.minimum(first, second) * len(texts) + np.maximum(first, second))
    first, second = codes // len(texts), codes % len(texts)
    estimate = (signatures[first] == signatures[second]).mean(axis=1)
    plausible = estimate >= threshold - 0.2
    ends = np.append(offsets[1:], len(hashes))
    pairs = []
    for i, j in zip(first[plausible].tolist(), second[plausible].tolist()):
        one = set(hashes[offsets[i] : ends[i]].tolist())
        two = set(hashes[offsets[j] : ends[j]].tolist())
        similarity = len(one & two) / len(one | two)
        if similarity >= threshold:
            pairs.append(Pair(i, j, similarity))
    return pairs


def leakage_pairs(train: list[str], evaluation: list[str], threshold: float = NEAR_THRESHOLD) -> list[Pair]:
    """(train index, eval index) pairs whose prompts are the same or nearly the same."""
    combined = train + evaluation
    found = []
    for pair in near_duplicate_pairs(combined, threshold):
        if pair.first < len(train) <= pair.second:
            found.append(Pair(pair.first, pair.second - len(train), pair.similarity))
    exact = {normalise(t): i for i, t in enumerate(train)}
    known = {(p.first, p.second) for p in found}
    for j, text in enumerate(evaluation):
        i = exact.get(normalise(text))
        if i is not None and (i, j) not in known:
            found.append(Pair(i, j, 1.0))
    return sorted(found, key=lambda p: (p.second, p.first))


def drop_duplicates(count: int, pairs: list[Pair]) -> list[int]:
    """Indices to keep: the first of every group of duplicates."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        a, b = root(pair.first), root(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [i for i in range(count) if root(i) == i]
