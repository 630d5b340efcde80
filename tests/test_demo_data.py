"""The shipped demo dataset: reproducible, well-formed, and with an eval split that tests generalisation.

Pure Python, no torch. The similarity check below is written independently of
quicktune.demo.generate on purpose, so a bug there cannot hide itself here.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from quicktune.data import quality
from quicktune.demo import generate

DEMO_DIR = Path(generate.__file__).resolve().parent
KEYS = ["title", "person", "place", "day", "time"]
WEEKDAYS = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
MONTHS = {"January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"}


def _rows(name: str) -> list[dict]:
    lines = (DEMO_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _grams(text: str) -> set[str]:
    norm = " ".join(re.split(r"[\W_]+", text.lower())).strip()
    return {norm[i : i + 5] for i in range(max(1, len(norm) - 4))}


def _answer(row: dict) -> dict:
    return json.loads(row["messages"][2]["content"])


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _rows("train.jsonl")


@pytest.fixture(scope="module")
def eval_rows() -> list[dict]:
    return _rows("eval.jsonl")


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    generate.main(["--out", str(tmp_path)])
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), (
            f"{name} is stale: run `python -m quicktune.demo.generate` and commit the result"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "train.jsonl"], "temp files left behind"


def test_row_counts(train: list[dict], eval_rows: list[dict]) -> None:
    assert len(train) == generate.TRAIN_ROWS == 400
    assert len(eval_rows) == generate.EVAL_ROWS == 60


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_every_line_is_a_system_user_assistant_conversation(name: str) -> None:
    text = (DEMO_DIR / name).read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    for number, line in enumerate(text.splitlines(), 1):
        row = json.loads(line)
        assert list(row) == ["messages"], f"{name}:{number}"
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"], f"{name}:{number}"
        assert all(set(m) == {"role", "content"} for m in messages), f"{name}:{number}"
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages), f"{name}:{number}"
        assert messages[0]["content"] == generate.SYSTEM, f"{name}:{number}"


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_every_answer_is_one_line_of_json_with_the_documented_keys_in_order(name: str) -> None:
    for number, row in enumerate(_rows(name), 1):
        content = row["messages"][2]["content"]
        where = f"{name}:{number}: {content}"
        assert "\n" not in content, where
        answer = json.loads(content)
        assert list(answer) == KEYS, where
        assert content == json.dumps(answer, ensure_ascii=False), where  # the documented serialisation
        assert isinstance(answer["title"], str) and answer["title"], where
        for key in ("person", "place", "day", "time"):
            assert answer[key] is None or (isinstance(answer[key], str) and answer[key]), where
        if answer["time"] is not None:
            assert re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", answer["time"]), where
        if answer["day"] is not None:
            day = answer["day"]
            month, _, number_text = day.partition(" ")
            assert day in ("today", "tomorrow") or day in WEEKDAYS or (
                month in MONTHS and number_text.isdigit() and 1 <= int(number_text) <= 31
            ), where


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_person_and_place_appear_verbatim_in_the_sentence(name: str) -> None:
    for number, row in enumerate(_rows(name), 1):
        sentence, answer = row["messages"][1]["content"], _answer(row)
        for key in ("person", "place"):
            if answer[key] is not None:
                assert answer[key] in sentence, f"{name}:{number}: {key} {answer[key]!r} not in {sentence!r}"


def test_no_sentence_appears_twice(train: list[dict], eval_rows: list[dict]) -> None:
    sentences = [row["messages"][1]["content"] for row in train + eval_rows]
    assert len(set(sentences)) == len(sentences)


def test_no_eval_person_place_pair_occurs_in_train(train: list[dict], eval_rows: list[dict]) -> None:
    seen = {(_answer(r)["person"], _answer(r)["place"]) for r in train}
    held = [(_answer(r)["person"], _answer(r)["place"]) for r in eval_rows]
    leaked = [who_where for who_where in held if who_where in seen]
    assert not leaked


def test_no_eval_sentence_is_a_near_duplicate_of_a_train_sentence(train: list[dict], eval_rows: list[dict]) -> None:
    train_grams = [_grams(r["messages"][1]["content"]) for r in train]
    worst = 0.0
    for row in eval_rows:
        grams = _grams(row["messages"][1]["content"])
        for other in train_grams:
            worst = max(worst, len(grams & other) / len(grams | other))
    assert worst < 0.7


def test_no_two_sentences_anywhere_are_near_duplicates(train: list[dict], eval_rows: list[dict]) -> None:
    grams = [_grams(r["messages"][1]["content"]) for r in train + eval_rows]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(grams, 2))
    assert worst < 0.7


def test_the_near_duplicate_filter_rejects_what_it_should() -> None:
    a = generate.char_ngrams("Lunch with Priya at Café Rouge on Friday at 1pm")
    b = generate.char_ngrams("lunch with Priya, at Café Rouge on Friday at 1 pm!")
    c = generate.char_ngrams("Please schedule a haircut with Dr. Okafor tomorrow at 09:30.")
    assert quality.jaccard(a, b) >= generate.MAX_SIMILARITY
    assert quality.jaccard(a, c) < 0.2


def test_the_demo_recipe_exports_the_same_system_prompt_it_trains_with() -> None:
    from quicktune.data.check import prepare_for_recipe
    from quicktune.recipe import load_recipe

    # every demo row carries the system prompt, so that one is served (README, "System prompt")
    system = prepare_for_recipe(load_recipe("smollm2-demo"), tokenize=False).report.system_prompt
    assert (system.trained, system.served, system.warning) == (generate.SYSTEM, generate.SYSTEM, None)


def test_built_in_recipes_default_to_the_shipped_demo_files() -> None:
    from quicktune.recipe import builtin_recipes, load_recipe

    names = sorted(builtin_recipes())
    assert "smollm2-demo" in names
    for name in names:
        recipe = load_recipe(name)
        prefix = "preference_" if recipe.method in ("dpo", "orpo") else ""  # the pairs built from the demo rows
        assert [Path(p) for p in recipe.data.train] == [DEMO_DIR / f"{prefix}train.jsonl"], name
        assert [Path(p) for p in recipe.data.eval] == [DEMO_DIR / f"{prefix}eval.jsonl"], name
