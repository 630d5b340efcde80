"""The recipe's ``grpo`` section and rewards reach TRL's GRPOConfig, with batches counted in answers and
the SFT arguments every method shares."""

from __future__ import annotations

from quicktune.backend import Backend
from quicktune.recipe import load_recipe
from quicktune.train.grpo import grpo_config


def test_grpo_keys_reach_grpo_config(tmp_path):
    from trl import GRPOConfig

    path = tmp_path / "g.yaml"
    path.write_text(
        "method: grpo\nmodel:\n  base: some/model\n  load_in_4bit: true\ndata:\n  train: rows.jsonl\n"
        "training:\n  max_steps: 7\n  batch_size: 3\n  grad_accumulation: 2\n  learning_rate: 0.0003\n  seed: 11\n"
        "grpo:\n  rewards: [{name: exact, weight: 2}, {name: json_valid}]\n  num_generations: 6\n"
        "  max_completion_length: 40\n  temperature: 0.9\n  beta: 0.04\n")
    recipe = load_recipe(str(path))
    assert recipe.model.load_in_4bit is True  # grpo trains an adapter on the base as loaded: QLoRA here
    config = grpo_config(recipe, Backend("transformers", "cpu"), tmp_path / "run", train_rows=30, weights=[2.0, 1.0])
    assert isinstance(config, GRPOConfig)
    assert (config.num_generations, config.max_completion_length, config.temperature, config.beta) == (6, 40, 0.9, 0.04)
    assert config.reward_weights == [2.0, 1.0] and config.remove_unused_columns is False
    # 3 prompts x 6 answers a device step, 2 steps accumulated: 6 prompts (36 answers) an optimizer step
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (18, 2)
    assert config.generation_batch_size == 36 and config.generation_batch_size % config.num_generations == 0
    assert (config.max_steps, config.learning_rate, config.seed, config.eval_strategy) == (7, 3e-4, 11, "no")


def test_grpo_on_the_cpu_without_unsloth_is_refused_before_trl_runs(tmp_path):
    """Plain TRL 1.15 GRPOTrainer fails on the CPU at its first loss ("0 active drivers", bench/grpo_speed.py):
    the transformers fallback refuses it with the reason, as DPO does."""
    import pytest

    from quicktune.errors import QuicktuneError
    from quicktune.train.grpo import grpo_trainer

    recipe = load_recipe("smollm2-demo-grpo")
    with pytest.raises(QuicktuneError, match="method grpo on the CPU needs Unsloth"):
        grpo_trainer(recipe, Backend("transformers", "cpu"), None, None, None, tmp_path, [])
