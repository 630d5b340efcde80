from __future__ import annotations

from pathlib import Path

import pytest

from quicktune.errors import RecipeError
from quicktune.recipe import Recipe, builtin_recipe_dir, builtin_recipes, load_recipe, parse_override

MINIMAL = """\
model:
  base: some/model
data:
  train: train.jsonl
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(excinfo) -> list[str]:
    return excinfo.value.problems


def test_minimal_recipe_gets_defaults_and_absolute_paths(tmp_path):
    recipe = load_recipe(write(tmp_path / "mine.yaml", MINIMAL))
    assert recipe.name == "mine"
    assert recipe.method == "qlora" and recipe.model.load_in_4bit is True
    assert recipe.training.learning_rate == 2e-4
    assert recipe.export.quantizations == ["q4_k_m"]
    assert recipe.data.train == [str(tmp_path / "train.jsonl")]


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path / "r.yaml", MINIMAL + "training:\n  lr: 0.001\n")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"{path}:6: training.lr: unknown key")
    assert "learning_rate" in problem


def test_every_error_reported_at_once_with_its_line(tmp_path):
    text = MINIMAL + "method: sft\ntraining:\n  batch_size: two\n  epochs: -1\nexport:\n  quantizations: [q3]\n"
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    problems = problems_of(excinfo)
    assert len(problems) == 4
    joined = "\n".join(problems)
    assert f"{path}:5: method:" in joined
    assert f"{path}:7: training.batch_size:" in joined and "'two'" in joined
    assert f"{path}:8: training.epochs:" in joined
    assert f"{path}:10: export.quantizations.0:" in joined


def test_missing_required_sections(tmp_path):
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(write(tmp_path / "r.yaml", "description: nothing\n"))
    joined = "\n".join(problems_of(excinfo))
    assert "model: required key is missing" in joined and "data: required key is missing" in joined


def test_duplicate_key_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="duplicate keys") as excinfo:
        load_recipe(write(tmp_path / "d.yaml", MINIMAL + "method: lora\nmethod: qlora\n"))
    assert ":6: method: key appears twice" in problems_of(excinfo)[0]
    with pytest.raises(RecipeError, match=r"b\.yaml:\d+: not valid YAML"):
        load_recipe(write(tmp_path / "b.yaml", "model:\n  base: [unclosed\n"))


def test_qlora_needs_4bit(tmp_path):
    with pytest.raises(RecipeError, match="load_in_4bit"):
        load_recipe(write(tmp_path / "r.yaml",
                          MINIMAL.replace("  base: some/model", "  base: x/y\n  load_in_4bit: false")))
    recipe = load_recipe(write(tmp_path / "l.yaml", MINIMAL + "method: lora\n"))
    assert recipe.model.load_in_4bit is False


def test_eval_files_and_fraction_exclusive(tmp_path):
    with pytest.raises(RecipeError, match="not both"):
        load_recipe(write(tmp_path / "r.yaml", MINIMAL + "  eval: e.jsonl\n  eval_fraction: 0.1\n"))


def test_precedence_defaults_base_recipe_override(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "parent.yaml", MINIMAL + "training:\n  learning_rate: 0.001\n  batch_size: 4\n  seed: 1\n")
    child = write(
        tmp_path / "sub" / "child.yaml",
        "extends: ../parent.yaml\ntraining:\n  batch_size: 8\n  seed: 2\n",
    )
    recipe = load_recipe(child, ["training.seed=3", "lora.r=64"])
    assert recipe.name == "child"
    assert recipe.training.warmup_ratio == 0.03  # default
    assert recipe.training.learning_rate == 0.001  # from the base recipe
    assert recipe.training.batch_size == 8  # the recipe beats its base
    assert recipe.training.seed == 3  # --set beats the recipe
    assert recipe.lora.r == 64
    # data paths stay relative to the file that named them
    assert recipe.data.train == [str(tmp_path / "train.jsonl")]


def test_extends_builtin_by_name(tmp_path):
    child = write(tmp_path / "mine.yaml", "extends: smollm2-demo\ntraining:\n  max_steps: 5\n")
    recipe = load_recipe(child)
    assert recipe.name == "mine" and recipe.training.max_steps == 5
    assert recipe.model.base == load_recipe("smollm2-demo").model.base
    assert Path(recipe.data.train[0]).is_file()


def test_extends_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError, match="loop"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_override_errors_point_at_the_flag(tmp_path):
    path = write(tmp_path / "r.yaml", MINIMAL)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path, ["training.batchsize=4"])
    assert problems_of(excinfo)[0].startswith("--set training.batchsize=4: training.batchsize: unknown key")
    with pytest.raises(RecipeError, match=r"KEY.PATH=VALUE"):
        load_recipe(path, ["training.batch_size"])
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe(path, ["method.x=1"])


def test_override_values_are_yaml():
    assert parse_override("training.max_steps=30") == (("training", "max_steps"), 30)
    assert parse_override("export.quantizations=[q8_0, f16]") == (("export", "quantizations"), ["q8_0", "f16"])
    assert parse_override("data.system_prompt=Be brief: answer in JSON") == (
        ("data", "system_prompt"),
        "Be brief: answer in JSON",
    )


def test_unknown_recipe_name_suggests():
    with pytest.raises(RecipeError, match="smollm2-demo"):
        load_recipe("smollm2-dem")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe("smollm2-demo")
    again = load_recipe(write(tmp_path / "resolved.yaml", recipe.to_yaml()))
    assert again == recipe


# Every shipped recipe validates: found recursively, so a recipe in a subfolder is not missed.
ALL_RECIPES = sorted(builtin_recipe_dir().rglob("*.yaml"))


def test_recipe_library_is_complete():
    names = set(builtin_recipes())
    assert "smollm2-demo" in names
    assert len(names) >= 6
    assert len(ALL_RECIPES) == len(names)


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_every_builtin_recipe_validates(path):
    recipe = load_recipe(str(path))
    assert isinstance(recipe, Recipe)
    assert recipe.description and recipe.hardware
    for data_file in recipe.data.train + recipe.data.eval:
        assert Path(data_file).is_file(), data_file
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("#"), "each recipe starts with a header comment"


def test_errors_are_sorted_by_line(tmp_path):
    # pydantic reports in field order (method before training); the user reads the file top down
    text = "training:\n  batch_size: two\n" + MINIMAL + "export:\n  quantizations: [q3]\nmethod: sft\n"
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path, ["lora.r=zero"])
    problems = problems_of(excinfo)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:8", f"{path}:9", "--set lora.r=zero"]


def test_format_is_auto_a_name_or_a_mapping_of_files(tmp_path):
    (tmp_path / "data").mkdir()
    text = "model:\n  base: some/model\ndata:\n  train: data/shop.csv\n  eval: data/held.jsonl\n"
    assert load_recipe(write(tmp_path / "a.yaml", text)).data.format == "auto"
    assert load_recipe(write(tmp_path / "n.yaml", text + "  format: alpaca\n")).data.format == "alpaca"
    mapped = load_recipe(write(tmp_path / "m.yaml", text + "  format:\n    data/shop.csv: alpaca\n"))
    assert mapped.data.format == {str(tmp_path / "data" / "shop.csv"): "alpaca"}  # relative to the recipe
    assert load_recipe(write(tmp_path / "again.yaml", mapped.to_yaml())) == mapped  # the resolved recipe round-trips
    # --set: relative to the working directory, like data.train
    overridden = load_recipe(str(tmp_path / "a.yaml"), [f"data.format={{{tmp_path}/data/held.jsonl: sharegpt}}"])
    assert overridden.data.format == {str(tmp_path / "data" / "held.jsonl"): "sharegpt"}


def test_bad_format_settings_name_their_line(tmp_path):
    text = MINIMAL.replace("train.jsonl", "shop.csv") + "  format:\n    other.csv: alpaca\n    shop.csv: alpacca\n"
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"{path}:5: data.format: {tmp_path}/other.csv is not one of data.train or data.eval")
    expected = "unknown format 'alpacca'; expected one of auto, alpaca, sharegpt, messages, text"
    assert f"{tmp_path}/shop.csv: {expected}" in problem
    with pytest.raises(RecipeError, match=r":5: data.format: unknown format 'chatml'; expected one of auto, alpaca"):
        load_recipe(write(tmp_path / "n.yaml", MINIMAL + "  format: chatml\n"))


def test_a_child_recipes_format_mapping_replaces_its_parents(tmp_path):
    write(tmp_path / "parent.yaml", MINIMAL + "  format:\n    train.jsonl: messages\n")
    text = "extends: parent.yaml\ndata:\n  train: mine.csv\n  format:\n    mine.csv: alpaca\n"
    child = write(tmp_path / "child.yaml", text)
    assert load_recipe(child).data.format == {str(tmp_path / "mine.csv"): "alpaca"}
    # changing the files without the mapping: the parent's entry names a file no longer used
    with pytest.raises(RecipeError, match=r"train.jsonl is not one of data.train or data.eval"):
        load_recipe(str(tmp_path / "parent.yaml"), ["data.train=other.jsonl"])


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_builtin_recipes_pin_nothing_a_users_data_must_undo(path):
    """A recipe that extends a built-in one with other data inherits no format and no system prompt."""
    recipe = load_recipe(str(path))
    assert recipe.data.format == "auto"
    assert recipe.data.system_prompt is None and recipe.export.system is None


# --- every key does what it says, or is refused with the reason (issue 17) ---------------------


def test_a_missing_data_file_names_the_recipe_line(tmp_path):
    from quicktune.recipe import check_data_files

    path = write(tmp_path / "recipe.yaml",
                 "model:\n  base: some/model\ndata:\n  eval: held.jsonl\n  train: /nonexistent/path/train.jsonl\n")
    (tmp_path / "held.jsonl").write_text("{}\n")
    recipe = load_recipe(path)  # loading is fine: an exported run's recipe loads without its data
    with pytest.raises(RecipeError) as excinfo:
        check_data_files(recipe)
    assert str(excinfo.value).splitlines()[0] == f"{path}:5: data.train: file not found: /nonexistent/path/train.jsonl"
    recipe = load_recipe(path, ["data.train=gone.jsonl"])
    with pytest.raises(RecipeError, match=r"^--set data.train=gone.jsonl: data.train: file not found: .*gone.jsonl"):
        check_data_files(recipe)


def test_extends_an_unknown_recipe_names_file_and_line(tmp_path):
    path = write(tmp_path / "child.yaml", "name: child\nextends: smollm2-dem\n")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    assert str(excinfo.value.message) == f"{path}:2: extends: no recipe named 'smollm2-dem' and no such file"
    assert "smollm2-demo" in excinfo.value.hint


@pytest.mark.parametrize(
    ("extra", "line", "key", "reason"),
    [
        ("model:\n  base: some/model\n  trust_remote_code: true\n", 3, "model.trust_remote_code",
         "could be trained but not exported"),
        ("model:\n  base: ./local-model\n  revision: v1.0\n", 3, "model.revision", "which has no revisions"),
        ("model:\n  base: some/model\ntraining:\n  early_stopping_patience: 2\n", 4,
         "training.early_stopping_patience", "the recipe has no eval data"),
        ("method: full\nmodel:\n  base: some/model\nlora:\n  r: 8\n", 5, "lora.r", "LoRA settings do nothing"),
    ],
)
def test_a_key_quicktune_cannot_honour_is_refused_with_its_line(tmp_path, extra, line, key, reason):
    path = write(tmp_path / "r.yaml", extra + "data:\n  train: train.jsonl\n")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"{path}:{line}: {key}: ") and reason in problem


def test_honoured_settings_of_those_keys_load(tmp_path):
    path = write(tmp_path / "r.yaml", "method: full\nmodel:\n  base: some/model\n  revision: 0123abc\n"
                                      "data:\n  train: t.jsonl\n  eval_fraction: 0.1\n"
                                      "training:\n  early_stopping_patience: 2\n")
    recipe = load_recipe(path)
    assert recipe.model.revision == "0123abc" and recipe.training.early_stopping_patience == 2
    # a full run's resolved recipe (what export reads back) has no lora section, and loads again
    again = write(tmp_path / "resolved.yaml", recipe.to_yaml())
    assert "lora" not in recipe.to_yaml() and load_recipe(again).to_yaml() == recipe.to_yaml()


def test_plan_assumes_the_optimizer_training_uses():
    from quicktune.plan import make_plan, optimizer_for

    assert optimizer_for("auto", "cuda") == "adamw_8bit" and optimizer_for("auto", "cpu") == "adamw_torch"
    assert optimizer_for("paged_adamw_8bit", "cpu") == "paged_adamw_8bit"
    lora = load_recipe("smollm2-demo", ["training.optimizer=auto"])  # method lora, optimizer auto
    assert make_plan(lora).settings.optimizer == "adamw_torch"  # the CPU recipe planned for the CPU
    assert make_plan(lora, gpu="rtx 4090").settings.optimizer == "adamw_8bit"  # on CUDA: 8-bit Adam, as trained


def test_last_layers_is_left_out_of_the_resolved_recipe_while_unset(tmp_path):
    # the sha256 that resume matches on stays what it was for a recipe with an adapter on every layer
    assert "last_layers" not in load_recipe("smollm2-demo").to_yaml()
    again = tmp_path / "again.yaml"
    again.write_text(load_recipe("smollm2-demo", ["lora.last_layers=15"]).to_yaml())
    assert load_recipe(str(again)).lora.last_layers == 15
    with pytest.raises(RecipeError):
        load_recipe("smollm2-demo", ["lora.last_layers=0"])
