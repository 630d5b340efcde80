"""The recipe's ``preference`` section reaches the trainer's config: beta, loss_type and
label_smoothing and sft_weight for DPO, beta for ORPO, and the SFT arguments both share."""

from __future__ import annotations

import pytest

from quicktune.backend import Backend
from quicktune.recipe import load_recipe
from quicktune.train.preference import preference_config


def _recipe(tmp_path, method: str, preference: str):
    path = tmp_path / f"{method}.yaml"
    path.write_text(
        f"method: {method}\nmodel:\n  base: some/model\n  load_in_4bit: false\ndata:\n  train: pairs.jsonl\n"
        "training:\n  max_steps: 7\n  batch_size: 3\n  learning_rate: 0.0003\n  seed: 11\n"
        f"preference:\n{preference}"
    )
    return load_recipe(str(path))


@pytest.mark.parametrize(("preference", "beta", "losses", "weights", "smoothing"), [
    ("  beta: 0.25\n", 0.25, ["sigmoid"], [1.0], 0.0),
    ("  beta: 0.05\n  loss_type: robust\n  label_smoothing: 0.2\n", 0.05, ["robust"], [1.0], 0.2),
    ("  beta: 0.3\n  loss_type: ipo\n", 0.3, ["ipo"], [1.0], 0.0),
    ("  beta: 0.5\n  sft_weight: 0.2\n", 0.5, ["sigmoid", "sft"], [1.0, 0.2], 0.0),
])
def test_dpo_keys_reach_dpo_config(tmp_path, preference, beta, losses, weights, smoothing):
    from trl import DPOConfig

    config = preference_config(_recipe(tmp_path, "dpo", preference), Backend("transformers", "cpu"),
                               tmp_path / "run", train_rows=12, has_eval=False)
    assert isinstance(config, DPOConfig)
    assert (config.beta, config.loss_type, config.loss_weights, config.label_smoothing) == (
        beta, losses, weights, smoothing)
    assert (config.max_steps, config.per_device_train_batch_size, config.learning_rate, config.seed) == (7, 3, 3e-4, 11)
    assert config.disable_dropout is False  # lora.dropout is the recipe's


def test_orpo_beta_reaches_orpo_config(tmp_path):
    from trl.experimental.orpo import ORPOConfig

    config = preference_config(_recipe(tmp_path, "orpo", "  beta: 0.4\n"), Backend("transformers", "cpu"),
                               tmp_path / "run", train_rows=12, has_eval=False)
    assert isinstance(config, ORPOConfig) and config.beta == 0.4 and config.max_steps == 7


@pytest.mark.parametrize(("method", "with_parent", "expected"), [
    ("dpo", True, "parent"), ("orpo", True, "parent"), ("dpo", False, "base"), ("lora", True, "base"),
])
def test_run_scores_a_preference_run_against_the_run_it_started_from(tmp_path, method, with_parent, expected):
    import json

    from quicktune.workflow import _run_against

    parent = tmp_path / "sft" / "v1"
    parent.mkdir(parents=True)
    child = tmp_path / "child" / "v1"
    child.mkdir(parents=True)
    manifest = {"status": "finished", "method": method, "parent": str(parent) if with_parent else None}
    (child / "manifest.json").write_text(json.dumps(manifest))
    assert _run_against(child) == (str(parent) if expected == "parent" else "base")
