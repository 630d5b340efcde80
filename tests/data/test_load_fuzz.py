"""Property-based fuzzing of the data loader: whatever a data file holds, the result is a report
or a ``QuicktuneError`` naming the file and line, never a traceback."""

from __future__ import annotations

import json
import re
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra installs it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quicktune.data.check import prepare  # noqa: E402
from quicktune.errors import QuicktuneError  # noqa: E402

KEYS = ["messages", "conversations", "role", "content", "from", "value", "instruction", "input", "output", "text",
        "system", "user", "assistant", "human", "gpt"]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(KEYS)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
turn = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "x", ""]) | scalars,
                              "content": st.text(max_size=20) | scalars})
plausible = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(turn, max_size=4)}),
    st.fixed_dictionaries({"conversations": st.lists(
        st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "GPT", "bot"]), "value": scalars}),
        max_size=4)}),
    st.fixed_dictionaries({"instruction": scalars, "output": scalars}, optional={"input": scalars}),
    st.fixed_dictionaries({"text": scalars}),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
)
lines = st.lists(
    st.one_of(plausible.map(json.dumps), values.map(json.dumps), st.text(alphabet=string.printable, max_size=30)),
    min_size=0, max_size=8,
)


def _outcome(path, **kwargs):
    try:
        return prepare([str(path)], semantic_threshold=None, **kwargs).report
    except QuicktuneError as error:
        return error


def _names_file_and_line(error: QuicktuneError, path) -> bool:
    text = str(error)
    return bool(re.search(re.escape(str(path)) + r":(\d+|row \d+)", text)) or (
        # a file with nothing to train on has no line to name: the file itself
        str(path) in text or path.name in text
    )


FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(rows=lines)
def test_any_jsonl_file_ends_in_a_report_or_an_error_with_file_and_line(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    outcome = _outcome(path)
    if isinstance(outcome, QuicktuneError):
        assert _names_file_and_line(outcome, path), str(outcome)
    else:
        assert outcome.train_rows >= 1


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_in_any_supported_file_type(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("fuzz")
    for suffix in (".jsonl", ".json", ".csv"):
        path = folder / f"train{suffix}"
        path.write_bytes(raw)
        outcome = _outcome(path)
        if isinstance(outcome, QuicktuneError):
            assert _names_file_and_line(outcome, path), str(outcome)


@FUZZ
@given(
    records=st.lists(plausible | values, max_size=6),
    fmt=st.sampled_from(["auto", "messages", "sharegpt", "alpaca", "text"]),
)
def test_json_lists_and_csv_with_a_pinned_format(tmp_path_factory, records, fmt):
    folder = tmp_path_factory.mktemp("fuzz")
    as_json = folder / "train.json"
    as_json.write_text(json.dumps(records, indent=1), encoding="utf-8")
    outcome = _outcome(as_json, fmt=fmt)
    if isinstance(outcome, QuicktuneError):
        assert _names_file_and_line(outcome, as_json), str(outcome)
    import csv

    as_csv = folder / "train.csv"
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "output", "messages"])
        for record in records:
            values = record.values() if isinstance(record, dict) else [record]
            cells = [json.dumps(v) if not isinstance(v, str) else v for v in values]
            writer.writerow(cells[:4])
    outcome = _outcome(as_csv, fmt=fmt)
    if isinstance(outcome, QuicktuneError):
        assert _names_file_and_line(outcome, as_csv), str(outcome)
