"""method: full on the CPU with the real SmolLM2: train -> (a child run --from it) -> export -> chat."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from quicktune import runs
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.slow


class Watch:
    """Keeps whether gradient checkpointing was on, and one weight, at the start of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                outer.checkpointing = model.is_gradient_checkpointing
                outer.weight = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.weight"].detach().clone()

        self.callback = _Callback()


def _recipe(tmp_path, tiny_data, steps):
    from quicktune.recipe import load_recipe

    train, held = tiny_data
    path = tmp_path / "tiny-full.yaml"
    path.write_text(
        f"method: full\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\ndata:\n  train: {train}\n  eval: {held}\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.0001\n"
        "  warmup_ratio: 0.0\n  gradient_checkpointing: true\nexport:\n  quantizations: [q8_0]\n  temperature: 0\n"
    )
    return load_recipe(str(path))


def test_full_fine_tuning_trains_exports_and_chats(tmp_path, tiny_data):
    from quicktune.console import console
    from quicktune.train.trainer import train
    from quicktune.workflow import train_command

    root = tmp_path / "runs"
    _recipe(tmp_path, tiny_data, 2)
    with console.capture() as captured:
        parent = train_command(str(tmp_path / "tiny-full.yaml"), [], str(root), None, False)
    model = parent.run_dir / "model"
    assert parent.status == "finished" and parent.trained_dir == model
    assert (model / "config.json").is_file() and not (parent.run_dir / "adapter").exists()
    text = " ".join(captured.get().split())
    assert f"model: {model}" in text and "adapter" not in text  # the summary names what exists
    saved = load_file(model / "model.safetensors")
    base = load_file(f"{runs.read_manifest(parent.run_dir)['base_model']['loaded_from']}/model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not saved[name].equal(base[name])  # every weight trains, not an adapter

    # a full run is a parent: the child starts from its weights, with gradient checkpointing on
    watch = Watch()
    child = train(_recipe(tmp_path, tiny_data, 1), runs_root=root, parent_ref="v1", extra_callbacks=(watch.callback,))
    assert child.run_dir.name == "v2" and runs.read_manifest(child.run_dir)["parent"] == str(parent.run_dir)
    assert watch.checkpointing is True and watch.weight.equal(saved[name])

    # export and chat the full run
    from quicktune.chat import open_session, resolve_target
    from quicktune.export.exporter import export_run

    result = export_run(parent.run_dir, ["q8_0"], verify=False)
    assert result.merged == model and not (parent.run_dir / "export" / "merged").exists()
    session = open_session(resolve_target(str(parent.run_dir), root, None), system=None, max_tokens=24)
    answer = "".join(session.reply("One word for tea?"))
    assert answer.strip()


def test_an_adapter_run_cannot_be_continued_as_full(make_recipe, tmp_path, tiny_data):
    from quicktune.errors import QuicktuneError
    from quicktune.train.trainer import load_parent, train

    root = tmp_path / "runs"
    lora = train(make_recipe("tiny-full", steps=1), runs_root=root)
    with pytest.raises(QuicktuneError,
                       match=r"method full trains every weight of a model; tiny-full/v1 trained an adapter"):
        load_parent(str(lora.run_dir), root, _recipe(tmp_path, tiny_data, 1))
