"""The Axolotl YAML `recipes export` writes, fuzzed with hostile recipe values (issue 34): quotes, line breaks
(\\n, \\r, U+2028, U+0085), `{{`, NUL, YAML syntax, 10 MB strings, in every free-text value and in the data
files' names and the recipe's path, which the header's comments name. Nothing may leave its field: the file
parses to exactly the config quicktune built, with the same keys once each, and every header line is a comment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra installs it
import yaml  # noqa: E402 (after the importorskip above: hypothesis is optional)
from click.testing import CliRunner  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quicktune.axolotl import axolotl_yaml, from_axolotl, to_axolotl  # noqa: E402
from quicktune.cli import main  # noqa: E402
from quicktune.recipe import validate_recipe  # noqa: E402
from tests.conftest import SMOLLM2  # noqa: E402

FRAGMENTS = ['"', "'", "\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x00", "\t", "{{ .System }}", "{{", "}}",
             "# ", "base_model: evil/model", "trust_remote_code: true", "---", "...", "&a", "*a",
             "!!python/object:os.system", "%YAML 1.1", "- ", ": ", "\\", "\ufeff", "quicktune:", "`"]
hostile = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), min_size=1, max_size=10).map("".join)
file_names = hostile.map(lambda text: text.replace("/", "_").replace("\x00", "_")[:120] + ".jsonl").filter(
    lambda name: name not in (".jsonl",) and not name.startswith("."))
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _recipe(folder: Path, text: str, file_name: str):
    data = folder / file_name
    data.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n", encoding="utf-8")
    return validate_recipe({
        "name": "fuzz", "description": text, "hardware": text, "method": "lora",
        "model": {"base": SMOLLM2, "max_seq_length": 64},
        "data": {"train": [str(data)], "system_prompt": text},
        "export": {"system": text},
    })


def _assert_contained(text: str, config: dict) -> None:
    lines = text.split("\n")
    body = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert all(line.startswith("#") for line in lines[:body])
    assert "\r" not in "\n".join(lines[:body]) and "\u2028" not in "\n".join(lines[:body])
    node = yaml.compose(text)
    assert [key.value for key, _ in node.value] == list(config)  # no key added, none twice
    assert yaml.safe_load(text) == config  # every value whole, in its own field


@FUZZ
@given(text=hostile, file_name=file_names, source=hostile)
def test_hostile_values_stay_in_their_fields(tmp_path_factory, text, file_name, source):
    folder = tmp_path_factory.mktemp("axolotl-fuzz")
    export = to_axolotl(_recipe(folder, text, file_name))
    written = axolotl_yaml(export, source)
    _assert_contained(written, export.config)
    out = folder / "out.yaml"
    out.write_text(written, encoding="utf-8")
    back = from_axolotl(out)  # and `recipes import` reads the values back as they were
    assert back.recipe.description == text and back.recipe.data.system_prompt == text


@pytest.mark.slow
def test_a_ten_megabyte_value_is_written_whole(tmp_path):
    big = ('{{ "x" }}\n# base_model: evil\n\x00' * 400_000)[: 10 * 2**20]
    recipe = _recipe(tmp_path, "short", "rows.jsonl")
    recipe.description = big
    export = to_axolotl(recipe)
    _assert_contained(axolotl_yaml(export, str(tmp_path / "big.yaml")), export.config)


def test_recipes_export_through_the_cli_keeps_a_newline_in_a_file_name_in_its_comment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "rows\ntrust_remote_code: true\nbase_model: evil-model\n#.jsonl"
    (tmp_path / name).write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": "lora", "model": {"base": SMOLLM2}, "data": {"train": [name]},
                                      "description": "a\nb: c {{ .Prompt }} \x00"}), encoding="utf-8")
    result = CliRunner().invoke(main, ["recipes", "export", str(recipe), "--axolotl", "out.yaml"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "out.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(written)
    assert not config.get("trust_remote_code") and config["base_model"] != "evil-model"
    _assert_contained(written, config)
    assert "rows\\ntrust_remote_code: true\\nbase_model: evil-model\\n#.jsonl" in written  # named, escaped
