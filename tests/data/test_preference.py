"""Preference pairs (method dpo/orpo): formats, every data error with its line, the rendered pair."""

from __future__ import annotations

import json

import pytest

from quicktune.data.formats import detect_format
from quicktune.data.preference import holds_pairs, prepare_pairs
from quicktune.errors import DataError, QuicktuneError
from tests.conftest import SMOLLM2, chat, write_jsonl

PROMPT = "One word for tea?"


def pair(prompt=PROMPT, chosen='{"word": "tea"}', rejected='{"word": "TEA"}', **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def as_messages(prompt: str, answer: str, worse: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": answer}],
        "rejected": [{"role": "assistant", "content": worse}],
    }


def implicit(prompt: str, answer: str, worse: str) -> dict:
    user = {"role": "user", "content": prompt}
    return {
        "chosen": [user, {"role": "assistant", "content": answer}],
        "rejected": [user, {"role": "assistant", "content": worse}],
    }


def test_the_three_forms_are_detected_and_read_alike(tmp_path):
    rows = {
        "strings": [pair(f"One word for {t}?", f'{{"word": "{t}"}}', f'{{"word": "{t.upper()}"}}')
                    for t in ("tea", "jam")],
        "messages": [as_messages(f"One word for {t}?", f'{{"word": "{t}"}}', f'{{"word": "{t.upper()}"}}')
                     for t in ("tea", "jam")],
        "implicit": [implicit(f"One word for {t}?", f'{{"word": "{t}"}}', f'{{"word": "{t.upper()}"}}')
                     for t in ("tea", "jam")],
    }
    read = {}
    for name, records in rows.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        assert detect_format(records[0]) == "preference" and holds_pairs(path)
        prepared = prepare_pairs([str(path)])
        assert [f.format for f in prepared.report.files] == ["preference"]
        read[name] = [(p.prompt, p.chosen, p.rejected) for p in prepared.train_pairs]
    assert read["strings"] == read["messages"] == read["implicit"]
    # a conversation is not a pair, and the SFT formats are still what they were
    assert detect_format(chat("hi", "hello")) == "messages"


def test_every_broken_pair_is_reported_with_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            pair(),  # 1: fine
            {"prompt": PROMPT, "chosen": "a"},  # 2
            pair(rejected=None),  # 3
            pair(chosen=" "),  # 4
            pair(chosen="same", rejected="same "),  # 5
            {"chosen": "a", "rejected": "b"},  # 6: no prompt, answers are not conversations
            pair(prompt=[{"role": "assistant", "content": "hi"}]),  # 7
            pair(chosen=[{"role": "user", "content": "x"}]),  # 8
            implicit("a", "b", "c")
            | {"rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]},  # 9
            "{not json",  # 10
            pair(prompt=""),  # 11
        ],
    )
    with pytest.raises(DataError) as caught:
        prepare_pairs([str(path)])
    problems = "\n".join(caught.value.problems)
    name = str(path)
    expected = {
        2: "rejected: missing field",
        3: "rejected: missing field",
        4: "chosen: empty answer",
        5: "chosen, rejected: the same answer",
        6: "prompt: missing field",
        7: "prompt[0]: wrong role order: expected user, got assistant",
        8: "chosen: expected one assistant message",
        9: "chosen, rejected: the two conversations differ before their last message",
        10: "invalid JSON",
        11: "prompt: empty",
    }
    for line, text in expected.items():
        assert f"{name}:{line}: {text}" in problems, (line, problems)
    assert f"{name}:1:" not in problems
    assert len(caught.value.problems) == len(expected)


def test_a_conversation_file_in_a_dpo_recipe_says_what_it_looks_like(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [chat("hi", "hello")])
    with pytest.raises(DataError) as caught:
        prepare_pairs([str(path)])
    assert f"{path}:1: chosen: missing field — this record looks like messages (OpenAI)" in caught.value.problems


def test_a_pair_file_in_an_sft_recipe_is_refused_with_the_method_to_use(tmp_path):
    from quicktune.data.check import prepare

    path = write_jsonl(tmp_path / "pairs.jsonl", [pair()])
    with pytest.raises(DataError) as caught:
        prepare([str(path)])
    assert f"{path}:1: a preference pair" in caught.value.message and "method: dpo" in caught.value.hint


def test_duplicates_and_leakage_name_both_lines(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            pair(),
            pair("One word for jam?", "jam", "JAM"),
            pair(" one word for TEA? ", '{"word": "tea"}', '{"word": "TEA"}'),
        ],
    )
    held = write_jsonl(tmp_path / "eval.jsonl", [pair("One word for jam?", "jam!", "Jam")])
    report = prepare_pairs([str(train)], eval_paths=[str(held)]).report
    assert report.exact_duplicates == 1 and report.removed_duplicates == 1 and report.train_rows == 2
    assert (report.duplicate_pairs[0].first, report.duplicate_pairs[0].second) == (f"{train}:1", f"{train}:3")
    assert report.leakage == 1
    assert (report.leakage_pairs[0].first, report.leakage_pairs[0].second) == (f"{train}:2", f"{held}:1")
    assert any("eval pair(s) have the same or nearly the same prompt" in w for w in report.warnings)


@pytest.mark.slow
def test_tokens_lengths_and_the_rendered_pair(tmp_path, smollm2_tokenizer):
    long_answer = " ".join(["word"] * 80)
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [pair(), pair("One word for jam?", long_answer, "jam")],
    )
    prepared = prepare_pairs([str(path)], tokenizer=smollm2_tokenizer, max_seq_length=64,
                             system_prompt="Answer in JSON.")
    first = prepared.train_tokens[0]
    # the prompt is rendered with the generation prompt; each answer ends with its end-of-turn token
    decode = smollm2_tokenizer.backend.decode
    assert decode(first.prompt_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert "Answer in JSON." in decode(first.prompt_ids, skip_special_tokens=False)
    assert decode(first.chosen_ids, skip_special_tokens=False) == '{"word": "tea"}<|im_end|>'
    assert decode(first.rejected_ids, skip_special_tokens=False) == '{"word": "TEA"}<|im_end|>'
    report = prepared.report
    (warning,) = [w for w in report.warnings if "longer than max_seq_length 64" in w]
    assert f"{path}:2 (" in warning and f"{path}:1 " not in warning
    assert report.example.origin == f"{path}:1, chosen" and report.example_rejected.origin == f"{path}:1, rejected"
    trained = "".join(t for t, on in report.example.tokens if on)
    pushed = "".join(t for t, on in report.example_rejected.tokens if on)
    assert trained == '{"word": "tea"}<|im_end|>' and pushed == '{"word": "TEA"}<|im_end|>'
    assert report.stop.text == "<|im_end|>"


@pytest.mark.slow
def test_data_check_on_a_dpo_recipe(tmp_path):
    from quicktune.data.check import check_data

    train = write_jsonl(tmp_path / "train.jsonl", [pair(), pair("One word for jam?", "jam", "JAM")])
    held = write_jsonl(tmp_path / "eval.jsonl", [pair("One word for figs?", "figs", "FIGS")])
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"method: dpo\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\n"
                      f"data:\n  train: {train}\n  eval: {held}\n")
    report = check_data([], recipe_ref=str(recipe))
    assert (report.train_rows, report.eval_rows) == (2, 1)
    assert report.train_tokens.rows == 2 and report.example_rejected is not None
    assert json.dumps(report.to_dict())  # --json


def test_recipe_keys_are_validated(tmp_path):
    from quicktune.recipe import load_recipe

    def recipe(text: str, model: str = ""):
        path = tmp_path / "r.yaml"
        path.write_text(f"model:\n  base: {SMOLLM2}\n{model}data:\n  train: x.jsonl\n{text}")
        return load_recipe(str(path))

    dpo = recipe("method: dpo\npreference:\n  beta: 0.2\n  loss_type: ipo\n")
    assert (dpo.preference.beta, dpo.preference.loss_type, dpo.model.load_in_4bit) == (0.2, "ipo", False)
    assert "preference" in dpo.to_yaml() and "preference" not in recipe("method: lora\n").to_yaml()
    qlora_dpo = recipe("method: dpo\n", model="  load_in_4bit: true\n")  # DPO on a 4-bit base: QLoRA
    assert qlora_dpo.model.load_in_4bit and qlora_dpo.export.merge_target == "dequantized"
    refused = {
        "method: lora\npreference:\n  beta: 0.2\n": "preference: used only by method dpo or orpo",
        "method: orpo\npreference:\n  loss_type: ipo\n": "ORPO's loss is fixed",
        "method: orpo\npreference:\n  sft_weight: 1.0\n": "ORPO's loss already holds the SFT loss",
        "method: dpo\npreference:\n  sft_weight: -1\n": "preference.sft_weight",
        "method: dpo\npreference:\n  label_smoothing: 0.1\n": (
            "read only by method dpo with loss_type robust or exo_pair"
        ),
        "method: dpo\npreference:\n  loss_type: exo_pair\n": "exo_pair needs a value above 0",
        "method: dpo\npreference:\n  beta: 0\n": "preference.beta",
        "method: dpo\npreference:\n  loss_type: best\n": "preference.loss_type",
        "method: dpo\ntraining:\n  packing: true\n": "training.packing: method dpo",
    }
    for text, message in refused.items():
        with pytest.raises(QuicktuneError) as caught:
            recipe(text)
        assert message in str(caught.value.problems or caught.value.message), (text, caught.value.problems)
