"""Property-based fuzzing of the recipe loader and ``--set``: any input loads, or ends in a
``RecipeError`` that names the file and line (or the flag), never a traceback."""

from __future__ import annotations

import re

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra installs it
import yaml  # noqa: E402 (after the importorskip above: hypothesis is optional)
from hypothesis import HealthCheck, given, settings  # noqa: E402 (after the importorskip above: hypothesis is optional)
from hypothesis import strategies as st  # noqa: E402 (after the importorskip above: hypothesis is optional)

from quicktune.errors import QuicktuneError  # noqa: E402 (after the importorskip above: hypothesis is optional)
from quicktune.recipe import Recipe, load_recipe  # noqa: E402 (after the importorskip above: hypothesis is optional)


def _schema_keys() -> list[str]:
    keys = set(Recipe.model_fields)
    for field in Recipe.model_fields.values():
        keys.update(getattr(field.annotation, "model_fields", {}) or {})
    return sorted(keys)


KEYS = _schema_keys()
scalars = (st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=10)
           | st.sampled_from(["qlora", "lora", "full", "auto", "q4_k_m", "smollm2-demo", "train.jsonl", "~/x", "."]))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(error: QuicktuneError, path) -> None:
    text = str(error)
    located = re.search(re.escape(str(path)) + r":\d+", text) or "--set " in text
    assert located or str(path) in text, text


@FUZZ
@given(document=documents)
def test_any_yaml_mapping_loads_or_names_its_lines(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    try:
        load_recipe(str(path))
    except QuicktuneError as error:
        _check(error, path)


@FUZZ
@given(text=st.text(max_size=120))
def test_any_text_as_a_recipe(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(str(path))
    except QuicktuneError as error:
        _check(error, path)


MINIMAL = "model:\n  base: some/model\ndata:\n  train: train.jsonl\n"
override_keys = st.lists(st.sampled_from(KEYS) | st.text(max_size=5), min_size=1, max_size=3).map(".".join)
overrides = st.tuples(override_keys, st.sampled_from(["=", "", "=="]), st.text(max_size=20) | values.map(
    lambda v: yaml.safe_dump(v, default_flow_style=True).strip())).map("".join)


@FUZZ
@given(sets=st.lists(overrides, min_size=1, max_size=3))
def test_any_set_flags_load_or_name_the_flag(tmp_path_factory, sets):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    try:
        load_recipe(str(path), sets)
    except QuicktuneError as error:
        text = str(error)
        assert "--set " in text or re.search(re.escape(str(path)) + r":\d+", text), text
