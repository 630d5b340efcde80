"""Duplicates and train/eval leakage.

Two texts are *near duplicates* when the Jaccard similarity of their character
5-gram sets, after normalisation (lower case, every run of non-alphanumeric
characters one space), is at least ``NEAR_THRESHOLD``. Candidates are found with
MinHash + LSH (32 hashes in 8 bands of 4: a pair at 0.8 shares a band with
probability 0.98) computed with numpy over all texts at once, then checked exactly.
System prompts are left out: one shared system prompt would make every row look alike.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from quicktune.data.records import Example

NEAR_THRESHOLD = 0.8
SHINGLE = 5
_BANDS, _ROWS = 8, 4
_SHIFT = np.uint64(32)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # an odd multiplier that mixes all bits into the top ones
_TIEBREAK = 8  # signature columns that order texts within an LSH bucket
_NEIGHBOURS = 16  # train texts on each side of an eval text it is compared with, per band
_SAMPLE_FROM = 256  # windows; shorter texts keep every shingle (64+ kept shingles estimate J within ~0.05)
_BLOCK_BYTES = 1 << 19  # of normalised text hashed at a time (see _signatures)
_NON_ALNUM = re.compile(r"[\W_]+")


# ASCII letters and digits to their lower case, every other byte to a space
_ASCII_KEYS = bytes(ord(chr(c).lower()) if chr(c).isalnum() else 32 for c in range(128)) + b" " * 128


def normalise(text: str) -> str:
    """Lower case, every run of characters other than letters and digits one space, no edge spaces."""
    if text.isascii():  # the same result, ~4x faster: a byte table, then split on the spaces
        return " ".join(text.encode("ascii").translate(_ASCII_KEYS).decode("ascii").split())
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


def exact_duplicates(texts: list[str], *, normalised: bool = False) -> list[Pair]:
    """(first occurrence, later duplicate) for every repeated normalised text."""
    seen: dict[str, int] = {}
    pairs = []
    for index, text in enumerate(texts):
        key = text if normalised else normalise(text)
        if key in seen:
            pairs.append(Pair(seen[key], index, 1.0))
        else:
            seen[key] = index
    return pairs


def _shingle_hashes(normalised: list[str], sample: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each text's 5-byte windows, concatenated, and where each text's run starts.

    Hashes are exact (base 257 over 5 bytes). Texts with at least ``_SAMPLE_FROM``
    windows keep only the quarter of their shingles whose mixed hash ends in two zero
    bits: the same shingle is kept in every text, so Jaccard similarity of the kept
    sets estimates that of the full sets, at a quarter of the hashing cost.
    """
    encoded = [t.encode("utf-8").ljust(SHINGLE) for t in normalised]
    byte_lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    hashes = _window_hashes(data, np.uint64(257))
    count = len(hashes)
    windows_per_text = byte_lengths - SHINGLE + 1
    text_starts = np.concatenate(([0], np.cumsum(byte_lengths)[:-1]))
    owner = np.repeat(np.arange(len(encoded)), byte_lengths)[:count]
    position = np.arange(count) - text_starts[owner]
    with np.errstate(over="ignore"):
        sampled = ((hashes * _GOLDEN) >> np.uint64(62)) == 0
    short = windows_per_text < _SAMPLE_FROM
    if sample is not None:  # texts sampled although short (see near_duplicate_pairs)
        short &= ~sample
    keep = (position < windows_per_text[owner]) & (sampled | short[owner] | (position == 0))
    hashes, owner = hashes[keep], owner[keep]
    offsets = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=len(encoded)))[:-1])).astype(np.int64)
    return hashes, offsets


def _window_hashes(data: np.ndarray, base: np.uint64) -> np.ndarray:
    """The polynomial hash, in ``base`` and wrapping at 2**64, of every SHINGLE-long window of ``data``
    (uint64 symbols: bytes or code points), windows that run across two texts included."""
    count = len(data) - SHINGLE + 1
    hashes = data[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, SHINGLE):
            hashes = hashes * base + data[k : k + count]
    return hashes


def _signatures(normalised: list[str], sample: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures, one row per text: the least ``(a * h + b) >> 32`` over its shingle hashes h.

    Hashed a block of texts at a time (``_BLOCK_BYTES``): every step makes a temporary array
    as long as the block's shingles, and over all texts at once those ran to hundreds of MB each,
    paid for in fresh memory pages rather than arithmetic.
    """
    signatures = np.empty((len(normalised), len(a)), dtype=np.uint64)
    start = 0
    while start < len(normalised):
        end, size = start, 0
        while end < len(normalised) and (end == start or size < _BLOCK_BYTES):
            size += len(normalised[end]) + SHINGLE
            end += 1
        hashes, offsets = _shingle_hashes(normalised[start:end], sample[start:end])
        mixed = np.empty_like(hashes)
        with np.errstate(over="ignore"):
            for column in range(len(a)):
                np.multiply(hashes, a[column], out=mixed)
                np.add(mixed, b[column], out=mixed)
                np.right_shift(mixed, _SHIFT, out=mixed)
                signatures[start:end, column] = np.minimum.reduceat(mixed, offsets)
        start = end
    return signatures


def near_duplicate_pairs(
    texts: list[str],
    threshold: float = NEAR_THRESHOLD,
    *,
    normalised: bool = False,
    split: int | None = None,
) -> list[Pair]:
    """Pairs of texts whose 5-gram Jaccard similarity is at least ``threshold``.

    With ``split``, only pairs (i < split <= j) are wanted: train/eval leakage.
    Within an LSH bucket only neighbours are paired (a chain rather than all pairs),
    which keeps templated data with huge buckets linear in time; each band orders its
    buckets by a different rotation of the signature, so two near-identical texts are
    neighbours in some band even when rows that share a column fall between them (only the
    ``_TIEBREAK`` columns after the band's own are sorted on: ties beyond them are rare).
    Candidates whose MinHash estimate is far below the threshold are dropped before
    the exact check.
    """
    if len(texts) < 2:
        return []
    cleaned = texts if normalised else [normalise(t) for t in texts]
    entries = _entries(cleaned, threshold)
    a, b, mix = _hash_coefficients()
    signatures = _signatures(cleaned + [cleaned[i] for i in entries.again], entries.sample, a, b)
    is_eval = (entries.origin >= split) if split is not None else None
    first, second = _candidates(signatures, mix, is_eval)
    if first is None:
        return []
    return _checked_pairs(cleaned, entries.origin, signatures, first, second, threshold)


@dataclass(frozen=True)
class _Entries:
    """The texts hashed: every text once, then ``again`` (indices) a second time, sampled."""

    again: np.ndarray  # texts entered a second time
    origin: np.ndarray  # entry -> the text it is
    sample: np.ndarray  # entry -> hashed from a sample of its shingles although short


def _entries(cleaned: list[str], threshold: float) -> _Entries:
    """Which texts are entered twice: once as they are, once sampled (reads the normalised texts).

    A text with _SAMPLE_FROM windows or more is hashed from a sample of its shingles, a shorter one from
    all of them, and two such signatures hardly agree: a pair straddling the boundary was never a
    candidate (the 6 leaks bench/data_check.py missed: a prompt just under it, the same prompt with
    "Thanks in advance." just over it). A text at J >= threshold has at least threshold x the other's
    windows, so every text in [threshold x _SAMPLE_FROM, _SAMPLE_FROM) is entered a second time, sampled.
    """
    windows = np.fromiter((len(t.encode("utf-8")) - SHINGLE + 1 for t in cleaned), dtype=np.int64, count=len(cleaned))
    zone = np.flatnonzero((windows >= threshold * _SAMPLE_FROM) & (windows < _SAMPLE_FROM))
    origin = np.concatenate((np.arange(len(cleaned)), zone))
    sample = np.zeros(len(origin), dtype=bool)
    sample[len(cleaned) :] = True
    return _Entries(zone, origin, sample)


def _hash_coefficients() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed random coefficients (seed 1234): ``a`` and ``b`` for each signature column, ``mix``
    to fold a band's rows into one bucket key."""
    rng = np.random.default_rng(1234)
    width = _BANDS * _ROWS
    # Multiply-shift hashing: (a * x + b) mod 2**64 with a random odd a, keeping the
    # high 32 bits. numpy's uint64 arithmetic wraps, which is the mod 2**64.
    a = rng.integers(0, np.iinfo(np.uint64).max, size=width, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=width, dtype=np.uint64)
    mix = rng.integers(0, np.iinfo(np.uint64).max, size=_ROWS, dtype=np.uint64) | np.uint64(1)
    return a, b, mix


def _candidates(
    signatures: np.ndarray, mix: np.ndarray, is_eval: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Candidate pairs of entries (two index arrays), gathered band by band: neighbours in a bucket,
    or with ``is_eval`` each eval entry and the train entries near it; (None, None) when none."""
    firsts, seconds = [], []
    width = _BANDS * _ROWS
    for band in range(_BANDS):
        with np.errstate(over="ignore"):
            keys = (signatures[:, band * _ROWS : (band + 1) * _ROWS] * mix).sum(axis=1)
        # within a bucket: by the next _TIEBREAK columns after the band's own (lexsort's last key comes first)
        after = (np.arange(_TIEBREAK) + (band + 1) * _ROWS) % width
        order = np.lexsort((*signatures[:, after[::-1]].T, keys))
        if is_eval is None:
            same = keys[order][1:] == keys[order][:-1]
            firsts.append(order[:-1][same])
            seconds.append(order[1:][same])
        else:
            band_firsts, band_seconds = _leak_candidates(keys, order, is_eval)
            firsts += band_firsts
            seconds += band_seconds
    if not firsts:
        return None, None
    return np.concatenate(firsts), np.concatenate(seconds)


def _leak_candidates(
    keys: np.ndarray, order: np.ndarray, is_eval: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One band's (train, eval) candidates, as lists of index arrays: each eval entry meets the
    _NEIGHBOURS train entries on either side of it in its bucket's signature ``order``."""
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    evals = np.flatnonzero(is_eval)
    firsts, seconds = [], []
    for step in (*range(1, _NEIGHBOURS + 1), *range(-_NEIGHBOURS, 0)):
        at = rank[evals] + step
        inside = (at >= 0) & (at < len(order))
        other = order[at[inside]]
        mine = evals[inside]
        good = (keys[other] == keys[mine]) & ~is_eval[other]
        firsts.append(other[good])
        seconds.append(mine[good])
    return firsts, seconds


def _checked_pairs(
    cleaned: list[str], origin: np.ndarray, signatures: np.ndarray, first: np.ndarray, second: np.ndarray,
    threshold: float,
) -> list[Pair]:
    """The candidate entries' texts that really are near duplicates: those whose MinHash estimate is
    plausible, as distinct text pairs (lower index first), checked by exact Jaccard."""
    estimate = (signatures[first] == signatures[second]).mean(axis=1)
    # 32 hashes estimate J within about 0.07 (one standard deviation at J = 0.8).
    plausible = estimate >= threshold - 0.15
    first, second = origin[first[plausible]], origin[second[plausible]]
    low, high = np.minimum(first, second), np.maximum(first, second)
    count = len(cleaned)
    codes = np.unique(low[low != high] * count + high[low != high])
    first, second = codes // count, codes % count
    similarity = exact_jaccard(cleaned, first, second)
    found = np.flatnonzero(similarity >= threshold)
    return [Pair(i, j, s) for i, j, s in zip(first[found].tolist(), second[found].tolist(), similarity[found].tolist())]


_PAD = 0x110000  # past the last code point: pads a text shorter than one shingle
_POLY = np.uint64(0x100000001B3)  # FNV's 64-bit prime, odd: a polynomial hash of 5 code points


def _shingle_sets(normalised: list[str]) -> list[np.ndarray]:
    """Each text's character 5-grams (``shingles``) as sorted, unique 64-bit hashes.

    A polynomial hash of the 5 code points, wrapping at 2**64: two different 5-grams share a
    hash with a chance of about 1 in 2**64, so Jaccard over these sets is, in effect, Jaccard
    over ``shingles`` (tests/data/test_quality.py compares the two), at a fraction of the cost
    of building Python sets of strings.
    """
    codes = [np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) for t in normalised]
    pad = np.full(SHINGLE, _PAD, np.uint32)
    padded = [c if len(c) >= SHINGLE else np.concatenate((c, pad[len(c) :])) for c in codes]
    lengths = np.fromiter((len(c) for c in padded), dtype=np.int64, count=len(padded))
    data = np.concatenate(padded).astype(np.uint64) if padded else np.zeros(0, np.uint64)
    hashes = _window_hashes(data, _POLY)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ends = starts + lengths - SHINGLE + 1
    return [_sorted_unique(hashes[start:end]) for start, end in zip(starts.tolist(), ends.tolist())]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def exact_jaccard(normalised: list[str], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the 5-gram sets of texts ``first[k]`` and ``second[k]``, for every k."""
    if not len(first):
        return np.zeros(0)
    wanted = np.unique(np.concatenate((first, second)))
    sets = dict(zip(wanted.tolist(), _shingle_sets([normalised[i] for i in wanted.tolist()])))
    similarity = np.empty(len(first))
    for k, (i, j) in enumerate(zip(first.tolist(), second.tolist())):
        one, two = sets[i], sets[j]
        if len(one) > len(two):
            one, two = two, one
        at = np.searchsorted(two, one)
        at[at == len(two)] = 0
        common = int(np.count_nonzero(two[at] == one))
        similarity[k] = common / (len(one) + len(two) - common)
    return similarity


def shingles(normalised: str) -> set[str]:
    """The character 5-grams of a normalised text (a shorter text is its own one shingle)."""
    return {normalised[i : i + SHINGLE] for i in range(max(1, len(normalised) - SHINGLE + 1))}


def jaccard(one: set[str], two: set[str]) -> float:
    return len(one & two) / len(one | two) if one or two else 1.0


def leakage_pairs(train: list[str], evaluation: list[str], threshold: float = NEAR_THRESHOLD) -> list[Pair]:
    """(train index, eval index) pairs whose prompts are the same or nearly the same."""
    train_keys = [normalise(t) for t in train]
    eval_keys = [normalise(t) for t in evaluation]
    found = [
        Pair(p.first, p.second - len(train), p.similarity)
        for p in near_duplicate_pairs(train_keys + eval_keys, threshold, normalised=True, split=len(train))
    ]
    exact = {key: i for i, key in enumerate(train_keys)}
    known = {(p.first, p.second) for p in found}
    for j, key in enumerate(eval_keys):
        i = exact.get(key)
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


@dataclass(frozen=True)
class Duplicates:
    exact: list[Pair]  # indices into the rows given
    near: list[Pair]  # among the rows left after the exact ones, mapped back to the rows given
    unique: list[int]  # the rows left after the exact duplicates


def find_duplicates(keys: list[str]) -> Duplicates:
    """Exact and near-duplicate rows among normalised keys (one per row)."""
    exact = exact_duplicates(keys, normalised=True)
    unique = drop_duplicates(len(keys), exact)
    near = [
        Pair(unique[p.first], unique[p.second], p.similarity)
        for p in near_duplicate_pairs([keys[i] for i in unique], normalised=True)
    ]
    return Duplicates(exact, near, unique)


def hold_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): ``fraction`` of the rows, chosen reproducibly by ``seed``, held out for eval."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(rows) * fraction))])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
