"""Recipe keys that the command line's choices make moot, and keys that cannot be honoured (issue 34), through
the real CLI (`train --dry-run` refuses what the run would, and loads no model):
- `--set method=full` on a built-in recipe with lora keys: the inherited keys are left out with a note; keys the
  user wrote are refused, naming the override that works; `--set lora=null` is the section left out;
- `--set method=qlora` implies model.load_in_4bit: true (and method lora/full: false) over an inherited value;
- lora.target_modules naming only embeddings is refused with the reason;
- `--from` a parent whose adapter has other lora values than the recipe is refused, naming the keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from safetensors.numpy import save_file

from quicktune import runs
from quicktune.cli import main
from tests.conftest import SMOLLM2, chat, write_jsonl


def _dry(tmp_path: Path, recipe: str, *args: str):
    return CliRunner().invoke(main, ["train", recipe, "--dry-run", "--runs-dir", str(tmp_path / "runs"), *args])


def _flat(result) -> str:
    return " ".join(result.output.split())


def test_set_method_full_on_a_builtin_recipe_leaves_its_lora_keys_out_with_a_note(tmp_path):
    result = _dry(tmp_path, "smollm2-demo", "--set", "method=full")
    assert result.exit_code == 0, result.output
    out = _flat(result)
    assert "note: method full (--set method=full) makes lora.alpha, lora.dropout, lora.r, lora.target_modules" in out
    assert "plan: full on" in out


def test_set_lora_null_is_the_section_left_out(tmp_path):
    result = _dry(tmp_path, "smollm2-demo", "--set", "lora=null", "--set", "method=full")
    assert result.exit_code == 0, result.output
    assert "valid dictionary" not in result.output and "note:" not in result.output
    plain = _dry(tmp_path, "smollm2-demo", "--set", "lora=null")  # method lora: the defaults
    assert plain.exit_code == 0, plain.output


def test_lora_keys_the_user_wrote_are_refused_with_the_override_that_works(tmp_path):
    result = _dry(tmp_path, "smollm2-demo", "--set", "lora.r=8", "--set", "method=full")
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = _flat(result)
    assert "--set lora.r=8: lora.r: method full trains every weight" in out and "--set lora=null" in out

    own = tmp_path / "mine.yaml"  # the user's own file says both: refused, at its line
    own.write_text("extends: smollm2-demo\nmethod: full\nlora:\n  r: 8\n")
    refused = _dry(tmp_path, str(own))
    assert refused.exit_code == 2 and f"{own}:4: lora.r: method full" in _flat(refused)


def test_a_recipe_extending_one_with_lora_keys_may_switch_to_full(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("extends: smollm2-demo\nmethod: full\n")
    result = _dry(tmp_path, str(own))
    assert result.exit_code == 0, result.output
    assert "(set in smollm2-demo.yaml) moot: left out" in _flat(result)


def test_set_method_qlora_implies_4bit_loading(tmp_path):
    result = _dry(tmp_path, "smollm2-demo", "--set", "method=qlora")
    assert result.exit_code == 0, result.output
    out = _flat(result)
    assert "method qlora (--set method=qlora) sets model.load_in_4bit: true" in out and "plan: qlora on" in out
    # written together with the method, a contradiction is still the user's to resolve
    both = _dry(tmp_path, "smollm2-demo", "--set", "method=qlora", "--set", "model.load_in_4bit=false")
    assert both.exit_code == 2 and "set model.load_in_4bit: true or method: lora" in _flat(both)


def test_target_modules_naming_only_embeddings_is_refused_with_the_reason(tmp_path):
    result = _dry(tmp_path, "smollm2-demo", "--set", "lora.target_modules=[embed_tokens, lm_head]")
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = _flat(result)
    assert "lora.target_modules: names only embedding layers (embed_tokens, lm_head)" in out
    assert "target_modules empty" in out and "q_proj" in out
    mixed = _dry(tmp_path, "smollm2-demo", "--set", "lora.target_modules=[embed_tokens, q_proj]")
    assert mixed.exit_code == 0, mixed.output


def _parent_run(root: Path, name: str, r: int = 16, alpha: int = 32, modules=("q_proj", "v_proj")) -> Path:
    """A finished LoRA run of SmolLM2 as training leaves it: manifest, adapter config and adapter weights."""
    run_dir = runs.create_run_dir(root, name)
    runs.write_manifest(run_dir, {"recipe": name, "version": run_dir.name, "status": "finished", "method": "lora",
                                  "parent": None, "base_model": {"spec": SMOLLM2}, "resumes": []})
    adapter = run_dir / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(modules),
              "use_dora": False, "use_rslora": False, "bias": "none", "task_type": "CAUSAL_LM"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.0.self_attn"
    save_file({f"{prefix}.{m}.lora_{ab}.weight": np.zeros((r, 576) if ab == "A" else (576, r), np.float32)
               for m in modules for ab in "AB"}, str(adapter / "adapter_model.safetensors"))
    return run_dir


def _child_recipe(tmp_path: Path, lora: str) -> Path:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"Say {w}", w) for w in ("tea", "rain", "owls", "salt")])
    path = tmp_path / "child.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 64\nlora:\n{lora}"
                    f"data:\n  train: {train}\ntraining:\n  max_steps: 2\n")
    return path


def test_from_a_parent_refuses_lora_keys_its_adapter_does_not_have(tmp_path):
    parent = _parent_run(tmp_path / "runs", "child")
    recipe = _child_recipe(tmp_path, "  r: 8\n  alpha: 32\n  target_modules: [q_proj, k_proj]\n")
    result = _dry(tmp_path, str(recipe), "--from", "v1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = _flat(result)
    assert "--from v1: a continued run trains its parent's adapter as it is, and 2 lora key(s)" in out
    assert f"{recipe}:6: lora.r is 8, and child/v1's adapter has 16" in out
    assert 'lora.target_modules is ["k_proj", "q_proj"], and child/v1\'s adapter has ["q_proj", "v_proj"]' in out
    assert "--set=lora.r=16" in out

    same = _child_recipe(tmp_path, "  r: 16\n  alpha: 32\n  target_modules: [v_proj, q_proj]\n")
    accepted = _dry(tmp_path, str(same), "--from", "v1")
    assert accepted.exit_code == 0, accepted.output
    assert f"starts from the adapter of {parent}" in _flat(accepted)
