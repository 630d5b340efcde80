"""Axolotl configs that name Hugging Face Hub datasets: imported as hf:// entries (or refused, saying why), and
hf:// entries exported as Axolotl's Hub datasets. Axolotl's own example configs are the test data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from quicktune.axolotl import from_axolotl, to_axolotl
from quicktune.cli import main
from quicktune.errors import RecipeError
from quicktune.recipe import load_recipe
from tests.conftest import SMOLLM2, chat
from tests.data.hub_cache import jsonl_bytes, offline_hub_cache

EXAMPLES = Path(__file__).parent / "fixtures" / "axolotl_examples"
# Each example: the data.train entries it imports as, the method.
IMPORTED = {
    "llama-3-qlora.yml": (["hf://aaditya/alpaca_subset_1"], "qlora"),
    "llama-3-lora-8b.yml": (["hf://mhenrichsen/alpaca_2k_test"], "lora"),
    "llama-3-instruct-lora-8b.yml": (["hf://fozziethebeat/alpaca_messages_2k_test"], "lora"),
    "llama-3-fft-8b.yaml": (["hf://tatsu-lab/alpaca"], "full"),
    "gemma2-qlora.yml": (["hf://cgato/SlimOrcaDedupCleaned"], "qlora"),
    "mistral-config.yml": (["hf://mhenrichsen/alpaca_2k_test"], "full"),
}
REFUSED = {
    "llama-3-instruct-dpo-lora-8b.yml": "datasets[0].type: rl dpo: Axolotl reads these rows with its "
                                        "'chat_template.default' preference strategy",
    "llama-3-qlora-1b-kto.yaml": "datasets[0].type: rl kto: KTO rows (one answer each, labelled desirable or not) "
                                 "have no quicktune equivalent",
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub_cache(tmp_path, monkeypatch)


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.y*ml")) == sorted([*IMPORTED, *REFUSED])


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_axolotl_examples_import_their_hub_datasets(name, tmp_path):
    train, method = IMPORTED[name]
    out = tmp_path / "imported.yaml"
    result = CliRunner().invoke(main, ["recipes", "import", str(EXAMPLES / name), "-o", str(out)])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(str(out))  # the file written loads as a recipe
    assert recipe.data.train == train and recipe.method == method
    assert recipe.data.format == "auto"  # found from the rows, whose columns Axolotl's type names as quicktune's
    # what is not imported of a dataset entry is named at its line (gemma2's drop_system_message)
    lines = [line for line in from_axolotl(EXAMPLES / name).unmapped if ": datasets" in line]
    assert lines == ([f"{EXAMPLES / name}:18: datasets[0].drop_system_message: no quicktune equivalent"]
                     if name == "gemma2-qlora.yml" else [])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_preference_examples_are_refused_with_one_message_naming_why(name, tmp_path):
    out = tmp_path / "imported.yaml"
    result = CliRunner().invoke(main, ["recipes", "import", str(EXAMPLES / name), "-o", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "none of its datasets can be imported" in result.output
    assert REFUSED[name] in " ".join(result.output.split())
    assert "List should have at least 1 item" not in result.output and not out.exists()


def _config(tmp_path: Path, datasets: str) -> Path:
    path = tmp_path / "axolotl.yml"
    path.write_text(f"base_model: {SMOLLM2}\nadapter: lora\nlearning_rate: 0.001\ndatasets:\n{datasets}")
    return path


def test_hub_entry_fields_become_the_entry_options(tmp_path):
    config = _config(tmp_path, (
        "  - path: owner/chats\n    type: chat_template\n    field_messages: dialogue\n    split: validation\n"
        "    name: en\n    revision: 0123abc\n"
        "  - path: owner/stories\n    type: completion\n    field: story\n"
        "  - path: owner/sg\n    type: chat_template\n    field_messages: turns\n"
        "    message_property_mappings: {role: from, content: value}\n"
        "  - path: owner/odd\n    type: chat_template\n"
        "    message_property_mappings: {role: speaker, content: text}\n"))
    imported = from_axolotl(config)
    assert imported.recipe.data.train == [
        "hf://owner/chats?subset=en&split=validation&revision=0123abc&columns=dialogue:messages",
        "hf://owner/stories?columns=story:text",
        "hf://owner/sg?columns=turns:conversations",
    ]
    assert any("datasets[3].field_messages: messages under 'messages' with role 'speaker'" in line
               for line in imported.unmapped), imported.unmapped


def test_a_local_file_keeps_refusing_hub_only_fields(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    imported = from_axolotl(_config(tmp_path, "  - path: rows.jsonl\n    type: alpaca\n    name: en\n"))
    assert imported.recipe.data.train == [str(tmp_path / "rows.jsonl")]
    assert any("datasets[0].name: a local file has no subsets or revisions" in line for line in imported.unmapped)


def test_export_writes_hub_datasets_and_names_what_axolotl_cannot_say(tmp_path, hub_cache):
    hub_cache.add("owner/qa", {"train.jsonl": jsonl_bytes([{"q": "Say hi.", "a": "hi"}])})
    hub_cache.add("owner/chats", {"data/test.jsonl": jsonl_bytes([chat("Say hi.", "hi")])})
    path = tmp_path / "hub.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\ndata:\n  train:\n    - hf: owner/qa\n      limit: 50\n"
                    "      columns: {q: instruction, a: output}\n  eval: hf://owner/chats?split=test&revision=main\n")
    export = to_axolotl(load_recipe(str(path)))
    assert export.config["datasets"] == [{"path": "owner/qa", "split": "train", "type": "alpaca"}]
    assert export.config["test_datasets"][0] == {
        "path": "owner/chats", "split": "test", "revision": "main", "type": "chat_template",
        "field_messages": "messages", "message_property_mappings": {"role": "role", "content": "content"},
        "roles_to_train": ["assistant"], "train_on_eos": "turn"}
    assert any("data.train: Axolotl reads the whole split as its own columns; it has no equivalent of "
               "hf://owner/qa?limit=50&columns=q:instruction,a:output: columns q: instruction, a: output, limit 50"
               in note for note in export.no_equivalent), export.no_equivalent
    # exported and imported again: the entry comes back whole, while Axolotl's datasets say what was written
    out = tmp_path / "back.axolotl.yaml"
    assert CliRunner().invoke(main, ["recipes", "export", str(path), "--axolotl", str(out)]).exit_code == 0
    assert "&id" not in out.read_text()  # the datasets kept are a copy, not a YAML anchor a user edits both of
    assert from_axolotl(out).recipe.data.train == ["hf://owner/qa?limit=50&columns=q:instruction,a:output"]
    edited = yaml.safe_load(out.read_text())
    edited["datasets"][0]["split"] = "other"
    out.write_text(yaml.safe_dump(edited))
    assert from_axolotl(out).recipe.data.train == ["hf://owner/qa?split=other"]


def test_a_bad_hub_id_in_a_config_is_named_not_raised(tmp_path):
    with pytest.raises(RecipeError, match="none of its datasets can be imported") as caught:
        from_axolotl(_config(tmp_path, "  - path: not/a/hub/id\n    type: alpaca\n"))
    assert "datasets[0].path: not/a/hub/id is neither a local file nor a Hugging Face Hub dataset id" in \
        " ".join(caught.value.problems)
