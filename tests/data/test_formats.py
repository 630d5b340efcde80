"""Every format is detected and normalised; every validation error names its line."""

from __future__ import annotations

import json

import pytest

from quicktune.data.check import load_examples
from quicktune.data.records import Message
from quicktune.errors import DataError
from tests.conftest import chat, write_jsonl

EXPECTED = (Message("user", "Hi"), Message("assistant", "Hello!"))


def test_messages_format(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [chat("Hi", "Hello!")])
    examples, files = load_examples([str(path)])
    assert files[0].format == "messages" and files[0].rows == 1
    assert examples[0].messages == EXPECTED
    assert examples[0].origin == f"{path}:1"


def test_sharegpt_format_with_system(tmp_path):
    row = {
        "system": "Be nice.",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
    }
    examples, files = load_examples([str(write_jsonl(tmp_path / "s.jsonl", [row]))])
    assert files[0].format == "sharegpt"
    assert examples[0].messages == (Message("system", "Be nice."), *EXPECTED)


def test_alpaca_format_joins_input(tmp_path):
    rows = [
        {"instruction": "Hi", "output": "Hello!"},
        {"instruction": "Translate", "input": "Bonjour", "output": "Hello"},
    ]
    examples, files = load_examples([str(write_jsonl(tmp_path / "a.jsonl", rows))])
    assert files[0].format == "alpaca"
    assert examples[0].messages == EXPECTED
    assert examples[1].messages[0] == Message("user", "Translate\n\nBonjour")


def test_text_format(tmp_path):
    examples, files = load_examples([str(write_jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time"}]))])
    assert files[0].format == "text"
    assert examples[0].text == "Once upon a time" and not examples[0].is_chat


def test_system_prompt_added_where_missing(tmp_path):
    rows = [chat("Hi", "Hello!"), chat("Hi", "Hello!", system="Own prompt")]
    examples, _ = load_examples([str(write_jsonl(tmp_path / "m.jsonl", rows))], system_prompt="Default")
    assert examples[0].messages[0] == Message("system", "Default")
    assert examples[1].messages[0] == Message("system", "Own prompt")


def test_json_list_file_has_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "Hi", "output": "Hello!"},\n\n  {"instruction": "Yo", "output": ""}\n]\n')
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)])
    assert excinfo.value.problems == [f"{path}:4: output: empty assistant turn"]


def test_csv_file(tmp_path):
    path = tmp_path / "d.csv"
    cell = json.dumps(chat("Hi", "Hello!")["messages"]).replace('"', '""')
    path.write_text('instruction,output\nHi,Hello!\n"multi\nline",ok\n,missing\n')
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)])
    assert excinfo.value.problems == [f"{path}:5: instruction: missing field"]
    messages_csv = tmp_path / "m.csv"
    messages_csv.write_text(f'messages\n"{cell}"\n')
    examples, files = load_examples([str(messages_csv)])
    assert files[0].format == "messages" and examples[0].messages == EXPECTED


def test_parquet_file(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pyarrow.Table.from_pylist([chat("Hi", "Hello!"), chat("Hi", "")]), path)
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)])
    assert excinfo.value.problems == [f"{path}:row 2: messages[1]: empty assistant turn"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"messages": [', "invalid JSON: Expecting value at column 15"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"messages": "hi"}', "messages: expected a list, got str"),
        ('{"messages": [{"role": "user"}]}', "messages[0].content: missing field"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content: expected a string, got int"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role: unknown role 'bot'"),
        (json.dumps(chat("Hi", "   ")), "messages[1]: empty assistant turn"),
        (json.dumps(chat("", "x")), "messages[0]: empty user turn"),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
            "messages[0]: wrong role order: expected user, got assistant",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
            "messages[1]: a system message may only come first",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "a"}]}),
            "messages: the last turn must be the assistant's",
        ),
    ],
)
def test_each_validation_error_names_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat("Hi", "Hello!"), "", line])
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)])
    (problem,) = excinfo.value.problems
    assert problem.startswith(f"{path}:3: {message}")


def test_all_problems_reported_capped_with_count(tmp_path):
    rows = [chat("Hi", "Hello!")] + ['{"broken'] * 30
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    with pytest.raises(DataError, match="30 problem"):
        load_examples([str(path)])
    try:
        load_examples([str(path)])
    except DataError as exc:
        assert len(exc.problems) == 21 and exc.problems[-1] == "... and 10 more"
        assert exc.problems[0].startswith(f"{path}:2: invalid JSON")


def test_undetectable_format_and_empty_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_examples([str(write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}]))])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_examples([str(empty)])
    with pytest.raises(DataError, match="not found"):
        load_examples([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples([str(write_jsonl(tmp_path / "x.txt", ["hello"]))])


def test_explicit_format_mismatch_says_what_the_record_looks_like(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [chat("Hi", "Hello!")])
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)], fmt="alpaca")
    looks = "this record looks like messages (OpenAI)"
    assert excinfo.value.problems == [f"{path}:1: instruction: missing field — {looks}"]
    assert "data.format says alpaca" in excinfo.value.hint and "data.format: auto" in excinfo.value.hint


def test_mismatch_hint_is_given_once_for_many_lines(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "A"}]} for i in range(60)]
    path = write_jsonl(tmp_path / "shop_train.jsonl", rows)
    with pytest.raises(DataError, match="60 problem") as excinfo:
        load_examples([str(path)], fmt="messages")
    shown = excinfo.value.problems
    assert shown[0] == f"{path}:1: messages: missing field — this record looks like sharegpt (conversations)"
    assert all("looks like sharegpt" in line for line in shown[:-1]) and shown[-1] == "... and 40 more"
    hint = excinfo.value.hint
    assert hint.count("data.format") == 3 and hint.count("\n") == 0  # one hint, not sixty
    assert "60 of its records look like sharegpt" in hint and "{shop_train.jsonl: sharegpt}" in hint


def test_a_file_mixing_formats_is_told_to_split(tmp_path):
    rows = [chat("Hi", "Hello!"), {"instruction": "Hi", "output": "Hello!"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError) as excinfo:
        load_examples([str(path)])
    looks = "this record looks like alpaca (instruction/output)"
    assert excinfo.value.problems == [f"{path}:2: messages: missing field — {looks}"]
    assert "its first record is messages" in excinfo.value.hint and "its own file" in excinfo.value.hint


def test_each_file_has_its_own_format(tmp_path):
    train = tmp_path / "shop_train.csv"
    train.write_text("instruction,input,output\nPrice of tea?,,3 EUR\nTranslate,Bonjour,Hello\n")
    held = write_jsonl(
        tmp_path / "shop_eval.jsonl",
        [{"conversations": [{"from": "user", "value": "Price of jam?"}, {"from": "assistant", "value": "4 EUR"}]}],
    )
    examples, files = load_examples([str(train), str(held)])
    assert [(f.format, f.format_from) for f in files] == [("alpaca", "detected"), ("sharegpt", "detected")]
    assert examples[2].messages == (Message("user", "Price of jam?"), Message("assistant", "4 EUR"))
    # pinned per file: the mapping names the file; a file it does not name is detected
    examples, files = load_examples([str(train), str(held)], fmt={str(train): "alpaca"})
    assert [(f.format, f.format_from) for f in files] == [("alpaca", "data.format"), ("sharegpt", "detected")]
    with pytest.raises(DataError) as excinfo:
        load_examples([str(train), str(held)], fmt={str(held): "alpaca"})
    assert excinfo.value.problems == [
        f"{held}:1: instruction: missing field — this record looks like sharegpt (conversations)"
    ]


def test_sharegpt_unknown_speaker_lists_every_accepted_one(tmp_path):
    row = {"conversations": [{"from": "customer", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    with pytest.raises(DataError) as excinfo:
        load_examples([str(write_jsonl(tmp_path / "s.jsonl", [row]))])
    (problem,) = excinfo.value.problems
    assert problem.endswith(
        "conversations[0].from: unknown speaker 'customer'; "
        "expected one of human, user, gpt, assistant, model, chatgpt, system (any case)"
    )
    upper = {"conversations": [{"from": "USER", "value": "Hi"}, {"from": "Assistant", "value": "Hello!"}]}
    examples, _ = load_examples([str(write_jsonl(tmp_path / "u.jsonl", [upper]))])
    assert examples[0].messages == EXPECTED


def test_an_empty_file_is_reported_after_a_broken_one(tmp_path):
    broken = write_jsonl(tmp_path / "broken.jsonl", ["{oops"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError) as excinfo:
        load_examples([str(broken), str(empty)])
    assert excinfo.value.problems == [
        f"{broken}:1: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        f"{empty}: no records found (the file is empty)",
    ]
