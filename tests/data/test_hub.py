"""Datasets from the Hugging Face Hub (``hf://OWNER/NAME``), read from a Hub cache built on disk: no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.data.check import check_data, load_examples, prepare
from quicktune.data.load import read_records, source_identity
from quicktune.errors import DataError, RecipeError
from quicktune.hubref import parse_hub_ref
from quicktune.recipe import load_recipe, with_added_train_files
from tests.conftest import SMOLLM2, chat
from tests.data.hub_cache import jsonl_bytes, offline_hub_cache, parquet_bytes
from tests.test_cli import imported_after

ALPACA = [{"instruction": f"Spell {w} backwards.", "input": "", "output": w[::-1]}
          for w in ("tea", "rain", "chess", "maps", "bread", "jazz", "owls", "kites")]
QA = [{"question": f"What rhymes with {w}?", "answer": f"{w[1:]}ay", "id": i}
      for i, w in enumerate(("cat", "dog", "sun", "hat", "pen", "log"))]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub_cache(tmp_path, monkeypatch)


def recipe_file(tmp_path, data: str) -> str:
    path = tmp_path / "hub.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 128\n{data}")
    return str(path)


# --- reading -----------------------------------------------------------------------------------------


def test_rows_of_a_cached_dataset_read_offline_with_row_references(hub_cache):
    hub_cache.add("owner/alpaca-mini", {"data/train.jsonl": jsonl_bytes(ALPACA)})
    records = list(read_records("hf://owner/alpaca-mini"))
    assert [r.origin for r in records][:2] == ["hf://owner/alpaca-mini[train]:row 0",
                                               "hf://owner/alpaca-mini[train]:row 1"]
    assert records[3].value == {"instruction": "Spell maps backwards.", "input": "", "output": "spam"}
    assert len(records) == len(ALPACA)


def test_parquet_columns_mapped_onto_alpaca_fields(hub_cache):
    hub_cache.add("owner/qa", {"data/train-00000-of-00001.parquet": parquet_bytes(QA)})
    examples, files = load_examples(["hf://owner/qa?columns=question:instruction,answer:output"])
    assert [m.content for m in examples[2].messages] == ["What rhymes with sun?", "unay"]
    assert files[0].format == "alpaca" and files[0].rows == len(QA)


def test_limit_and_sample_pick_rows_in_order(hub_cache):
    hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA)})
    first = [r.origin.rpartition(":")[2] for r in read_records("hf://owner/alpaca-mini?limit=3")]
    assert first == ["row 0", "row 1", "row 2"]
    def sample(seed: int, limit: str = "") -> list[int]:
        ref = f"hf://owner/alpaca-mini?{limit}sample=3&seed={seed}"
        return [int(r.origin.rpartition(" ")[2]) for r in read_records(ref)]

    assert sample(5) == sample(5) and len(sample(5)) == 3 and sample(5) == sorted(sample(5))
    assert len({tuple(sample(seed)) for seed in range(6)}) > 1  # the seed picks the rows
    assert all(max(sample(seed, "limit=4&")) < 4 for seed in range(6))  # drawn from the first 4 rows


def test_split_subset_and_revision(hub_cache):
    card = ("---\nconfigs:\n- config_name: easy\n  data_files:\n  - split: train\n    path: easy/train.jsonl\n"
            "  - split: test\n    path: easy/test.jsonl\n- config_name: hard\n  data_files:\n  - split: train\n"
            "    path: hard/train.jsonl\n---\n# A dataset\n")
    old = hub_cache.add("owner/levels", {"README.md": card.encode(), "easy/train.jsonl": jsonl_bytes(ALPACA[:2]),
                                         "easy/test.jsonl": jsonl_bytes(ALPACA[2:3]),
                                         "hard/train.jsonl": jsonl_bytes(ALPACA[3:7])}, commit="1" * 40)
    hub_cache.add("owner/levels", {"README.md": card.encode(), "easy/train.jsonl": jsonl_bytes(ALPACA[:5]),
                                   "easy/test.jsonl": jsonl_bytes(ALPACA[5:6]),
                                   "hard/train.jsonl": jsonl_bytes(ALPACA[6:])}, commit="2" * 40)
    assert len(list(read_records("hf://owner/levels?subset=easy"))) == 5  # main: the newer commit
    assert len(list(read_records(f"hf://owner/levels?subset=easy&revision={old}"))) == 2
    test_rows = list(read_records("hf://owner/levels?subset=hard&split=train"))
    assert test_rows[0].origin == "hf://owner/levels[hard/train]:row 0" and len(test_rows) == 2
    assert source_identity(f"hf://owner/levels?subset=easy&revision={old}")["revision"] == old
    with pytest.raises(DataError, match="has no split 'validation'; its splits: train, test"):
        list(read_records("hf://owner/levels?subset=easy&split=validation"))
    with pytest.raises(DataError, match="medium"):
        list(read_records("hf://owner/levels?subset=medium"))


def test_missing_from_the_cache_says_how_to_get_it(hub_cache):
    with pytest.raises(DataError) as caught:
        list(read_records("hf://owner/never-downloaded"))
    text = str(caught.value)
    assert "not in the Hugging Face cache" in text and "HF_HUB_OFFLINE=1" in text
    assert "hf download --repo-type dataset owner/never-downloaded" in text


def test_a_column_the_dataset_lacks_is_named_with_the_columns_it_has(hub_cache):
    hub_cache.add("owner/qa", {"train.parquet": parquet_bytes(QA)})
    with pytest.raises(DataError, match=r"columns names query, .* its columns: question, answer, id"):
        list(read_records("hf://owner/qa?columns=query:instruction,answer:output"))


def test_a_bad_row_is_reported_by_its_row_reference_with_every_other(hub_cache):
    rows = [*ALPACA[:2], {"instruction": "Spell nothing.", "input": ""}, ALPACA[3], {"instruction": 7, "output": "x"},
            '{"instruction": "cut short']
    hub_cache.add("owner/broken", {"data/train.jsonl": jsonl_bytes(rows)})
    with pytest.raises(DataError) as caught:
        prepare(["hf://owner/broken"])
    problems = caught.value.problems
    assert problems[0].startswith("hf://owner/broken[train]:row 2: output")
    assert problems[1].startswith("hf://owner/broken[train]:row 4: instruction")
    assert problems[2].startswith("hf://owner/broken[train]:row 5: invalid JSON") and "(data/train.jsonl:6)" in \
        problems[2]  # a line that is not JSON: the row, and the line of the file in the snapshot
    assert len(problems) == 3


# --- the recipe --------------------------------------------------------------------------------------


def test_recipe_mapping_form_is_kept_as_one_string(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, (
        "data:\n  train:\n    - hf: owner/qa\n      split: train\n      limit: 4\n"
        "      columns: {question: instruction, answer: output}\n    - local.jsonl\n"
        "  eval: hf://owner/qa?split=test\n  format:\n    hf://owner/qa?split=test: alpaca\n")))
    assert recipe.data.train == ["hf://owner/qa?limit=4&columns=question:instruction,answer:output",
                                 str(tmp_path / "local.jsonl")]
    assert recipe.data.eval == ["hf://owner/qa?split=test"]
    assert recipe.data.format == {"hf://owner/qa?split=test": "alpaca"}
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert load_recipe(str(again)).data.train == recipe.data.train  # the resolved recipe.yaml loads again


@pytest.mark.parametrize("entry, message", [
    ("    - hf: owner/qa\n      splt: train\n", "splt: unknown option"),
    ("    - hf: owner/qa\n      limit: 0\n", "limit: Input should be greater than 0"),
    ("    - hf: owner/qa\n      columns: {question: prompt_text}\n", "'prompt_text' is not a field quicktune reads"),
    ("    - hf: not-a-repo-id\n", "not a Hub dataset id"),
    ("    - hf://owner/qa?seed=3\n", "seed picks the rows of sample"),
    ("    - hf://owner/qa?limt=3\n", "unknown option 'limt'"),
    ("    - split: train\n", "needs hf: OWNER/NAME"),
])
def test_bad_hub_entries_are_refused_at_their_line(tmp_path, entry, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(tmp_path, f"data:\n  train:\n{entry}"))
    assert any("hub.yaml:6: data.train: " in p and message in p for p in caught.value.problems), caught.value


def test_set_names_a_hub_dataset_and_it_is_not_taken_for_a_file(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, "data:\n  train: local.jsonl\n"),
                         ["data.train=hf://yahma/alpaca-cleaned?limit=100"])
    assert recipe.data.train == ["hf://yahma/alpaca-cleaned?limit=100"]
    assert parse_hub_ref(recipe.data.train[0]).limit == 100


def test_add_data_takes_a_hub_dataset(tmp_path):
    path = recipe_file(tmp_path, "data:\n  train: local.jsonl\n")
    overrides = with_added_train_files(path, [], ["hf://owner/qa?limit=3&split=extra"])
    assert load_recipe(path, overrides).data.train == [str(tmp_path / "local.jsonl"), "hf://owner/qa?split=extra&limit=3"]
    with pytest.raises(RecipeError, match=r"--add-data hf://owner/qa\?limt=3: unknown option 'limt'"):
        with_added_train_files(path, [], ["hf://owner/qa?limt=3"])


# --- end to end: data check, plan, the manifest ------------------------------------------------------


def test_data_check_on_a_hub_recipe(hub_cache, tmp_path):
    hub_cache.add("owner/qa", {"data/train.parquet": parquet_bytes(QA)})
    hub_cache.add("owner/chats", {"test.jsonl": jsonl_bytes([chat("Rhyme with fog?", "log")])})
    path = recipe_file(tmp_path, "data:\n  train:\n    - hf: owner/qa\n      limit: 5\n"
                                 "      columns: {question: instruction, answer: output}\n"
                                 "  eval: hf://owner/chats?split=test\n")
    report = check_data([], recipe_ref=path)
    assert report.train_rows == 5 and report.eval_rows == 1
    assert report.files[0].path == "hf://owner/qa?limit=5&columns=question:instruction,answer:output"
    assert report.example.origin == "hf://owner/qa[train]:row 0"


def test_data_check_command_reports_a_bad_hub_row_with_exit_2(hub_cache, tmp_path):
    hub_cache.add("owner/broken", {"train.jsonl": jsonl_bytes([ALPACA[0], {"instruction": "Say hi."}])})
    result = subprocess.run([sys.executable, "-m", "quicktune", "data", "check", "hf://owner/broken"],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 2, result.stderr
    assert "hf://owner/broken[train]:row 1: output" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_data_check_and_plan_on_a_hub_dataset_import_no_torch(hub_cache, tmp_path):
    hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA)})
    path = recipe_file(tmp_path, "data:\n  train: hf://owner/alpaca-mini\n")
    code = ("from quicktune.cli import main\nfor args in (['data', 'check', 'hf://owner/alpaca-mini'], "
            f"['plan', '{path}']):\n    try:\n        main(args)\n    except SystemExit as e:\n"
            "        assert not e.code, e.code")
    assert imported_after(code) <= {"datasets"}  # datasets finds the split's files; no torch, no transformers


def test_plan_counts_a_hub_datasets_tokens(hub_cache, tmp_path):
    hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA)})
    path = recipe_file(tmp_path, "data:\n  train: hf://owner/alpaca-mini?limit=4\n")
    result = CliRunner().invoke(main, ["plan", path])
    characters = sum(len(json.dumps(row)) + 1 for row in ALPACA[:4])
    assert f"~{characters // 4:,} tokens per epoch" in result.output, result.output
    missing = CliRunner().invoke(main, ["plan", path, "--set", "data.train=hf://owner/elsewhere"])
    assert missing.exit_code == 2 and "hf://owner/elsewhere: not in the Hugging Face cache" in missing.output


def test_plan_of_grpo_takes_the_hub_rows_as_its_prompts(hub_cache, tmp_path):
    from quicktune.data.load import data_size
    from quicktune.plan import make_plan

    hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA)})
    path = recipe_file(tmp_path, "data:\n  train: hf://owner/alpaca-mini?limit=4\n")
    recipe = load_recipe(path, ["method=grpo", "grpo.rewards=[{name: exact}]"])
    rows, tokens = data_size(recipe.data.train)
    assert rows == 4
    four, eight = (make_plan(recipe, tokens=tokens, prompts=n).epoch_seconds for n in (rows, 2 * rows))
    assert four > 0 and eight == pytest.approx(2 * four)


def test_manifest_records_the_commit_the_rows_came_from(hub_cache):
    from quicktune.train.trainer import data_manifest

    commit = hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA)}, commit="c0ffee" * 6 + "0123")
    prepared = prepare(["hf://owner/alpaca-mini?limit=6"])
    (item,) = data_manifest(prepared)["files"]
    assert item["revision"] == commit and item["dataset"] == "owner/alpaca-mini" and item["rows"] == 6
    assert len(item["sha256"]) == 64
    hub_cache.add("owner/alpaca-mini", {"train.jsonl": jsonl_bytes(ALPACA[::-1])}, commit="f" * 40)
    moved = data_manifest(prepare(["hf://owner/alpaca-mini?limit=6"]))["files"][0]
    assert moved["revision"] == "f" * 40 and moved["sha256"] != item["sha256"]  # resume sees the data changed
    json.dumps(item)
