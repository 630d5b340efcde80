"""Recipes to and from Axolotl configs: round trip, Axolotl's own validation, unmapped keys with lines."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from quicktune.axolotl import from_axolotl
from quicktune.cli import main
from quicktune.recipe import PREFERENCE_METHODS, builtin_recipes, load_recipe
from tests.conftest import SMOLLM2, chat, write_jsonl
from tests.test_cli import imported_after

# Made by .ci/axolotl-venv: Axolotl installed without its dependencies beside the project's stack.
AXOLOTL_PYTHON = Path(os.environ.get("QUICKTUNE_AXOLOTL_PYTHON", "/tmp/axo-venv/bin/python"))
SCHEMA_CHECK = Path(__file__).parent / "axolotl_schema_check.py"


def _export(tmp_path: Path, ref: str, *sets: str) -> Path:
    out = tmp_path / f"{Path(ref).stem}-{len(list(tmp_path.glob('*.axolotl.yaml')))}.axolotl.yaml"
    result = CliRunner().invoke(main, ["recipes", "export", ref, "--axolotl", str(out), *(f"--set={s}" for s in sets)])
    assert result.exit_code == 0, result.output
    return out


def _import(tmp_path: Path, config: Path, *extra: str):
    out = tmp_path / f"{config.stem}.recipe.yaml"
    result = CliRunner().invoke(main, ["recipes", "import", str(config), "-o", str(out), *extra])
    return result, out


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_round_trip_gives_the_same_resolved_recipe(name, tmp_path):
    if load_recipe(name).method in PREFERENCE_METHODS:  # not mapped yet: refused, saying so
        refused = CliRunner().invoke(main, ["recipes", "export", name, "--axolotl", str(tmp_path / "x.yaml")])
        assert refused.exit_code == 2 and "preference training (Axolotl's rl: dpo / orpo) is not mapped yet" in \
            refused.output
        return
    exported = _export(tmp_path, name)
    result, written = _import(tmp_path, exported)
    assert result.exit_code == 0, result.output
    # the export is the whole recipe, resolved: extends (smollm2-demo-grpo's) is not written
    back, original = (load_recipe(ref).model_dump(mode="json", exclude={"extends"}) for ref in (str(written), name))
    assert back == original
    # the only Axolotl key quicktune has no use for is where Axolotl writes its output
    line = next(i for i, text in enumerate(exported.read_text().splitlines(), 1) if text.startswith("output_dir:"))
    assert from_axolotl(exported).unmapped == [
        f"{exported}:{line}: output_dir: quicktune writes each run to runs/<recipe>/vN"]


def test_export_names_what_axolotl_cannot_say(tmp_path):
    config = yaml.safe_load(_export(tmp_path, "smollm2-demo").read_text())
    assert config["datasets"] == [{
        "path": str(load_recipe("smollm2-demo").data.train[0]), "ds_type": "json", "type": "chat_template",
        "field_messages": "messages", "message_property_mappings": {"role": "role", "content": "content"},
        "roles_to_train": ["assistant"], "train_on_eos": "turn"}]
    assert config["test_datasets"][0]["path"].endswith("demo/eval.jsonl") and config["val_set_size"] == 0.0
    assert (config["adapter"], config["micro_batch_size"], config["gradient_accumulation_steps"]) == ("lora", 4, 1)
    assert config["chat_template"] == "tokenizer_default" and config["bf16"] is False and config["fp16"] is False
    # a GGUF base is trained from the folder quicktune converts it into
    assert config["quicktune"]["as_written"][0]["key"] == "model.base"
    assert Path(config["base_model"]).parent.name == "models"
    family = yaml.safe_load(_export(tmp_path, "smollm2-demo", "model.chat_template=chatml").read_text())
    assert family["chat_template"] == "jinja" and "<|im_start|>" in family["chat_template_jinja"]


def test_per_process_batch_for_several_gpus_comes_back(tmp_path):
    exported = _export(tmp_path, "smollm2-demo", "training.gpus=2")
    config = yaml.safe_load(exported.read_text())
    assert (config["micro_batch_size"], config["gradient_accumulation_steps"]) == (2, 1)  # 4 rows per step over 2
    result, written = _import(tmp_path, exported)
    assert result.exit_code == 0, result.output
    back = load_recipe(str(written)).training
    assert (back.batch_size, back.grad_accumulation, back.gpus) == (4, 1, 2)


def test_last_layers_go_to_axolotl_as_layer_indices_and_come_back(tmp_path):
    exported = _export(tmp_path, "smollm2-demo", "lora.last_layers=4")
    config = yaml.safe_load(exported.read_text())
    assert config["peft_layers_to_transform"] == [26, 27, 28, 29]  # SmolLM2-135M has 30 layers
    result, written = _import(tmp_path, exported)
    assert result.exit_code == 0, result.output
    assert load_recipe(str(written)).lora.last_layers == 4
    # layers other than the model's last ones are not what lora.last_layers can say: named, not imported
    config["peft_layers_to_transform"] = [0, 1]
    (other := tmp_path / "first.yml").write_text(yaml.safe_dump(config))
    result, written = _import(tmp_path, other)
    assert result.exit_code == 0, result.output
    assert load_recipe(str(written)).lora.last_layers is None
    assert any("peft_layers_to_transform: quicktune puts LoRA on the last N of the base's 30 layers" in line
               for line in from_axolotl(other).unmapped)


def test_a_changed_axolotl_value_wins_over_what_quicktune_kept(tmp_path):
    exported = _export(tmp_path, "smollm2-demo", "training.optimizer=auto")
    text = exported.read_text()
    assert "\noptimizer: adamw_8bit\n" in text
    exported.write_text(text.replace("\noptimizer: adamw_8bit\n", "\noptimizer: adamw_torch\n"))  # the top-level key
    imported = from_axolotl(exported)
    assert imported.recipe.training.optimizer == "adamw_torch"
    assert any("training.optimizer: kept as optimizer now says" in line for line in imported.unmapped)


AXOLOTL_CONFIG = """\
base_model: NousResearch/Meta-Llama-3.1-8B
load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: {train}
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
    shards: 4
  - path: tatsu-lab/alpaca
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.05
output_dir: ./outputs/qlora-out

adapter: qlora
sequence_len: 4096
sample_packing: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true

wandb_project: my-project
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
flash_attention: true
warmup_steps: 10
evals_per_epoch: 4
special_tokens:
  pad_token: "<|end_of_text|>"
"""


def test_import_lists_every_unmapped_key_with_its_line(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}])
    config = tmp_path / "qlora.yml"
    config.write_text(AXOLOTL_CONFIG.format(train=train))
    result, written = _import(tmp_path, config)
    assert result.exit_code == 0, result.output
    recipe = load_recipe(str(written))
    assert (recipe.method, recipe.model.base, recipe.model.max_seq_length) == (
        "qlora", "NousResearch/Meta-Llama-3.1-8B", 4096)
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (32, 16, 0.05)
    assert recipe.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert recipe.data.train == [str(train), "hf://tatsu-lab/alpaca"] and recipe.data.eval_fraction == 0.05
    assert recipe.data.format == "auto"
    assert (recipe.training.batch_size, recipe.training.grad_accumulation, recipe.training.epochs) == (2, 4, 4.0)
    assert (recipe.training.lr_scheduler, recipe.training.packing, recipe.model.dtype) == ("cosine", True, "auto")
    assert recipe.name == "qlora"

    lines = config.read_text().splitlines()

    def at(prefix: str) -> str:
        return f"{config}:{next(i for i, text in enumerate(lines, 1) if text.lstrip().startswith(prefix))}"

    unmapped = from_axolotl(config).unmapped
    expected = {
        at("strict:"): "strict: no quicktune equivalent",
        at("shards:"): "datasets[0].shards: no quicktune equivalent",
        at("dataset_prepared_path:"): "dataset_prepared_path: no quicktune equivalent",
        at("output_dir:"): "output_dir: quicktune writes each run",
        at("wandb_project:"): "wandb_project: no quicktune equivalent",
        at("optimizer:"): "optimizer: 'paged_adamw_32bit': quicktune trains with",
        at("tf32:"): "tf32: no quicktune equivalent",
        at("flash_attention:"): "flash_attention: no quicktune equivalent",
        at("warmup_steps:"): "warmup_steps: quicktune takes warmup as a fraction",
        at("evals_per_epoch:"): "evals_per_epoch: no quicktune equivalent",
        at("special_tokens:"): "special_tokens: no quicktune equivalent",
    }
    assert len(unmapped) == len(expected), "\n".join(unmapped)
    for where, text in expected.items():
        assert any(line.startswith(f"{where}: {text}") for line in unmapped), (where, text, unmapped)
    # the written recipe says what was left behind, and so does the command
    assert all(f"# not imported: {line}" in written.read_text() for line in unmapped)
    assert f"{at('wandb_project:')}: wandb_project" in result.output
    assert "load_in_8bit" not in " ".join(unmapped)  # false: asks for nothing


def test_import_errors_name_the_axolotl_line_and_write_nothing(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat("hi", "hello")])
    config = tmp_path / "bad.yml"
    config.write_text(f"base_model: {SMOLLM2}\nadapter: lora\nlora_r: sixteen\nlearning_rate: 0.001\n"
                      f"datasets:\n  - path: {train}\n    type: chat_template\n")
    result, written = _import(tmp_path, config)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{config}:3: lora.r: Input should be a valid integer" in result.output
    assert not written.exists()
    config.write_text(config.read_text().replace("sixteen", "16"))
    assert _import(tmp_path, config)[0].exit_code == 0
    again, _ = _import(tmp_path, config)  # never over a file that is there
    assert again.exit_code == 2 and "already exists" in again.output


def test_export_refuses_to_overwrite_and_what_it_cannot_map(tmp_path):
    out = _export(tmp_path, "smollm2-demo")
    before = out.read_text()
    result = CliRunner().invoke(main, ["recipes", "export", "smollm2-demo", "--axolotl", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and out.read_text() == before
    refused = CliRunner().invoke(main, ["recipes", "export", "smollm2-demo", "--set", "method=dpo",
                                        "--axolotl", str(tmp_path / "dpo.yaml")])
    assert refused.exit_code == 2 and "method dpo: the Axolotl export maps supervised recipes" in refused.output
    assert not (tmp_path / "dpo.yaml").exists()


def test_recipes_export_and_import_import_nothing_heavy(tmp_path):
    out = tmp_path / "x.yaml"
    code = (f"from quicktune.cli import main\nfor args in (['recipes', 'export', 'smollm2-demo', '--axolotl', '{out}'],"
            f" ['recipes', 'import', '{out}', '-o', '{tmp_path / 'back.yaml'}']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code")
    assert imported_after(code) == set()


@pytest.mark.slow
def test_exports_pass_axolotls_own_validation(tmp_path):
    """Every built-in recipe's export, through Axolotl's validate_config (as `axolotl train` runs it)."""
    if not AXOLOTL_PYTHON.is_file():
        pytest.skip(f"no Axolotl virtualenv at {AXOLOTL_PYTHON} (make it with .ci/axolotl-venv)")
    files = [_export(tmp_path, name) for name in sorted(builtin_recipes())
             if load_recipe(name).method not in PREFERENCE_METHODS]
    files.append(_export(tmp_path, "smollm2-demo", "training.gpus=2", "model.chat_template=chatml",
                         "lora.last_layers=4"))
    # torch, transformers, yaml … come from this interpreter's environment, whichever checkout made the venv;
    # purelib and platlib are the same folder on most systems
    site = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    env = {**os.environ, "QUICKTUNE_STACK_SITE": os.pathsep.join(site)}
    done = subprocess.run([str(AXOLOTL_PYTHON), str(SCHEMA_CHECK), *map(str, files)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(files)
    for result in results:
        assert result["ok"], result
        assert result["unknown_keys"] == [], result  # Axolotl ignores unknown keys: check them here
        assert result["changed"] == {}, result  # every value written is the value Axolotl trains with
        assert result["kept_own_key"] is False  # the quicktune: block is dropped, as the header says


AXOLOTL_KEYS = ["base_model", "adapter", "load_in_4bit", "load_in_8bit", "sequence_len", "lora_r", "lora_alpha",
                "lora_dropout", "lora_target_modules", "lora_target_linear", "datasets", "test_datasets",
                "val_set_size", "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "optimizer",
                "micro_batch_size", "gradient_accumulation_steps", "warmup_ratio", "warmup_steps", "eval_steps",
                "save_steps", "seed", "bf16", "fp16", "chat_template", "chat_template_jinja", "sample_packing",
                "gradient_checkpointing", "train_on_inputs", "dataset_exact_deduplication", "quicktune", "output_dir",
                "wandb_project", "peft_layers_to_transform"]


def test_any_axolotl_mapping_imports_or_names_its_lines(tmp_path_factory):
    """Whatever an Axolotl file holds, import writes a recipe or says what is wrong where: no traceback."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from quicktune.errors import QuicktuneError

    scalars = (st.none() | st.booleans() | st.integers(-5, 10**5) | st.floats(allow_nan=False) | st.text(max_size=8)
               | st.sampled_from(["lora", "qlora", "chat_template", "alpaca", "cosine", "adamw_torch", "jinja"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(["path", "type", "key", "value", "recipe", "as_written",
                                                             "field_messages", "roles_to_train"]) | st.text(max_size=4),
                                            inner, max_size=3), max_leaves=12)

    @hypothesis.settings(max_examples=80, deadline=None, database=None)
    @hypothesis.given(document=st.dictionaries(st.sampled_from(AXOLOTL_KEYS), values, max_size=8))
    def check(document):
        path = tmp_path_factory.mktemp("axolotl-fuzz") / "cfg.yml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        try:
            from_axolotl(path)
        except QuicktuneError as error:
            assert str(path) in str(error), str(error)

    check()


def test_every_recipe_key_has_a_decision():
    """A key added to the recipe schema must be mapped, kept or refused by the Axolotl export."""
    from quicktune.axolotl import RECIPE_KEYS
    from quicktune.recipe import Recipe

    keys = set()
    for name, field in Recipe.model_fields.items():
        section = getattr(field.annotation, "model_fields", None)
        if name in ("export", "eval", "preference"):
            keys.add(name)
        else:
            keys.update(f"{name}.{sub}" for sub in section) if section else keys.add(name)
    assert keys == set(RECIPE_KEYS)
