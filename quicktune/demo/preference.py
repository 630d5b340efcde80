"""The demo's preference pairs: each demo row's right answer against the same answer with one
mistake the SFT demo model was measured to make (README.md beside this file, "Preference pairs").

Deterministic: the pairs are a pure function of ``train.jsonl`` and ``eval.jsonl`` (no random
numbers, no clock), so ``python -m quicktune.demo.preference`` rewrites ``preference_train.jsonl``
and ``preference_eval.jsonl`` byte for byte. A row the mistake cannot apply to is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quicktune.train.runs import write_atomic

HERE = Path(__file__).parent
FILES = {"train.jsonl": "preference_train.jsonl", "eval.jsonl": "preference_eval.jsonl"}


def other_half_of_day(answer: dict) -> dict | None:
    """The same clock time in the other half of the day: "07:00" -> "19:00", "14:30" -> "02:30".

    The mistake the SFT demo model was measured to make (README.md beside this file): "breakfast
    ... at 7 in the morning" answered "19:00"."""
    time = answer.get("time")
    if not time:
        return None
    hour, minute = int(time[:2]), time[3:]
    return {**answer, "time": f"{(hour + 12) % 24:02d}:{minute}"}


MISTAKE = other_half_of_day


def pair(row: dict) -> dict | None:
    messages = row["messages"]
    answer = json.loads(messages[-1]["content"])
    wrong = MISTAKE(answer)
    if wrong is None:
        return None
    return {
        "prompt": messages[:-1],
        "chosen": messages[-1]["content"],
        "rejected": json.dumps(wrong, ensure_ascii=False),
    }


def build(source: Path) -> list[dict]:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [p for p in map(pair, rows) if p is not None]


def write(out_dir: Path = HERE, source_dir: Path = HERE) -> list[Path]:
    written = []
    for source, target in FILES.items():
        path = Path(out_dir) / target
        rows = build(Path(source_dir) / source)
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the two files into")
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)


if __name__ == "__main__":
    main()
