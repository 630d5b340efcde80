"""An instruction most rows share (issue 35): found by ``data check``, moved into the system prompt by
``data.shared_instruction: system`` for training and serving alike, and refused where it cannot be honoured."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.data.check import CONVERSATIONS, prepare, prepare_for_recipe
from quicktune.data.instruction import MOST, SharedInstruction, find_shared, move_to_system, typed_form
from quicktune.data.pipeline import DataSettings, prepare_rows
from quicktune.data.records import Example, Message
from quicktune.data.system_prompt import served_prompt, summarise
from quicktune.errors import QuicktuneError
from quicktune.recipe import load_recipe
from tests.conftest import SMOLLM2, chat, write_jsonl

SLUG = "Turn this blog post title into a URL slug."
WORDS = ["sleep", "tips", "coffee", "garden", "money", "travel", "python", "code", "bread", "dogs", "cats", "music",
         "running", "health", "books", "rain"]


def titles(count: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(2, 6))) + rng.choice(["", "!", "?"])
            for _ in range(count)]


def slug(title: str) -> str:
    return "-".join(w.lower().strip("!?") for w in title.split())


def alpaca(title: str, instruction: str = SLUG, **extra) -> dict:
    return {"instruction": instruction, "input": title, "output": slug(title), **extra}


def asked(text: str) -> Example:
    return Example("f.jsonl:1", (Message("user", text), Message("assistant", "ok")))


# --- finding it -----------------------------------------------------------------------------------


def test_an_instruction_every_row_shares_is_found_as_alpaca_joins_it(tmp_path):
    rows = write_jsonl(tmp_path / "slugs.jsonl", [alpaca(t) for t in titles(40)])
    found = prepare([str(rows)]).report.shared_instruction
    assert found.prefix == SLUG + "\n\n" and found.suffix == "" and found.text == SLUG
    assert (found.rows, found.of_rows, found.mode) == (40, 40, "keep")


def test_most_rows_is_enough_and_fewer_is_not():
    rows = [asked(f"{SLUG}\n\n{t}") for t in titles(100)]
    others = [asked(f"What rhymes with {w} number {i}?") for i, w in enumerate(WORDS * 2)][:25]
    found = find_shared(rows[:80] + others[:20])  # 80 of 100
    assert found is not None and found.text == SLUG and found.rows == 80
    assert find_shared(rows[:75] + others[:25]) is None  # 75 %: below MOST
    assert MOST == 0.8


@pytest.mark.parametrize(
    "make, prefix, suffix",
    [
        (lambda t: f"Translate to French: {t}", "Translate to French: ", ""),
        (lambda t: f"Question about a title:\n{t}", "Question about a title:\n", ""),
        (lambda t: f"{t}\n\nRespond with the slug only.", "", "\n\nRespond with the slug only."),
        (lambda t: f"{t}. Answer with the slug only.", "", " Answer with the slug only."),
        (lambda t: f"Slugify this: {t}\nAnswer with the slug only.", "Slugify this: ", "\nAnswer with the slug only."),
    ],
)
def test_prefix_and_suffix_variants(make, prefix, suffix):
    found = find_shared([asked(make(t)) for t in titles(30)])
    assert (found.prefix, found.suffix, found.rows) == (prefix, suffix, 30)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: f"How do I {t.lower()}",  # a question style, not an instruction
        lambda t: f"One word for {t}?",  # a shared start that ends nowhere
        lambda t: f"Q: {t}",  # too short to be an instruction
        lambda t: t,  # nothing shared
    ],
)
def test_no_shared_instruction(make):
    assert find_shared([asked(make(t)) for t in titles(30)]) is None


def test_rows_with_the_instruction_alone_do_not_count():
    rows = [asked(f"{SLUG}\n\n{t}") for t in titles(20)] + [asked(SLUG) for _ in range(10)]
    assert find_shared(rows) is None  # 20 of 30 have an input after it


def test_too_few_rows_say_nothing():
    assert find_shared([asked(f"{SLUG}\n\n{t}") for t in titles(9)]) is None


def test_sharegpt_and_messages_rows_with_a_common_prefix(tmp_path):
    names = titles(12)
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"system": "Be brief.", "conversations": [{"from": "human", "value": f"Summarise this title: {t}"},
                                                  {"from": "gpt", "value": slug(t)}]} for t in names])
    messages = write_jsonl(tmp_path / "messages.jsonl", [
        chat(f"Summarise this title: {t}", slug(t), system="Be brief.") for t in names])
    for path in (sharegpt, messages):
        found = prepare([str(path)]).report.shared_instruction
        assert found.prefix == "Summarise this title: " and found.rows == 12


def test_only_the_first_user_turn_is_looked_at():
    rows = [Example("f:1", (Message("user", t), Message("assistant", "a"), Message("user", f"{SLUG}\n\n{t}"),
                            Message("assistant", "b"))) for t in titles(20)]
    assert find_shared(rows) is None


def test_a_hundred_thousand_rows_are_searched_in_well_under_a_second():
    import time

    rows = [asked(f"{SLUG}\n\n{t} {i}") for i, t in enumerate(titles(100_000))]
    start = time.perf_counter()
    found = find_shared(rows)
    assert found.rows == 100_000 and time.perf_counter() - start < 2.0  # ~0.15 s measured on 2 cores


# --- moving it --------------------------------------------------------------------------------------


def test_moving_appends_to_a_row_system_turn_and_keeps_rows_without_it():
    found = SharedInstruction(SLUG + "\n\n", "", 2, 3)
    rows = [asked(f"{SLUG}\n\nA Title"),
            Example("f:2", (Message("system", "Be brief."), Message("user", f"{SLUG}\n\nB"),
                            Message("assistant", "b"))),
            asked("Something else")]
    moved, count = move_to_system(rows, found)
    assert count == 2
    assert moved[0].messages[:2] == (Message("system", SLUG), Message("user", "A Title"))
    assert moved[1].messages[:2] == (Message("system", f"Be brief.\n\n{SLUG}"), Message("user", "B"))
    assert moved[2] == rows[2]


def test_typed_form_is_the_input_alone_with_the_served_system_prompt():
    found = SharedInstruction(SLUG + "\n\n", "", 1, 1)
    row = Example("f:1", (Message("system", "Own."), Message("user", f"{SLUG}\n\nA Title"), Message("assistant", "a")))
    assert typed_form(row, found, "Served.").messages[:2] == (Message("system", "Served."), Message("user", "A Title"))
    assert typed_form(row, found, None).messages[0] == Message("user", "A Title")


def test_summarise_sends_the_moved_system_turn():
    rows, _ = move_to_system([asked(f"{SLUG}\n\n{t}") for t in titles(12)] + [asked("Other?")],
                             found := find_shared([asked(f"{SLUG}\n\n{t}") for t in titles(12)]))
    found.mode, found.system = "system", SLUG
    system = summarise(rows, recipe_prompt=None, export_prompt=None, shared=found)
    assert (system.trained, system.trained_from, system.served, system.warning) == (
        SLUG, "data.shared_instruction", SLUG, None)


# --- the recipe key, end to end ----------------------------------------------------------------------


def _recipe(tmp_path, rows, extra: str = "", eval_rows=None):
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = f"\n  eval: {write_jsonl(tmp_path / 'eval.jsonl', eval_rows)}" if eval_rows else ""
    path = tmp_path / "slugs.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\n"
                    f"data:\n  train: {train}{held}\n  shared_instruction: system\n{extra}")
    return load_recipe(str(path))


def test_system_trains_the_instruction_as_the_system_prompt(tmp_path, smollm2_tokenizer, monkeypatch):
    names = titles(14)
    recipe = _recipe(tmp_path, [alpaca(t) for t in names[:12]] + [{"instruction": "Say hi.", "output": "hi"}],
                     eval_rows=[alpaca(names[12]), {"instruction": "Say bye.", "output": "bye"}])
    monkeypatch.setattr("quicktune.data.check.recipe_tokenizer", lambda recipe: smollm2_tokenizer)
    prepared = prepare_for_recipe(recipe)
    found = prepared.report.shared_instruction
    assert (found.mode, found.rows, found.of_rows, found.moved, found.system) == ("system", 12, 13, 13, SLUG)
    assert prepared.report.system_prompt.trained == SLUG
    assert prepared.report.system_prompt.trained_from == "data.shared_instruction"
    assert not any("shared" in w or "instruction" in w for w in prepared.report.warnings)
    for example, tokens in zip(prepared.train, prepared.train_tokens):
        text = tokens.rendered.text
        if example.messages[-1].content in ("hi",):  # the row without it: as it was
            assert SLUG not in text and "Say hi." in text
            continue
        title = example.messages[1].content
        assert f"<|im_start|>system\n{SLUG}<|im_end|>" in text
        assert f"<|im_start|>user\n{title}<|im_end|>" in text and title in names
        assert text.count(SLUG) == 1  # not in the user turn any more
    assert prepared.eval[0].messages[0] == Message("system", SLUG)  # eval files: moved too
    assert prepared.eval[1].messages[0] == Message("user", "Say bye.")

    manifest = {"data": {"system_prompt": prepared.report.system_prompt.to_dict()}}  # as training records it
    assert served_prompt(recipe, manifest) == SLUG  # chat, serve and the Modelfile's SYSTEM
    assert SharedInstruction.from_dict(manifest["data"]["system_prompt"]["shared_instruction"]).text == SLUG
    from quicktune.export import ollama
    from quicktune.ollama_rules import read_modelfile

    fmt = ollama.read_format(smollm2_tokenizer.render)
    settings = ollama.ModelfileSettings("m.gguf", "m:q8_0", "Modelfile", ["<|im_end|>"], 0, 1, 512,
                                        served_prompt(recipe, manifest), system_key="data.shared_instruction")
    assert read_modelfile(ollama.render_modelfile(fmt, settings)).system == SLUG


def test_system_combines_with_data_system_prompt(tmp_path):
    recipe = _recipe(tmp_path, [alpaca(t) for t in titles(12)], "  system_prompt: Be brief.\n")
    prepared = prepare_for_recipe(recipe, tokenize=False)
    assert prepared.report.system_prompt.trained == f"Be brief.\n\n{SLUG}"
    assert {e.messages[0].content for e in prepared.train} == {f"Be brief.\n\n{SLUG}"}


def test_system_with_nothing_shared_says_so(tmp_path):
    recipe = _recipe(tmp_path, [alpaca(t, instruction=f"Slug {i} please.") for i, t in enumerate(titles(12))])
    report = prepare_for_recipe(recipe, tokenize=False).report
    assert report.shared_instruction is None
    assert any("no instruction is shared by most train rows" in w for w in report.warnings)


def test_keep_warns_what_it_means_for_serving(tmp_path):
    rows = write_jsonl(tmp_path / "slugs.jsonl", [alpaca(t) for t in titles(20)])
    result = CliRunner().invoke(main, ["data", "check", str(rows), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["shared_instruction"]["text"] == SLUG
    [warning] = [w for w in report["warnings"] if "same instruction" in w]
    assert "must type it" in warning and "data.shared_instruction: system" in warning


def test_preference_pairs_refuse_system(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"{SLUG}\n\n{t}", "chosen": slug(t), "rejected": t}
                                                     for t in titles(12)])
    settings = DataSettings(train_paths=[str(pairs)], shared_instruction="system")
    from quicktune.data.preference import PAIRS

    with pytest.raises(QuicktuneError, match="preference pairs"):
        prepare_rows(PAIRS, settings)
    assert prepare_rows(CONVERSATIONS, DataSettings(train_paths=[str(write_jsonl(
        tmp_path / "rows.jsonl", [alpaca(t) for t in titles(12)]))], shared_instruction="system")).train


def test_axolotl_export_refuses_system(tmp_path):
    from quicktune.axolotl import to_axolotl

    recipe = _recipe(tmp_path, [alpaca(t) for t in titles(12)])
    with pytest.raises(QuicktuneError, match="Axolotl reads the files as they are"):
        to_axolotl(recipe)
