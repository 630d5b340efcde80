"""GRPO on the real SmolLM2, from a real SFT run (the session's ``trained_run``): a few steps sample
groups of answers, score them with built-in and own rewards, change the adapter, log each reward and
the groups without signal; Ctrl-C and resume; eval reports each reward for the run and its parent."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from quicktune import runs
from quicktune.train.trainer import train
from tests.conftest import SMOLLM2
from tests.train.test_trainer import InterruptAt

pytestmark = pytest.mark.slow

SYSTEM = "Answer with one JSON object."  # the SFT fixture's system prompt

OWN_REWARD = '''
def mentions_word(prompts, completions, reference, **kwargs):
    """1 when the answer names the JSON key the reference uses."""
    return [1.0 if '"word"' in answer else 0.0 for answer in completions]
'''


def _grpo_recipe(folder, tiny_data, steps: int = 2):
    from quicktune.recipe import load_recipe

    train_file, eval_file = tiny_data
    (folder / "my_rewards.py").write_text(OWN_REWARD)
    path = folder / "tiny-grpo.yaml"
    path.write_text(
        f"method: grpo\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\n  system_prompt: {SYSTEM}\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.002\n"
        "  warmup_ratio: 0.0\n  weight_decay: 0.0\n  save_every: 1\n  logging_every: 1\n  seed: 5\n"
        "grpo:\n  rewards:\n    - {name: json_fields}\n    - {name: 'max_length:14', weight: 0.5}\n"
        "    - {name: my_rewards.py:mentions_word}\n"
        "  num_generations: 2\n  max_completion_length: 12\n  temperature: 1.0\n"
        "export:\n  quantizations: [q4_k_m]\n  temperature: 0\n"
    )
    return load_recipe(str(path))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, trained_run, tiny_data):
    folder = tmp_path_factory.mktemp("grpo")
    result = train(_grpo_recipe(folder, tiny_data), runs_root=folder / "runs", parent_ref=str(trained_run.run_dir))
    return result, folder


def test_a_few_grpo_steps_change_the_adapter_and_log_each_reward(grpo_run, trained_run):
    result, _ = grpo_run
    assert result.status == "finished" and result.metrics["steps"] == 2
    manifest = runs.read_manifest(result.run_dir)
    assert manifest["method"] == "grpo" and manifest["parent"] == str(trained_run.run_dir)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "reward" in row]
    assert len(steps) == 2
    for row in steps:
        assert {"rewards/json_fields/mean", "rewards/max_length:14/mean", "frac_reward_zero_std",
                "completions/mean_length"} <= set(row)
        assert any(key.endswith("my_rewards.py:mentions_word/mean") for key in row)
    assert {"reward", "no_signal_groups", "completion_length", "reward_json_fields",
            "mean_no_signal_groups"} <= set(manifest["metrics"])
    # A group with different rewards gives a gradient; the adapter moved away from the parent's.
    assert any(row["grad_norm"] > 0 for row in steps)
    parent = load_file(trained_run.adapter_dir / "adapter_model.safetensors")
    trained = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    assert parent.keys() == trained.keys()
    assert any(not parent[k].equal(trained[k]) for k in parent if "lora_B" in k)


def test_answers_are_sampled_from_the_trained_template_and_stop_at_its_end_of_turn(grpo_run):
    from quicktune.data.tokenizer import load_chat_tokenizer

    result, _ = grpo_run
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # answers that ended on <|im_end|> (not only cut at 12 tokens): the SFT run learned to stop
    assert any(row.get("completions/mean_terminated_length", 0) > 0 for row in logged)
    tokenizer = load_chat_tokenizer(str(result.run_dir / "adapter"))
    assert tokenizer.end_of_turn() == "<|im_end|>"


def test_resume_after_ctrl_c(grpo_run, trained_run, tiny_data, tmp_path):
    recipe = _grpo_recipe(tmp_path, tiny_data, steps=3)
    stopped = train(recipe, runs_root=tmp_path / "runs", parent_ref=str(trained_run.run_dir),
                    extra_callbacks=(InterruptAt(1).callback,))
    assert stopped.status == "interrupted" and runs.latest_checkpoint(stopped.run_dir).name == "checkpoint-2"
    assert not (stopped.run_dir / "adapter").exists()
    resumed = train(recipe, runs_root=tmp_path / "runs", parent_ref=str(trained_run.run_dir))
    assert resumed.run_dir == stopped.run_dir and resumed.resumed_from == "checkpoint-2"
    assert resumed.status == "finished" and resumed.metrics["steps"] == 3
    logged = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "reward" in row] == [1, 2, 3]  # one log a step, none twice


def test_eval_reports_each_reward_for_the_run_and_its_parent(grpo_run, trained_run):
    from quicktune.evaluate.runner import evaluate_run

    result, _ = grpo_run
    report = evaluate_run(result.run_dir, against=str(trained_run.run_dir), runs_root=result.run_dir.parent.parent)
    assert [s.label for s in report.subjects][-2:] == [runs.run_label(trained_run.run_dir),
                                                       runs.run_label(result.run_dir)]
    for subject in report.subjects:
        names = {k for k in subject.metrics if k.startswith("reward:")}
        assert {"reward:json_fields", "reward:max_length:14"} <= names, subject.label
        assert all(v is None or 0.0 <= v <= 1.0 for k, v in subject.metrics.items() if k in names)
        # the same implementation as the metric: json_fields the reward == json_fields the metric
        assert subject.metrics["reward:json_fields"] == pytest.approx(subject.metrics["json_fields"])


def test_export_of_a_grpo_run(grpo_run):
    from quicktune.export.exporter import export_run

    result, _ = grpo_run
    export_run(result.run_dir, prompts=2, max_new_tokens=24)
    manifest = runs.read_manifest(result.run_dir)
    assert manifest["export"]["fidelity"]["passed"] is True
    assert (result.run_dir / "export" / "Modelfile.q4_k_m").is_file()


def test_most_groups_without_signal_warn_once_saying_what_to_change():
    from quicktune.recipe import load_recipe
    from quicktune.train.callbacks import GroupSignal
    from quicktune.train.grpo import no_signal_warning

    recipe = load_recipe("smollm2-demo-grpo", ["grpo.rewards=[{name: exact}]"])
    said = []
    callback = GroupSignal(said.append, lambda share, step: no_signal_warning(recipe, share, step))

    class State:
        global_step = 0

    for step, share in enumerate([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1):
        State.global_step = step
        callback.on_log(None, State, None, logs={"frac_reward_zero_std": share, "reward": 0.0})
    assert len(said) == 1 and "at step 5, 100% of the groups scored all 4 answers the same" in said[0]
    assert "grpo.temperature (now 1)" in said[0] and "(json_fields, max_length:N)" in said[0]
