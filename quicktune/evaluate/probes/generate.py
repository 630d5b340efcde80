"""Generate the ``general`` probe set: short questions with one exact answer each.

Written for quicktune (no outside dataset, nothing downloaded): five kinds of plain
ability a fine-tune can lose while it learns something else, eight probes each:

- arithmetic: one operation on small whole numbers;
- formatting: follow an instruction about the shape of the answer (capitals, hyphens, JSON);
- copying: repeat a short text exactly;
- counting: items in a list, words in a sentence;
- reasoning: one step of ordering, subtraction in a story, or the day after a weekday.

Every prompt says how to answer ("Reply with the number only."), so the answer can be
checked exactly (``match``: ``exact`` after trimming whitespace and one final full stop,
``casefold`` the same ignoring case, ``json`` equal once parsed). Deterministic: one seeded
``random.Random``, so ``python -m quicktune.evaluate.probes.generate`` rewrites the shipped
``general.jsonl`` byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from quicktune.runs import write_atomic

SEED = 1313
PER_CATEGORY = 8
HERE = Path(__file__).resolve().parent

WORDS = ["river", "candle", "garden", "pencil", "orange", "window", "silver", "tiger", "planet", "basket",
         "ladder", "violin", "marble", "rocket", "forest", "button", "harbor", "meadow", "copper", "lantern"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "pears", "stamps", "marbles", "books", "shells", "coins", "tickets"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
KEYS = ["color", "size", "city", "count", "score", "level", "price", "year"]


def _arithmetic(rng: random.Random, index: int) -> tuple[str, str, str]:
    a, b = rng.randint(11, 49), rng.randint(2, 29)
    if index % 3 == 0:
        return f"What is {a} + {b}? Reply with the number only.", str(a + b), "exact"
    if index % 3 == 1:
        return f"What is {a} minus {b}? Reply with the number only.", str(a - b), "exact"
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return f"What is {a} times {b}? Reply with the number only.", str(a * b), "exact"


def _formatting(rng: random.Random, index: int) -> tuple[str, str, str]:
    if index % 3 == 0:
        word = rng.choice(WORDS)
        return f'Write the word "{word}" in capital letters. Reply with that word only.', word.upper(), "exact"
    if index % 3 == 1:
        words = rng.sample(WORDS, 3)
        return (
            (f"Join the words {words[0]}, {words[1]} and {words[2]} with hyphens, in that order, with no spaces. "
             "Reply with the result only."),
            "-".join(words),
            "exact",
        )
    key, value = rng.choice(KEYS), rng.randint(1, 99)
    return (
        f'Reply with a JSON object whose only key is "{key}" and whose value is the number {value}. No other text.',
        json.dumps({key: value}),
        "json",
    )


def _copying(rng: random.Random, index: int) -> tuple[str, str, str]:
    text = f"{rng.choice(WORDS)} {rng.randint(10, 999)} {rng.choice(WORDS).upper()} {rng.choice(NAMES)}"
    return f"Repeat this text exactly and say nothing else: {text}", text, "exact"


def _counting(rng: random.Random, index: int) -> tuple[str, str, str]:
    if index % 2 == 0:
        words = rng.sample(WORDS, rng.randint(2, 6))
        prompt = f"How many items are in this list: {', '.join(words)}? Reply with the number only."
        return prompt, str(len(words)), "exact"
    words = rng.sample(WORDS + NAMES, rng.randint(3, 7))
    return f'How many words are in "{" ".join(words)}"? Reply with the number only.', str(len(words)), "exact"


def _reasoning(rng: random.Random, index: int) -> tuple[str, str, str]:
    if index % 3 == 0:
        a, b, c = rng.sample(NAMES, 3)
        return (
            f"{a} is taller than {b}. {b} is taller than {c}. Who is the shortest? Reply with the name only.",
            c,
            "casefold",
        )
    if index % 3 == 1:
        name, other, item = *rng.sample(NAMES, 2), rng.choice(ITEMS)
        have, give = rng.randint(6, 15), rng.randint(1, 5)
        return (
            (f"{name} has {have} {item} and gives {give} of them to {other}. How many {item} does {name} have now? "
             "Reply with the number only."),
            str(have - give),
            "exact",
        )
    day = rng.randrange(7)
    return f"If today is {DAYS[day]}, what day is tomorrow? Reply with the day only.", DAYS[(day + 1) % 7], "casefold"


CATEGORIES = {
    "arithmetic": _arithmetic,
    "formatting": _formatting,
    "copying": _copying,
    "counting": _counting,
    "reasoning": _reasoning,
}


def probes(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for category, make in CATEGORIES.items():
        for index in range(PER_CATEGORY):
            prompt, answer, match = make(rng, index)
            rows.append({"id": f"{category}-{index + 1}", "category": category, "prompt": prompt, "answer": answer,
                         "match": match})
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "general.jsonl")
    args = parser.parse_args(argv)
    write_atomic(args.out, render(probes()))
    print(args.out)


if __name__ == "__main__":
    main()
