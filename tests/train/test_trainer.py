"""Real training on CPU with the real SmolLM2 model, through Unsloth's CPU fallback."""

from __future__ import annotations

import json
import os
import signal

import pytest
from safetensors.torch import load_file

from quicktune import runs
from quicktune.train.trainer import recipe_sha256, train

pytestmark = pytest.mark.slow


class Capture:
    """A trainer callback keeping the model at the start and end of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                outer.start = {k: v.detach().clone() for k, v in model.named_parameters()}

            def on_train_end(self, args, state, control, model=None, **kwargs):
                outer.end = {k: v.detach().clone() for k, v in model.named_parameters()}

        self.callback = _Callback()
        self.start: dict = {}
        self.end: dict = {}


def _base_weights(run_dir):
    manifest = runs.read_manifest(run_dir)
    return load_file(os.path.join(manifest["base_model"]["loaded_from"], "model.safetensors"))


def test_training_lowers_loss_changes_lora_not_base(make_recipe, tmp_path):
    recipe = make_recipe(steps=6, eval_file=True)
    capture = Capture()
    result = train(recipe, runs_root=tmp_path / "runs", extra_callbacks=(capture.callback,))
    assert result.status == "finished"
    metrics = result.metrics
    assert metrics["steps"] == 6
    assert metrics["train_loss"] < metrics["first_loss"]
    assert metrics["best_eval_loss"] is not None

    lora = [k for k in capture.end if "lora_" in k]
    base = [k for k in capture.end if "lora_" not in k]
    assert lora and base
    assert any(not capture.start[k].equal(capture.end[k]) for k in lora if "lora_B" in k)
    assert all(capture.start[k].equal(capture.end[k]) for k in base)
    # the frozen weights are still exactly the base model's
    reference = _base_weights(result.run_dir)
    name = next(k for k in base if k.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    stored = next(v for k, v in reference.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert capture.end[name].equal(stored)

    folder = result.run_dir
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "recipe.yaml").is_file() and (folder / "loss.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in line for line in lines) and any("eval_loss" in line for line in lines)
    manifest = runs.read_manifest(folder)
    assert manifest["status"] == "finished" and manifest["recipe_sha256"] == recipe_sha256(recipe)
    files = {f["path"]: f for f in manifest["data"]["files"]}
    for path, entry in files.items():
        assert entry["sha256"] == runs.sha256_file(path)
    assert manifest["base_model"]["fingerprint"].startswith("sha256:")
    assert manifest["packages"]["unsloth"] and manifest["backend"]["device"] == "cpu"


class InterruptAt:
    def __init__(self, step: int):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C

        self.callback = _Callback()


def test_interrupt_then_resume_equals_uninterrupted(make_recipe, tmp_path):
    recipe = make_recipe("resume", steps=4)
    straight = train(recipe, runs_root=tmp_path / "a")

    # Ctrl-C during step 1's bookkeeping: the checkpoint is written at the end of the next step.
    stopped = train(recipe, runs_root=tmp_path / "b", extra_callbacks=(InterruptAt(1).callback,))
    assert stopped.status == "interrupted"
    assert runs.read_manifest(stopped.run_dir)["status"] == "interrupted"
    assert runs.latest_checkpoint(stopped.run_dir).name == "checkpoint-2"
    assert not (stopped.run_dir / "adapter").exists()

    resumed = train(recipe, runs_root=tmp_path / "b")
    assert resumed.run_dir == stopped.run_dir and resumed.resumed_from == "checkpoint-2"
    assert resumed.status == "finished" and resumed.metrics["steps"] == 4
    one = load_file(straight.adapter_dir / "adapter_model.safetensors")
    two = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] - two[key]).abs().max().item() < 1e-6, key


def test_from_parent_starts_at_parent_adapter(make_recipe, tmp_path):
    root = tmp_path / "runs"
    parent = train(make_recipe("lineage", steps=2), runs_root=root)
    capture = Capture()
    child = train(make_recipe("lineage", steps=2), runs_root=root, parent_ref="v1", extra_callbacks=(capture.callback,))
    assert child.run_dir.name == "v2"
    assert runs.read_manifest(child.run_dir)["parent"] == str(parent.run_dir)
    saved = load_file(parent.adapter_dir / "adapter_model.safetensors")
    started = {k.replace(".default", ""): v for k, v in capture.start.items() if "lora_" in k}
    for key, value in saved.items():
        match = next(v for k, v in started.items() if k.endswith(key.removeprefix("base_model.model.")))
        assert match.equal(value), key


def test_a_family_template_is_saved_with_the_adapter(make_recipe, tmp_path):
    from quicktune.templates import FAMILY_TEMPLATES

    recipe = make_recipe("family", steps=1)
    recipe.model.chat_template = "chatml"  # SmolLM2's own is chatml with a default system prompt
    result = train(recipe, runs_root=tmp_path / "runs")
    assert (result.adapter_dir / "chat_template.jinja").read_text(encoding="utf-8") == FAMILY_TEMPLATES["chatml"]


def test_plain_transformers_fallback_when_unsloth_cannot_be_imported(make_recipe, tmp_path):
    """One seam: without Unsloth the same trainer runs on transformers + peft, with a notice."""
    import subprocess
    import sys
    import textwrap

    recipe = make_recipe("fallback", steps=2)
    recipe_file = tmp_path / "fallback.yaml"
    recipe_file.write_text(recipe.to_yaml())
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["unsloth"] = None  # makes `import unsloth` fail as if it were not installed
        from quicktune.recipe import load_recipe
        from quicktune.backend import load_backend
        from quicktune.train.trainer import train
        backend = load_backend()
        assert backend.name == "transformers", backend
        assert "Unsloth could not be imported" in backend.notice
        runs_root = __import__("pathlib").Path({str(tmp_path / "runs")!r})
        result = train(load_recipe({str(recipe_file)!r}), runs_root=runs_root)
        assert result.status == "finished" and result.metrics["steps"] == 2, result
        print("FALLBACK-OK", result.metrics["first_loss"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FALLBACK-OK" in done.stdout


def test_last_layers_puts_the_adapter_on_the_last_layers_and_refuses_more_than_the_model_has(make_recipe, tmp_path):
    from quicktune.errors import RecipeError
    from quicktune.recipe import load_recipe

    make_recipe("last", steps=2)
    source = str(tmp_path / "last.yaml")  # the file make_recipe wrote
    with pytest.raises(RecipeError) as refused:
        train(load_recipe(source, ["lora.last_layers=31"]), runs_root=tmp_path / "refused")
    assert "--set lora.last_layers=31" in str(refused.value) and "30 decoder layers" in str(refused.value)
    assert not list((tmp_path / "refused").rglob("manifest.json"))  # refused before a run folder was made

    result = train(load_recipe(source, ["lora.last_layers=2"]), runs_root=tmp_path / "runs")
    adapter = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    layers = {int(key.split(".layers.")[1].split(".")[0]) for key in adapter}
    assert layers == {28, 29} and len(adapter) == 2 * 2 * 7  # A and B of the 7 projections in each of the 2
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [28, 29]
    # continued with --from, the run trains that adapter where it is: another count is refused, saying so
    with pytest.raises(RecipeError) as continued:
        train(load_recipe(source, ["lora.last_layers=3"]), runs_root=tmp_path / "runs", parent_ref="v1")
    assert "continues an adapter on the last 2 layers" in str(continued.value)
    assert sorted(p.name for p in (result.run_dir.parent).iterdir()) == ["v1"]


def test_training_precision_bf16_trains_on_the_cpu_and_fp16_is_refused_before_a_run_folder(make_recipe, tmp_path):
    """training.precision does what it says on the CPU: bf16 autocast trains (and the manifest says so); fp16,
    which needs CUDA, is refused before anything is written."""
    from quicktune.errors import QuicktuneError
    from quicktune.recipe import load_recipe

    make_recipe("precision", steps=2)
    source = str(tmp_path / "precision.yaml")
    with pytest.raises(QuicktuneError, match="fp16 needs a CUDA GPU"):
        train(load_recipe(source, ["training.precision=fp16"]), runs_root=tmp_path / "refused")
    assert not list((tmp_path / "refused").rglob("manifest.json"))

    from quicktune.backend import Backend
    from quicktune.train.config import sft_config

    for setting, bf16 in (("bf16", True), ("fp32", False), ("auto", False)):  # the trainer's argument, not only a label
        arguments = sft_config(load_recipe(source, [f"training.precision={setting}"]), tmp_path / "args",
                               Backend("unsloth", "cpu"), has_eval=False, total_steps=2)
        assert (arguments.bf16, arguments.fp16) == (bf16, False)

    result = train(load_recipe(source, ["training.precision=bf16"]), runs_root=tmp_path / "runs")
    manifest = runs.read_manifest(result.run_dir)
    assert manifest["status"] == "finished" and manifest["backend"]["precision"] == "bf16"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
