"""DPO on the real SmolLM2, from a real SFT run (the session's ``trained_run``): a few steps move
preference accuracy, the reference (the SFT adapter) stays frozen, resume, export."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from quicktune import runs
from quicktune.train.trainer import train
from tests.conftest import SMOLLM2, TOPICS, write_jsonl
from tests.train.test_trainer import InterruptAt

pytestmark = pytest.mark.slow

SYSTEM = "Answer with one JSON object."  # the SFT fixture's system prompt


def _pairs(topics) -> list[dict]:
    # The SFT run learned '{"word": "tea"}'; these pairs prefer the capitalised word it does not write.
    return [{"prompt": f"One word for {t}?", "chosen": f'{{"word": "{t.capitalize()}"}}',
             "rejected": f'{{"word": "{t}"}}'} for t in topics]


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return (write_jsonl(folder / "train.jsonl", _pairs(TOPICS[:8])),
            write_jsonl(folder / "eval.jsonl", _pairs(["snow", "figs"])))


def _dpo_recipe(folder, pair_files, steps: int = 4):
    from quicktune.recipe import load_recipe

    train_file, eval_file = pair_files
    path = folder / "tiny-dpo.yaml"
    path.write_text(
        f"method: dpo\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\n  system_prompt: {SYSTEM}\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.002\n"
        "  warmup_ratio: 0.0\n  save_every: 2\n  eval_every: 2\n  seed: 5\n"
        "preference:\n  beta: 0.1\nexport:\n  quantizations: [q4_k_m]\n  temperature: 0\n"
    )
    return load_recipe(str(path))


class Adapters:
    """Both adapters (the trained ``default`` and TRL's frozen ``ref``) at the start and end of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                outer.start = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}

            def on_train_end(self, args, state, control, model=None, **kwargs):
                outer.end = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}

        self.callback = _Callback()


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, trained_run, pair_files):
    folder = tmp_path_factory.mktemp("dpo")
    adapters = Adapters()
    result = train(_dpo_recipe(folder, pair_files), runs_root=folder / "runs", parent_ref=str(trained_run.run_dir),
                   extra_callbacks=(adapters.callback,))
    return result, adapters, folder


def _accuracy(run_dir, pair_file) -> tuple[float, float]:
    from quicktune.backend import load_backend
    from quicktune.data.preference import prepare_pairs
    from quicktune.data.tokenizer import load_chat_tokenizer
    from quicktune.evaluate.preference import answer_logps, preference_scores

    manifest = runs.read_manifest(run_dir)
    tokenizer = load_chat_tokenizer(str(run_dir / "adapter"))
    pairs = prepare_pairs([str(pair_file)], tokenizer=tokenizer, system_prompt=SYSTEM).train_tokens
    model = load_backend().load_trained(manifest["base_model"]["loaded_from"], str(run_dir / "adapter"),
                                        max_seq_length=96, load_in_4bit=False, dtype="float32")
    scores = preference_scores(answer_logps(model, pairs))
    return scores["preference_accuracy"], scores["preference_margin"]


def test_a_few_dpo_steps_raise_preference_accuracy_on_the_training_pairs(dpo_run, trained_run, pair_files):
    result, _, _ = dpo_run
    assert result.status == "finished" and result.metrics["steps"] == 4
    before = _accuracy(trained_run.run_dir, pair_files[0])
    after = _accuracy(result.run_dir, pair_files[0])
    print(f"preference accuracy / margin on the 8 training pairs: SFT {before}, SFT+DPO {after}")
    assert after[0] > before[0] and after[1] > before[1]
    # TRL's own log of the same, in metrics.jsonl and the manifest
    manifest = runs.read_manifest(result.run_dir)
    assert manifest["method"] == "dpo" and manifest["parent"] == str(trained_run.run_dir)
    assert {"preference_accuracy", "reward_margin", "eval_preference_accuracy"} <= set(manifest["metrics"])
    assert "rewards/margins" in (result.run_dir / "metrics.jsonl").read_text()


def test_the_reference_is_the_sft_adapter_and_does_not_change(dpo_run, trained_run):
    result, adapters, _ = dpo_run
    parent = load_file(trained_run.adapter_dir / "adapter_model.safetensors")
    reference = {k: v for k, v in adapters.start.items() if ".ref." in k}
    assert len(reference) == len(parent)
    for name, value in reference.items():
        saved = parent[name.replace(".ref.", ".")]
        assert value.equal(saved), name
        assert adapters.end[name].equal(value), name  # frozen through training
    trained = [k for k in adapters.end if ".default." in k and "lora_B" in k]
    assert any(not adapters.end[k].equal(adapters.start[k]) for k in trained)
    # the saved adapter is the trained one alone: export merges it like any other
    assert not (result.adapter_dir / "ref").exists()
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved.keys() == parent.keys()


def test_resume_equals_the_uninterrupted_run(dpo_run, trained_run, pair_files, tmp_path):
    straight, _, _ = dpo_run
    recipe = _dpo_recipe(tmp_path, pair_files)
    stopped = train(recipe, runs_root=tmp_path / "runs", parent_ref=str(trained_run.run_dir),
                    extra_callbacks=(InterruptAt(1).callback,))
    assert stopped.status == "interrupted" and runs.latest_checkpoint(stopped.run_dir).name == "checkpoint-2"
    resumed = train(recipe, runs_root=tmp_path / "runs", parent_ref=str(trained_run.run_dir))
    assert resumed.run_dir == stopped.run_dir and resumed.resumed_from == "checkpoint-2"
    assert resumed.status == "finished" and resumed.metrics["steps"] == 4
    one = load_file(straight.adapter_dir / "adapter_model.safetensors")
    two = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for key in one:
        assert (one[key] - two[key]).abs().max().item() < 1e-5, key


def test_export_of_a_dpo_run(dpo_run):
    from quicktune.export.exporter import export_run

    result, _, _ = dpo_run
    exported = export_run(result.run_dir, prompts=2, max_new_tokens=24)
    manifest = runs.read_manifest(result.run_dir)
    assert manifest["export"]["fidelity"]["passed"] is True
    assert (result.run_dir / "export" / "Modelfile.q4_k_m").is_file()
    assert exported is not None


def test_orpo_trains_on_the_same_pairs_without_a_reference(pair_files, tmp_path, monkeypatch):
    recipe_file = tmp_path / "tiny-orpo.yaml"
    train_file, eval_file = pair_files
    recipe_file.write_text(
        f"method: orpo\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\n  system_prompt: {SYSTEM}\n"
        "training:\n  max_steps: 2\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.002\n"
        "  warmup_ratio: 0.0\n  eval_every: 2\npreference:\n  beta: 0.1\n"
    )
    from quicktune.recipe import load_recipe
    from quicktune.train import preference

    built = []
    make = preference.preference_trainer
    monkeypatch.setattr(preference, "preference_trainer", lambda *a, **k: built.append(make(*a, **k)) or built[-1])
    result = train(load_recipe(str(recipe_file)), runs_root=tmp_path / "runs")
    assert result.status == "finished" and result.metrics["steps"] == 2
    assert result.metrics["train_loss"] < result.metrics["first_loss"]  # the SFT part learns the chosen answers
    # ORPO's SFT term is the loss on the chosen answers' tokens, not on the prompt (TRL's own term covers both)
    import torch
    from torch.nn import functional

    trainer = built[0]
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        sft_term = trainer.concatenated_forward(trainer.model, batch)[4]
        logits = trainer.model(input_ids=batch["chosen_input_ids"],
                               attention_mask=batch["chosen_attention_mask"]).logits
        vocab = logits.shape[-1]
        on_answers = functional.cross_entropy(logits[:, :-1].reshape(-1, vocab),
                                              batch["chosen_labels"][:, 1:].reshape(-1))
        everything = torch.where(batch["chosen_attention_mask"] == 1, batch["chosen_input_ids"], -100)
        on_all = functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), everything[:, 1:].reshape(-1))
    assert float(sft_term) == pytest.approx(float(on_answers), rel=1e-4)
    assert abs(float(on_all) - float(on_answers)) > 0.1  # the two terms differ on these pairs: the test can fail
    assert {"preference_accuracy", "reward_margin", "eval_preference_accuracy"} <= set(result.metrics)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file() and not (result.adapter_dir / "ref").exists()
