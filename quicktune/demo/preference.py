"""The demo's preference pairs: the right answer against a wrong time that the SFT demo model itself
finds likely (README.md beside this file, "Preference pairs").

The mistake the SFT demo run was measured to make is the ``time`` field (8 of its 10 wrong fields
on 120 fresh rows), in several forms: the other half of the day ("7:15am" -> 19:15), a wrong hour
for "midday" (14:00, 18:00), an hour off in the afternoon (15:30 for "half past 2"), a quarter
hour off. So the rejected answer is not one rule: for every row with a time, the SFT run scores
each candidate wrong time (every hour at the same minute, and the same hour at :00, :15, :30,
:45) and the pairs are built from the likeliest ones: the model's own nearest mistakes.

- Held-out pairs (``preference_eval.jsonl``): every ``eval.jsonl`` row with a time against its
  likeliest wrong time. They measure exactly what the SFT run gets wrong.
- Training pairs (``preference_train.jsonl``): rows the SFT run never saw (``FRESH_ROWS`` more
  sentences from the demo generator, seed ``FRESH_SEED``, none near a demo row): its mistakes on
  new sentences, not on rows it learnt by heart. Each row against its likeliest wrong time, or its
  ``UNSURE_TOP`` likeliest where it is unsure (the right answer less than ``UNSURE`` nats above the
  likeliest wrong one), and always against the other half of the day and, for a morning time, the
  time without its leading zero ("9:30"): the two ways earlier DPO runs broke morning times. Then
  the pairs are **balanced**: DPO pushes a token down wherever it is rejected, and the likeliest
  mistakes are lopsided (afternoon rows reject a morning hour "0x" far more often than morning rows
  reject "1x"), so unbalanced pairs taught the model to avoid the digit, not the mistake, and it
  moved morning times to the evening ("9:15 AM" -> 21:15). For every (position, right character,
  wrong character) where chosen and rejected first differ, as many pairs are kept as there are of
  the mirror case (right and wrong swapped), the ones the run is least sure of first; the dropped
  zero has no mirror and is always kept.

Deterministic for a given SFT run: no sampling, the candidates in a fixed order, ties to the
first. ``python -m quicktune.demo.preference --run runs/smollm2-demo/v1`` rewrites both files; the
shipped files were mined from the SFT demo run of 3 December 2026 (``quicktune train
smollm2-demo``, seed 3407). Another SFT run makes other mistakes, so its pairs differ. A row
without a time is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quicktune.backend import load_backend
from quicktune.base_model import base_folder
from quicktune.data.formats import parse_turns
from quicktune.data.preference import PreferencePair, tokenize_pairs
from quicktune.data.quality import jaccard
from quicktune.data.tokenizer import load_chat_tokenizer
from quicktune.demo.generate import MAX_SIMILARITY, char_ngrams
from quicktune.demo.generate import build as generate
from quicktune.recipe import load_recipe
from quicktune.runs import read_manifest, trained_dir, write_atomic

HERE = Path(__file__).parent
TRAIN_FILE, EVAL_FILE = "preference_train.jsonl", "preference_eval.jsonl"
QUARTERS = ("00", "15", "30", "45")
FRESH_SEED, FRESH_ROWS = 11, 480  # the training pairs' rows: demo sentences the SFT run never saw
UNSURE = 2.0  # nats: below this margin a row gives its UNSURE_TOP likeliest wrong times
UNSURE_TOP = 3


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

        manifest = read_manifest(run_dir)
        recipe = load_recipe(str(run_dir / "recipe.yaml"))
        self.tokenizer = load_chat_tokenizer(str(trained_dir(run_dir, manifest)))
        self.model = load_backend().load_trained(
            base_folder(manifest, recipe), str(trained_dir(run_dir, manifest)),
            max_seq_length=recipe.model.max_seq_length, load_in_4bit=recipe.model.load_in_4bit,
            dtype=recipe.model.dtype,
        )
        self.torch = torch

    def answer_logps(self, prompt: list[dict], answers: list[str]) -> list[float]:
        torch = self.torch
        messages = tuple(parse_turns(prompt, "prompt"))
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
            tail_logits = self.model(input_ids=ids, past_key_values=cache, attention_mask=mask).logits
            tail_lp = tail_logits.float().log_softmax(-1)
        scores = []
        for index, tail in enumerate(tails):
            score = shared + float(head_lp[-1, tail[0]])
            if len(tail) > 1:
                score += float(tail_lp[index, : len(tail) - 1].gather(1, torch.tensor(tail[1:])[:, None]).sum())
            scores.append(score)
        return scores


def _dropped_zero(time: str) -> list[str]:
    return [time[1:]] if time.startswith("0") else []  # "9:30" for "09:30"


def training_candidates(time: str) -> list[str]:
    """The candidate times, and the time without its leading zero ("9:30" for "09:30")."""
    return candidate_times(time) + _dropped_zero(time)


def always_rejected(time: str) -> list[str]:
    """Wrong times every training row is paired with, likely or not: the other half of the day, and the
    time without its leading zero (the two ways the DPO runs moved morning times)."""
    return [f"{(int(time[:2]) + 12) % 24:02d}:{time[3:]}", *_dropped_zero(time)]


def score_row(scorer: Scorer, row: dict, candidates=training_candidates) -> dict[str, float] | None:
    """log p of the right answer (key "") and of the answer with each candidate time, in candidate order."""
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    if not answer.get("time"):
        return None
    times = candidates(answer["time"])
    wrong = [json.dumps({**answer, "time": t}, ensure_ascii=False) for t in times]
    scores = scorer.answer_logps(messages[:-1], [messages[-1]["content"], *wrong])
    return {"": scores[0], **dict(zip(times, scores[1:]))}


def likeliest_wrong_time(scorer: Scorer, row: dict) -> tuple[str, float] | None:
    """The wrong time the run finds most likely for this row, and log p(right) - log p(that)."""
    scored = score_row(scorer, row, candidate_times)
    if scored is None:
        return None
    best = max((t for t in scored if t), key=scored.__getitem__)  # ties: the first candidate
    return best, scored[""] - scored[best]


def pair(row: dict, wrong_time: str) -> dict:
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    return {
        "prompt": messages[:-1],
        "chosen": messages[-1]["content"],
        "rejected": json.dumps({**answer, "time": wrong_time}, ensure_ascii=False),
    }


def build(scorer: Scorer, source: Path, progress=lambda done, total: None) -> list[dict]:
    """Held-out pairs: each row with a time against its likeliest wrong time."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = []
    for done, row in enumerate(rows, 1):
        found = likeliest_wrong_time(scorer, row)
        if found is not None:
            pairs.append(pair(row, found[0]))
        progress(done, len(rows))
    return pairs


def fresh_rows(source_dir: Path = HERE) -> list[dict]:
    """Demo sentences the SFT run never saw: the generator's first FRESH_ROWS rows for FRESH_SEED, less
    any near a shipped demo row (none, for the shipped files)."""
    demo = [json.loads(line) for name in ("train.jsonl", "eval.jsonl")
            for line in (Path(source_dir) / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    seen = [char_ngrams(row["messages"][-2]["content"]) for row in demo]
    rows, _ = generate(FRESH_SEED, FRESH_ROWS, 0)
    return [row for row in rows
            if all(jaccard(char_ngrams(row["messages"][-2]["content"]), other) < MAX_SIMILARITY for other in seen)]


def _first_difference(right: str, wrong: str) -> tuple:
    if len(right) != len(wrong):
        return ("length",)
    return next((i, a, b) for i, (a, b) in enumerate(zip(right, wrong)) if a != b)


def training_pairs(rows: list[dict], scores: list[dict[str, float] | None]) -> list[dict]:
    """Pick and balance the training pairs (module docstring) from each row's scores."""
    groups: dict[tuple, list[tuple[int, str, float]]] = {}  # first difference -> (row index, wrong time, margin)
    for index, (row, scored) in enumerate(zip(rows, scores)):
        if scored is None:
            continue
        right = json.loads(row["messages"][-1]["content"])["time"]
        ranked = sorted((t for t in scored if t), key=lambda t: -scored[t])  # stable: ties keep candidate order
        wrong_times = ranked[: UNSURE_TOP if scored[""] - scored[ranked[0]] < UNSURE else 1]
        wrong_times += [t for t in always_rejected(right) if t not in wrong_times]
        for wrong in wrong_times:
            groups.setdefault(_first_difference(right, wrong), []).append((index, wrong, scored[""] - scored[wrong]))
    kept = []
    for key, group in groups.items():
        if key[0] == "length":  # the dropped leading zero: no mirror case, always kept
            kept += group
            continue
        mirror = groups.get((key[0], key[2], key[1]), [])
        kept += sorted(group, key=lambda p: p[2])[: len(mirror)]
    kept.sort(key=lambda p: (p[0], p[2]))  # row order, then the likeliest wrong time first
    return [pair(rows[index], wrong) for index, wrong, _ in kept]


def write(
    run_dir: Path, out_dir: Path = HERE, source_dir: Path = HERE, progress=lambda name, done, total: None
) -> list[Path]:
    """Mines both pair files from an SFT run's mistakes into ``out_dir``; returns their paths."""
    scorer = Scorer(Path(run_dir))
    held = build(scorer, Path(source_dir) / "eval.jsonl", lambda done, total: progress("eval.jsonl", done, total))
    rows = fresh_rows(source_dir)
    scores = []
    for done, row in enumerate(rows, 1):
        scores.append(score_row(scorer, row))
        progress("fresh rows", done, len(rows))
    written = []
    for name, pairs in ((TRAIN_FILE, training_pairs(rows, scores)), (EVAL_FILE, held)):
        path = Path(out_dir) / name
        write_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
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
