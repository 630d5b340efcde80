"""The demo's preference pairs: each demo row's right answer against the wrong time that the SFT
demo model itself finds most likely (README.md beside this file, "Preference pairs").

The mistake the SFT demo run was measured to make is the ``time`` field (8 of its 10 wrong fields
on 120 fresh rows), in several forms: the other half of the day ("7:15am" -> 19:15), a wrong hour
for "midday" (14:00, 18:00), an hour off in the afternoon (15:30 for "half past 2"), a quarter
hour off. So the rejected answer is not one rule: for every row with a time, the SFT run scores
each candidate wrong time (every hour at the same minute, and the same hour at :00, :15, :30,
:45) and the likeliest one becomes the rejected answer — the pairs DPO learns from are the
model's own nearest mistakes ("hard negatives"), and the held-out pairs measure exactly them.

Deterministic for a given SFT run: no sampling, the candidates in a fixed order, ties to the
first. ``python -m quicktune.demo.preference --run runs/smollm2-demo/v1`` rewrites
``preference_train.jsonl`` and ``preference_eval.jsonl``; the shipped files were mined from the
SFT demo run of 3 December 2026 (``quicktune train smollm2-demo``, seed 3407). Another SFT run
makes other mistakes, so its pairs differ. A row without a time is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
FILES = {"train.jsonl": "preference_train.jsonl", "eval.jsonl": "preference_eval.jsonl"}
QUARTERS = ("00", "15", "30", "45")


def candidate_times(time: str) -> list[str]:
    """The wrong times scored for a right one, earliest first: every hour at the same minute, and the
    same hour at the other quarters."""
    hour, minute = int(time[:2]), time[3:]
    found = {f"{h:02d}:{minute}" for h in range(24)} | {f"{hour:02d}:{m}" for m in QUARTERS}
    return sorted(found - {time})


class Scorer:
    """log p(answer | prompt) under one trained run, for many answers to the same prompt: the prompt and
    the answers' shared beginning are run once, then every answer's own tail in one batch."""

    def __init__(self, run_dir: Path):
        import torch

        from quicktune.data.tokenizer import load_chat_tokenizer
        from quicktune.recipe import load_recipe
        from quicktune.train.backend import load_backend
        from quicktune.train.base_model import base_folder
        from quicktune.train.runs import read_manifest, trained_dir

        manifest = read_manifest(run_dir)
        recipe = load_recipe(str(run_dir / "recipe.yaml"))
        self.tokenizer = load_chat_tokenizer(str(trained_dir(run_dir, manifest)))
        self.model = load_backend().load_trained(
            base_folder(manifest, recipe), str(trained_dir(run_dir, manifest)),
            max_seq_length=recipe.model.max_seq_length, load_in_4bit=recipe.model.load_in_4bit, dtype=recipe.model.dtype,
        )
        self.torch = torch

    def answer_logps(self, prompt: list[dict], answers: list[str]) -> list[float]:
        from quicktune.data.preference import PreferencePair, tokenize_pairs
        from quicktune.data.records import Message

        torch = self.torch
        messages = tuple(Message(m["role"], m["content"]) for m in prompt)
        pairs = [PreferencePair("demo", messages, answers[0], other) for other in answers[1:]]
        tokenized = tokenize_pairs(self.tokenizer, pairs)
        prompt_ids = tokenized[0].prompt_ids
        if any(t.prompt_ids != prompt_ids for t in tokenized):
            raise ValueError("the answers tokenize the prompt differently")
        sides = [tokenized[0].chosen_ids] + [t.rejected_ids for t in tokenized]
        common = 0
        while all(len(s) > common for s in sides) and len({s[common] for s in sides}) == 1:
            common += 1
        head = prompt_ids + sides[0][:common]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([head]), use_cache=True)
            head_lp = out.logits[0].float().log_softmax(-1)
            shared = float(head_lp[len(prompt_ids) - 1 : len(head) - 1].gather(
                1, torch.tensor(head[len(prompt_ids):], dtype=torch.long)[:, None]).sum())
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(sides))
            tails = [s[common:] for s in sides]
            width = max(map(len, tails))
            ids = torch.tensor([t + [0] * (width - len(t)) for t in tails])
            mask = torch.ones(len(tails), len(head) + width, dtype=torch.long)
            tail_lp = self.model(input_ids=ids, past_key_values=cache, attention_mask=mask).logits.float().log_softmax(-1)
        scores = []
        for index, tail in enumerate(tails):
            score = shared + float(head_lp[-1, tail[0]])
            if len(tail) > 1:
                score += float(tail_lp[index, : len(tail) - 1].gather(1, torch.tensor(tail[1:])[:, None]).sum())
            scores.append(score)
        return scores


def likeliest_wrong_time(scorer: Scorer, row: dict) -> tuple[str, float] | None:
    """The wrong time the run finds most likely for this row, and log p(right) - log p(that)."""
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    if not answer.get("time"):
        return None
    candidates = candidate_times(answer["time"])
    wrong = [json.dumps({**answer, "time": t}, ensure_ascii=False) for t in candidates]
    scores = scorer.answer_logps(messages[:-1], [messages[-1]["content"], *wrong])
    best = max(range(len(candidates)), key=lambda i: scores[i + 1])  # ties: the first
    return candidates[best], scores[0] - scores[best + 1]


def pair(row: dict, wrong_time: str) -> dict:
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    return {
        "prompt": messages[:-1],
        "chosen": messages[-1]["content"],
        "rejected": json.dumps({**answer, "time": wrong_time}, ensure_ascii=False),
    }


def build(scorer: Scorer, source: Path, progress=lambda done, total: None) -> list[dict]:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = []
    for done, row in enumerate(rows, 1):
        found = likeliest_wrong_time(scorer, row)
        if found is not None:
            pairs.append(pair(row, found[0]))
        progress(done, len(rows))
    return pairs


def write(run_dir: Path, out_dir: Path = HERE, source_dir: Path = HERE, progress=lambda name, done, total: None) -> list[Path]:
    from quicktune.train.runs import write_atomic

    scorer = Scorer(Path(run_dir))
    written = []
    for source, target in FILES.items():
        path = Path(out_dir) / target
        rows = build(scorer, Path(source_dir) / source, lambda done, total: progress(source, done, total))
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the SFT demo run whose mistakes to mine")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the two files into")
    args = parser.parse_args(argv)

    def progress(name, done, total):
        if done % 50 == 0 or done == total:
            print(f"{name}: {done}/{total} rows", flush=True)

    for path in write(args.run, args.out, progress=progress):
        print(path)


if __name__ == "__main__":
    main()
