"""method grpo to Axolotl (rl: grpo, trl.*) and back: the group settings and the user's own rewards map;
quicktune's built-in rewards are kept; what Axolotl says that quicktune cannot is listed with its line."""

from __future__ import annotations

import yaml

from quicktune.axolotl import from_axolotl
from quicktune.recipe import load_recipe
from tests.test_axolotl import _export, _import


def test_grpo_exports_as_rl_grpo_with_own_rewards_as_module_paths(tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def slug(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    recipe = tmp_path / "g.yaml"
    recipe.write_text("extends: smollm2-demo-grpo\ngrpo:\n  rewards:\n    - {name: json_fields}\n"
                      "    - {name: my_rewards.py:slug, weight: 0.5}\n  num_generations: 6\n")
    exported = _export(tmp_path, str(recipe))
    config = yaml.safe_load(exported.read_text())
    assert config["rl"] == "grpo" and config["adapter"] == "lora"
    assert config["trl"] == {"num_generations": 6, "max_completion_length": 64, "temperature": 1.0, "beta": 0.0,
                             "reward_funcs": ["my_rewards.slug"], "reward_weights": [0.5]}
    result, written = _import(tmp_path, exported)
    assert result.exit_code == 0, result.output
    back, original = (load_recipe(str(path)).model_dump(mode="json", exclude={"extends"}) for path in (written, recipe))
    assert back == original


def test_an_axolotl_grpo_config_imports_with_its_reward_functions(tmp_path):
    config = tmp_path / "grpo.yaml"
    config.write_text(
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nadapter: lora\nrl: grpo\nlora_r: 8\nlearning_rate: 1.0e-5\n"
        "datasets:\n  - path: train.jsonl\n    type: chat_template\n"
        "trl:\n  beta: 0.001\n  num_generations: 4\n  max_completion_length: 128\n  use_vllm: true\n"
        "  reward_funcs:\n    - rewards.correct\n    - pkg.sub.format_ok\n    - OpenAssistant/reward-model\n"
        "  reward_weights: [2.0, 1.0, 1.0]\n")
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                          '{"role": "assistant", "content": "hello"}]}\n')
    imported = from_axolotl(config)
    recipe = imported.recipe
    assert recipe.method == "grpo" and recipe.grpo.beta == 0.001 and recipe.grpo.num_generations == 4
    assert [(r.name, r.weight) for r in recipe.grpo.rewards] == [
        (f"{tmp_path}/rewards.py:correct", 2.0), (f"{tmp_path}/pkg/sub.py:format_ok", 1.0)]
    unmapped = "\n".join(imported.unmapped)
    assert f"{config}:13: trl.use_vllm: no quicktune equivalent" in unmapped
    assert "trl.reward_funcs[2]: 'OpenAssistant/reward-model': a reward model" in unmapped
