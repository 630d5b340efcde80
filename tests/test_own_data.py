"""Your own data on the first try (issue 18): each file in its own format, and one system
prompt from `data check` through training to the Modelfile and `chat`. Driven through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from tests.conftest import SMOLLM2, write_jsonl
from tests.test_cli import run_cli

GOODS = ["tea", "jam", "salt", "figs", "rice", "oats", "kale", "nuts", "eggs", "milk", "soap", "wine"]
SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SHOP_PROMPT = "You are the corner shop's assistant. Answer in one short sentence."


def sharegpt(user: str, answer: str, system: str | None = None) -> dict:
    row = {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]}
    return {**row, "system": system} if system else row


@pytest.fixture
def shop(tmp_path) -> Path:
    """A user's folder: ShareGPT train and eval files, and the same train rows as Alpaca CSV."""
    train = [sharegpt(f"Do you sell {g}?", f"Yes, {g} is in aisle {i}.") for i, g in enumerate(GOODS)]
    write_jsonl(tmp_path / "shop_train.jsonl", train)
    held = [sharegpt(f"Where is the {g}?", f"The {g} is in aisle 9.") for g in ("bread", "honey")]
    write_jsonl(tmp_path / "shop_eval.jsonl", held)
    with (tmp_path / "shop_train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([f"Price of {g}?", "", f"{g} costs {i + 1} EUR."] for i, g in enumerate(GOODS))
    return tmp_path


def recipe(folder: Path, name: str, data: str, extra: str = "") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(f"extends: smollm2-demo\ndata:\n{data}{extra}")
    return str(path)


def check_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["data", "check", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_recipe_extending_the_demo_takes_sharegpt_data_as_it_is(shop, smollm2_tokenizer):
    mine = recipe(shop, "mine", "  train: shop_train.jsonl\n  eval: shop_eval.jsonl\n")
    report = check_json("--recipe", mine)
    assert [(f["split"], f["format"], f["format_from"]) for f in report["files"]] == [
        ("train", "sharegpt", "detected"),
        ("eval", "sharegpt", "detected"),
    ]
    # nothing of the demo's task is inherited: its rows' calendar prompt is not served to the shop model
    system = report["system_prompt"]
    assert (system["trained"], system["served"], system["warning"]) == (None, None, None)
    assert system["template_default"] == SMOLLM2_DEFAULT
    assert SMOLLM2_DEFAULT in report["example"]["text"]


def test_a_pinned_format_that_does_not_fit_says_what_the_records_look_like(shop, smollm2_tokenizer):
    pinned = recipe(shop, "pinned", "  train: shop_train.jsonl\n  eval: shop_eval.jsonl\n  format: messages\n")
    result = run_cli("data", "check", "--recipe", pinned)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    problems = [line.strip() for line in lines if line.strip().startswith(str(shop))]
    assert len(problems) == 14  # 12 train + 2 eval lines, all reported at once
    looks = "this record looks like sharegpt (conversations)"
    assert problems[0] == f"{shop}/shop_train.jsonl:1: messages: missing field — {looks}"
    assert all(p.endswith("looks like sharegpt (conversations)") for p in problems)
    hints = [line for line in lines if line.startswith("hint:")]
    assert len(hints) == 1  # the fix is said once per file, not once per line
    assert result.stderr.count("Set data.format: auto") == 2  # shop_train.jsonl and shop_eval.jsonl
    assert "12 of its records look like sharegpt" in result.stderr


def test_alpaca_csv_train_with_sharegpt_eval(shop, smollm2_tokenizer):
    mixed = recipe(shop, "mixed", "  train: shop_train.csv\n  eval: shop_eval.jsonl\n")
    report = check_json("--recipe", mixed)
    assert [(f["format"], f["rows"]) for f in report["files"]] == [("alpaca", 12), ("sharegpt", 2)]
    assert report["train_rows"] == 12 and report["eval_rows"] == 2 and report["eval_tokens"]["rows"] == 2

    runs = shop / "runs"
    dry = run_cli("train", mixed, "--dry-run", "--runs-dir", str(runs))
    assert dry.returncode == 0, dry.stderr
    assert "alpaca (detected)" in dry.stdout and "sharegpt (detected)" in dry.stdout
    assert "dry run: no model was loaded" in dry.stdout

    pinned = recipe(shop, "pinned", "  train: shop_train.csv\n  eval: shop_eval.jsonl\n",
                    "  format:\n    shop_train.csv: alpaca\n    shop_eval.jsonl: sharegpt\n")
    report = check_json("--recipe", pinned)
    pins = [(f["format"], f["format_from"]) for f in report["files"]]
    assert pins == [("alpaca", "data.format"), ("sharegpt", "data.format")]


def test_a_format_mapping_that_names_another_file_is_refused_with_its_line(shop):
    bad = recipe(shop, "bad", "  train: shop_train.csv\n", "  format:\n    shop_eval.jsonl: sharegpt\n")
    result = run_cli("data", "check", "--recipe", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}:4: data.format: {shop}/shop_eval.jsonl is not one of data.train or data.eval" in result.stderr


def test_data_check_shows_the_system_prompt_training_uses(shop, smollm2_tokenizer):
    own = recipe(shop, "own", f"  train: shop_train.jsonl\n  system_prompt: {SHOP_PROMPT}\n")
    system = check_json("--recipe", own)["system_prompt"]
    assert system["trained"] == system["served"] == SHOP_PROMPT
    assert system["trained_from"] == "data.system_prompt" and system["common"] == [[SHOP_PROMPT, 12]]
    assert system["warning"] is None

    shown = CliRunner().invoke(main, ["data", "check", "--recipe", own])
    assert shown.exit_code == 0, shown.output
    assert "system prompt (data.system_prompt; on 12 of 12 training rows):" in shown.output
    assert f"<|im_start|>system\n{SHOP_PROMPT}<|im_end|>" in shown.output  # the rendered example
    assert SMOLLM2_DEFAULT not in shown.output
    assert "the Modelfile's SYSTEM and `quicktune chat` send the same" in shown.output

    plain = recipe(shop, "plain", "  train: shop_train.jsonl\n")
    shown = CliRunner().invoke(main, ["data", "check", "--recipe", plain])
    assert "12 of 12 training rows have no system turn and are trained with the chat template's default" in shown.output
    assert SMOLLM2_DEFAULT in shown.output


def test_an_export_system_that_differs_from_training_is_a_warning(shop, smollm2_tokenizer):
    data = f"  train: shop_train.jsonl\n  system_prompt: {SHOP_PROMPT}\n"
    differs = recipe(shop, "differs", data, "export:\n  system: Be a pirate.\n")
    expected = "the Modelfile and chat will send the system prompt 'Be a pirate.' (export.system), which no"
    system = check_json("--recipe", differs)["system_prompt"]
    assert system["served"] == "Be a pirate." and system["warning"].startswith(expected)
    dry = run_cli("train", differs, "--dry-run", "--runs-dir", str(shop / "runs"))
    assert dry.returncode == 0, dry.stderr
    assert f"warning: {expected}" in dry.stdout
    assert "the Modelfile and chat send instead (export.system):" in dry.stdout

    # rows that each bring their own prompt and no recipe prompt: serving would send none
    rows = [sharegpt(f"Hi, I am {g}.", "Hello.", system=f"Persona {g}") for g in GOODS[:4]]
    varied = write_jsonl(shop / "varied.jsonl", rows)
    report = check_json(str(varied), "--recipe", recipe(shop, "plain", "  train: shop_train.jsonl\n"))
    assert report["system_prompt"]["served"] is None
    assert "will send no system prompt (the chat template's default)" in report["system_prompt"]["warning"]
    assert "4 different" in report["system_prompt"]["warning"]


@pytest.mark.slow
def test_the_system_prompt_goes_from_training_to_the_modelfile_and_chat(shop, smollm2_tokenizer):
    """A short real run: the recipe's prompt is trained, written as the Modelfile's SYSTEM and sent by chat."""
    recipe_file = shop / "shop.yaml"
    recipe_file.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: shop_train.csv\n  system_prompt: {SHOP_PROMPT}\n"  # no eval: no eval passes to wait for
        "training:\n  max_steps: 2\n  batch_size: 2\n  grad_accumulation: 1\n  warmup_ratio: 0.0\n"
        "export:\n  quantizations: [f16]\n  temperature: 0\n"
    )
    runs = shop / "runs"
    trained = run_cli("train", str(recipe_file), "--runs-dir", str(runs))
    assert trained.returncode == 0, trained.stderr
    run_dir = runs / "shop" / "v1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    recorded = manifest["data"]["system_prompt"]
    assert (recorded["trained"], recorded["served"]) == (SHOP_PROMPT, SHOP_PROMPT)
    assert recorded["common"] == [[SHOP_PROMPT, 12]]  # every row trained with it

    exported = run_cli("export", str(run_dir), "--no-verify", "--runs-dir", str(runs))
    assert exported.returncode == 0, exported.stderr
    assert "warning:" not in exported.stdout
    modelfile = (run_dir / "export" / "Modelfile.f16").read_text().splitlines()
    system_lines = [line for line in modelfile if line.startswith("SYSTEM")]
    assert len(system_lines) == 1 and SHOP_PROMPT in system_lines[0]

    from quicktune.chat import resolve_target
    from quicktune.data.system_prompt import served_prompt, served_warning
    from quicktune.recipe import load_recipe

    assert resolve_target(str(run_dir), runs, None).system == SHOP_PROMPT
    answered = run_cli("chat", str(run_dir), "--prompt", "Price of tea?", "--max-tokens", "8", "--runs-dir", str(runs))
    assert answered.returncode == 0, answered.stderr

    # the run's recipe with a different export.system: served as asked, with the warning export prints
    run_recipe = load_recipe(str(run_dir / "recipe.yaml"))
    assert served_warning(run_recipe, manifest) is None
    run_recipe.export.system = "Be a pirate."
    assert served_prompt(run_recipe, manifest) == "Be a pirate."
    warning = served_warning(run_recipe, manifest)
    assert warning.startswith("the Modelfile and chat will send the system prompt 'Be a pirate.'")
