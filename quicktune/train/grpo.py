"""``method: grpo``: TRL's GRPOTrainer on quicktune's own prompt tokens, scored by the recipe's rewards.

The run is the SFT run's in every other way (``quicktune.train.trainer``: backend, run folder,
manifest, metrics.jsonl, progress bar, Ctrl-C, resume, lineage); only the trainer differs. Each
optimizer step takes ``training.batch_size`` x ``grad_accumulation`` prompts, samples
``grpo.num_generations`` answers to each with the model being trained (``model.generate``: Unsloth's
model on CUDA, plain generation on the CPU), scores every answer with the rewards
(``quicktune.rewards``) and pushes each up or down by how it scores against its group.

Prompts are the ids ``quicktune.data.prompts`` rendered with the trained chat template (TRL's own
tokenization is bypassed, as SFT's is) and an answer ends at the template's end-of-turn token,
as the exported model's does. TRL logs each reward's mean (``rewards/NAME/mean``), the share of
groups whose answers all scored the same (``frac_reward_zero_std``: no signal, nothing learned from
them) and the answers' lengths; all of it lands in metrics.jsonl, and ``GroupSignal`` warns when
most groups carry no signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.rewards import for_trainer, resolve
from quicktune.train.config import SHARED_ARGS, planned_steps, sft_config

NO_SIGNAL = "frac_reward_zero_std"  # TRL's name: the share of groups whose rewards were all equal

# What quicktune keeps in the manifest from the last logged step: the reward, the groups with no
# signal, the answers' mean length (and each reward's mean, below).
LOGGED = {"reward": "reward", NO_SIGNAL: "no_signal_groups", "completions/mean_length": "completion_length"}


def completions_per_step(recipe) -> int:
    """Answers sampled on one device step: each of ``training.batch_size`` prompts ``num_generations`` times."""
    return recipe.training.batch_size * recipe.grpo.num_generations


def grpo_config(recipe, backend, run_dir: Path, train_rows: int, weights: list[float]):
    """The GRPOConfig a run trains with: SFT's arguments (``sft_config``, the one place the training keys
    become trainer arguments) with batches counted in answers, the recipe's ``grpo`` section and the
    rewards' ``weights``.
    Training is not evaluated on the way (an eval step would sample every held-out prompt's group):
    ``quicktune eval`` scores the rewards on the held-out rows, greedily, after training."""
    from trl import GRPOConfig

    sft_args = sft_config(recipe, run_dir, backend, False, planned_steps(recipe, train_rows))
    shared = {name: getattr(sft_args, name) for name in SHARED_ARGS if name != "max_length"}
    answers = completions_per_step(recipe)
    shared.update(per_device_train_batch_size=answers, per_device_eval_batch_size=answers)
    section = recipe.grpo
    return GRPOConfig(
        **shared,
        num_generations=section.num_generations,
        max_completion_length=section.max_completion_length,
        temperature=section.temperature,
        top_p=1.0,
        beta=section.beta,
        reward_weights=weights,
        remove_unused_columns=False,  # every column reaches the rewards
        log_completions=False,
    )


def grpo_trainer(recipe, backend, model, hf_tokenizer, prepared, run_dir, callbacks, say=None):
    """The GRPO trainer for a prepared run (``trainer._setup_trainer`` calls it in place of SFT's)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    if backend.name != "unsloth" and backend.device == "cpu":
        # Measured (bench/grpo_speed.py): plain TRL GRPOTrainer fails at its first loss with "0 active
        # drivers" (its fused log-prob kernel is Triton); Unsloth's model computes the same on the CPU.
        raise QuicktuneError(
            "method grpo on the CPU needs Unsloth: TRL 1.15 scores the sampled answers with its fused LM head, "
            "a Triton kernel with no CPU driver",
            hint=f"Make `import unsloth` work ({backend.notice or 'see quicktune doctor'}), or train on a GPU.",
        )
    rows = [row for row in prepared.train_prompts if row.prompt_ids]
    if not rows:
        raise QuicktuneError("method grpo: no training row has a prompt to sample answers to")
    functions, weights = for_trainer(resolve(recipe.grpo.rewards, None))
    args = grpo_config(recipe, backend, run_dir, len(rows), weights)
    from quicktune.train.callbacks import GroupSignal  # transformers at its top: imported after the backend

    callbacks = [*callbacks, GroupSignal(say or (lambda *a, **k: None), lambda share, step: no_signal_warning(
        recipe, share, step))]
    trainer = _own_prompts(GRPOTrainer)(
        model=model,
        reward_funcs=functions,
        args=args,
        train_dataset=Dataset.from_list([row.for_trainer() for row in rows]),
        processing_class=hf_tokenizer,
        callbacks=callbacks,
    )
    trainer.quicktune_prompt_ids = {row.prompt: row.prompt_ids for row in rows}
    _stop_at(trainer, prepared.stops)
    return trainer


def _stop_at(trainer, stops: list[int]) -> None:
    """Answers end at the template's end-of-turn token (and eos), as the exported model's do; TRL
    (1.15) takes its stops from the model's generation config, which may name only eos."""
    trainer.eos_token_ids = stops
    trainer.generation_kwargs["eos_token_id"] = stops
    trainer.generation_config.eos_token_id = stops


def _own_prompts(grpo_trainer):
    class QuicktuneGRPOTrainer(grpo_trainer):
        """GRPO on the prompt ids quicktune rendered: the dataset's ``prompt`` text is only their key."""

        quicktune_prompt_ids: dict[str, list[int]]  # set when the trainer is made (grpo_trainer)

        def _tokenize_prompts(self, prompts: list):
            return [list(self.quicktune_prompt_ids[p]) for p in prompts], None, {}

    return QuicktuneGRPOTrainer


def no_signal_warning(recipe, share: float, step: int) -> str:
    section = recipe.grpo
    graded = [r.name for r in section.rewards if r.name.startswith(("json_fields", "max_length"))]
    return (f"[yellow]warning:[/] at step {step}, {share:.0%} of the groups scored all "
            f"{section.num_generations} answers the same: those carry no signal and teach nothing. Try a higher "
            f"grpo.temperature (now {section.temperature:g}), a larger grpo.num_generations (now "
            f"{section.num_generations}), or a graded reward beside the all-or-nothing ones"
            f"{' (json_fields, max_length:N)' if not graded else ''}; a model that already gets every answer right "
            "(or none) has nothing left to learn from these prompts.")


def logged_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged reward, groups without signal and answer length, each reward's mean, and the
    share of logged steps whose groups mostly carried no signal, for the manifest."""
    found = {}
    for key, name in LOGGED.items():
        values = [h[key] for h in history if key in h]
        if values:
            found[name] = round(float(values[-1]), 4)
    for key in sorted({k for h in history for k in h if k.startswith("rewards/") and k.endswith("/mean")}):
        values = [h[key] for h in history if key in h]
        found[f"reward_{key[len('rewards/'):-len('/mean')]}"] = round(float(values[-1]), 4)
    signal = [h[NO_SIGNAL] for h in history if NO_SIGNAL in h]
    if signal:
        found["mean_no_signal_groups"] = round(sum(signal) / len(signal), 4)
    return found
