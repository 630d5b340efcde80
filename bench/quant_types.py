"""What llama.cpp writes for each quantization of a small model, and how close it stays to F16.

For a SmolLM2-135M export (576-wide rows, not a multiple of the 256-wide k-quant blocks), lists the
tensor types llama.cpp picked per tensor kind in each quantization, and measures on the demo's
held-out conversations how often each file's most likely next token at the answer positions is the
F16 file's (and the mean KL divergence from F16 there).

    .venv/bin/python bench/quant_types.py runs/smollm2-demo/v1/export/smollm2-demo-v1-f16.gguf [--rows 60]

Writes bench/results/quant_types.json.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

QUANTS = ["q4_k_m", "q5_k_m", "q8_0"]
DEMO_EVAL = Path(__file__).resolve().parent.parent / "quicktune" / "demo" / "eval.jsonl"


def tensor_types(path: Path) -> dict[str, dict[str, int]]:
    """{tensor kind (blk.N. dropped): {type: count}}"""
    from gguf import GGUFReader

    kinds: dict[str, Counter] = defaultdict(Counter)
    for tensor in GGUFReader(str(path)).tensors:
        kinds[re.sub(r"^blk\.\d+\.", "", tensor.name)][tensor.tensor_type.name] += 1
    return {kind: dict(counts) for kind, counts in sorted(kinds.items())}


def conversations(rows: int) -> list[list[dict[str, str]]]:
    lines = DEMO_EVAL.read_text(encoding="utf-8").splitlines()[:rows]
    return [json.loads(line)["messages"] for line in lines]


def answer_logits(gguf: Path, prompts: list[tuple[list[int], int]]) -> list[np.ndarray]:
    """Per conversation: the logits that predict each answer token (float64)."""
    from quicktune import llamacpp

    llm = llamacpp.load(gguf, n_ctx=max(len(ids) for ids, _ in prompts) + 8, logits_all=True)
    out = []
    for ids, start in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(np.asarray(llm.scores[start - 1 : len(ids) - 1], dtype=np.float64))
    del llm
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("f16", type=Path)
    parser.add_argument("--rows", type=int, default=60)
    args = parser.parse_args()

    from quicktune import llamacpp
    from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens
    from quicktune.models import read_gguf_fields

    fields = read_gguf_fields(args.f16, "tokenizer.")
    tokenizer = ChatTokenizer(None, fields["tokenizer.chat_template"], gguf_special_tokens(fields), str(args.f16))
    vocab = llamacpp.load(args.f16, n_ctx=64)
    prompts = []
    for messages in conversations(args.rows):
        head = tokenizer.render(messages[:-1], add_generation_prompt=True)
        ids = vocab.tokenize(tokenizer.render(messages).encode("utf-8"), add_bos=False, special=True)
        start = len(vocab.tokenize(head.encode("utf-8"), add_bos=False, special=True))
        prompts.append((ids, start))
    del vocab
    print(f"{len(prompts)} conversations; F16 reference...", flush=True)
    reference = answer_logits(args.f16, prompts)
    positions = sum(len(r) for r in reference)
    result = {"f16": str(args.f16), "rows": len(prompts), "answer_positions": positions, "quants": {}}
    with tempfile.TemporaryDirectory() as folder:
        for quant in QUANTS:
            path = Path(folder) / f"{quant}.gguf"
            start = time.perf_counter()
            llamacpp.quantize(args.f16, path, quant)
            seconds = time.perf_counter() - start
            logits = answer_logits(path, prompts)
            same = sum(int((a.argmax(1) == b.argmax(1)).sum()) for a, b in zip(reference, logits))
            kl = sum(
                float((np.exp(p) * (p - log_softmax(q))).sum())
                for p, q in ((log_softmax(a), b) for a, b in zip(reference, logits))
            )
            result["quants"][quant] = {
                "bytes": path.stat().st_size,
                "seconds": round(seconds, 1),
                "same_top_token_vs_f16": round(same / positions, 4),
                "mean_kl_vs_f16": round(kl / positions, 5),
                "tensor_types": tensor_types(path),
            }
            shown = {k: v for k, v in result["quants"][quant].items() if k != "tensor_types"}
            print(quant, json.dumps(shown), flush=True)
            print("  ", result["quants"][quant]["tensor_types"], flush=True)
    out = Path(__file__).resolve().parent / "results" / "quant_types.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
