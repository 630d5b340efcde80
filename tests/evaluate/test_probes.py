"""The shipped probe set and how a probe answer is checked (no model)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from quicktune.evaluate.probes import (
    PROBE_SETS,
    Probe,
    ProbeReport,
    ProbeScores,
    found,
    load_probes,
    passes,
    probe_file,
)
from quicktune.evaluate.probes.generate import probes, render


def test_the_shipped_set_is_what_the_generator_writes():
    assert probe_file("general").read_text(encoding="utf-8") == render(probes())


def test_the_general_set_covers_five_abilities_with_exact_answers():
    loaded, sha = load_probes("general")
    assert len(sha) == 64 and len(loaded) == 40
    categories = ("arithmetic", "formatting", "copying", "counting", "reasoning")
    assert Counter(p.category for p in loaded) == dict.fromkeys(categories, 8)
    assert len({p.id for p in loaded}) == len(loaded)
    for probe in loaded:
        assert probe.answer and probe.match in ("exact", "casefold", "json")
        assert passes(probe, probe.answer), probe  # the expected answer passes its own check
        assert not passes(probe, probe.answer + " and more"), probe


def test_the_arithmetic_and_counting_answers_are_right():
    for probe in load_probes("general")[0]:
        if probe.category == "arithmetic":
            a, op, b = probe.prompt.removeprefix("What is ").split("?")[0].split(" ")
            assert int(probe.answer) == {"+": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
        if probe.prompt.startswith("How many items"):
            listed = probe.prompt.split(": ", 1)[1].split("?")[0]
            assert int(probe.answer) == len(listed.split(", "))


@pytest.mark.parametrize(
    ("match", "expected", "answer", "ok"),
    [
        ("exact", "42", " 42.\n", True),  # whitespace and one final full stop are not the answer
        ("exact", "42", "The answer is 42", False),
        ("exact", "FOREST", "forest", False),  # a formatting probe is case-sensitive
        ("casefold", "Monday", "monday", True),
        ("json", '{"size": 65}', '{ "size" : 65 }', True),
        ("json", '{"size": 65}', '{"size": "65"}', False),
        ("json", '{"size": 65}', "size: 65", False),
    ],
)
def test_how_an_answer_is_checked(match, expected, answer, ok):
    assert passes(Probe("x-1", "x", "?", expected, match), answer) is ok


@pytest.mark.parametrize(
    ("match", "expected", "answer", "ok"),
    [
        ("exact", "70", "10 times 7 is 70.", True),  # the answer, in other words than asked
        ("exact", "7", "10 times 7 is 70.", True),
        ("exact", "46", "38 + 8 = 11", False),
        ("exact", "-7", "21 minus 28 is -7", True),
        ("exact", "6", "There are 16 items.", False),  # a whole number, not a digit inside one
        ("exact", "FOREST", "Sure: forest", False),
        ("casefold", "Kofi", "The shortest is kofi.", True),
        ("json", '{"size": 65}', 'Here: {"size": 65}', False),  # json is checked as a whole answer
    ],
)
def test_an_answer_is_found_in_a_longer_reply(match, expected, answer, ok):
    assert found(Probe("x-1", "x", "?", expected, match), answer) is ok


def test_a_rising_loss_on_the_answers_is_reported_as_forgetting(tmp_path):
    probes = [Probe("x-1", "x", "?", "1", "exact")]

    def report(before: float, after: float) -> ProbeReport:
        return ProbeReport(tmp_path, "general", "0" * 64, probes,
                           [ProbeScores("base", ["no"], [False], before), ProbeScores("run", ["no"], [False], after)])

    assert report(2.0, 2.9).loss_rose() == pytest.approx(0.45)
    assert report(2.0, 2.1).loss_rose() is None and report(2.0, 1.0).loss_rose() is None
    assert report(2.0, 2.9).to_json()["regressions"]["loss_rose"] == pytest.approx(0.45)


def test_the_recipe_key_and_the_cli_name_the_shipped_sets(tmp_path, tiny_data):
    from click.testing import CliRunner

    from quicktune.cli import evaluate, main
    from quicktune.recipe import EvalSection

    assert set(EvalSection.model_fields["probes"].annotation.__args__[0].__args__) == set(PROBE_SETS)
    assert set(next(p for p in evaluate.params if p.name == "probe").type.choices) == set(PROBE_SETS)
    train, _ = tiny_data
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: lora\nmodel:\n  base: x\ndata:\n  train: {train}\neval:\n  probes: [trivia]\n")
    result = CliRunner().invoke(main, ["train", str(recipe), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "r.yaml:7: eval.probes" in result.output and "general" in result.output


def test_probe_set_files_are_package_data():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "evaluate/probes/*.jsonl" in pyproject["tool"]["setuptools"]["package-data"]["quicktune"]
    assert json.loads(probe_file("general").read_text().splitlines()[0])["id"] == "arithmetic-1"
