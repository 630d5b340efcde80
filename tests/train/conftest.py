from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SMOLLM2, chat, write_jsonl

TOPICS = ["tea", "rain", "chess", "maps", "bread", "jazz", "owls", "kites", "salt", "ferns", "clocks", "boats"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-data")
    rows = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in TOPICS]
    held = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in ("snow", "figs")]
    return write_jsonl(folder / "train.jsonl", rows), write_jsonl(folder / "eval.jsonl", held)


@pytest.fixture
def make_recipe(tiny_data, tmp_path):
    from quicktune.recipe import load_recipe

    train, held = tiny_data

    def make(name: str = "tiny", *, steps: int = 4, eval_file: bool = False, extra: str = "") -> object:
        text = f"""\
method: lora
model:
  base: {SMOLLM2}
  max_seq_length: 96
lora:
  r: 8
  alpha: 16
data:
  train: {train}
{f"  eval: {held}" if eval_file else ""}
training:
  max_steps: {steps}
  batch_size: 2
  grad_accumulation: 1
  learning_rate: 0.002
  warmup_ratio: 0.0
  save_every: 2
  seed: 11
{extra}"""
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return load_recipe(str(path))

    return make
