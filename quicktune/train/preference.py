"""``method: dpo`` and ``method: orpo``: TRL's DPOTrainer / ORPOTrainer on quicktune's own tokens.

The run is the SFT run's in every other way (``quicktune.train.trainer``: backend, run folder, manifest,
metrics.jsonl, progress bar, Ctrl-C, resume, lineage); only the trainer differs. Pairs come
tokenized from ``quicktune.data.preference`` (``prompt_ids``/``chosen_ids``/``rejected_ids``),
so TRL's own rendering and tokenization are bypassed, as SFT's are.

The reference model of DPO is where training starts. TRL (1.15, ``DPOTrainer.__init__``) copies a
PEFT model's adapter into a frozen second adapter named ``ref`` and scores the reference with it:
after ``--from vN`` that is the SFT run's adapter; on a new adapter (B = 0) it equals the base.
The copy is dropped before the adapter is saved, so a DPO run's adapter is exported like any other.
ORPO needs no reference: its loss is the SFT loss on the chosen answer plus ``beta`` times the
log odds ratio of chosen over rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.train.config import SHARED_ARGS, planned_steps, sft_config

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter

# What TRL logs (DPO and ORPO alike) and the names quicktune keeps them under.
LOGGED = {
    "rewards/accuracies": "preference_accuracy",
    "rewards/margins": "reward_margin",
    "eval_rewards/accuracies": "eval_preference_accuracy",
    "eval_rewards/margins": "eval_reward_margin",
}


def preference_config(recipe, backend, run_dir: Path, train_rows: int, has_eval: bool):
    """The DPOConfig or ORPOConfig a run trains with: the SFT run's arguments plus the recipe's
    ``preference`` section (beta; for DPO also loss_type, label_smoothing and sft_weight: TRL's
    ``sft`` loss on the chosen answer added with that weight)."""
    sft_args = sft_config(recipe, run_dir, backend, has_eval, planned_steps(recipe, train_rows))
    shared = {name: getattr(sft_args, name) for name in SHARED_ARGS}
    settings = recipe.preference
    # lora.dropout is the recipe's to set: TRL would switch dropout off by default.
    if recipe.method == "dpo":
        from trl import DPOConfig

        losses, weights = [settings.loss_type], [1.0]
        if settings.sft_weight:
            losses, weights = [*losses, "sft"], [*weights, settings.sft_weight]
        return DPOConfig(**shared, beta=settings.beta, loss_type=losses, loss_weights=weights,
                         label_smoothing=settings.label_smoothing, disable_dropout=False)
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(**shared, beta=settings.beta, disable_dropout=False)


def preference_trainer(recipe, backend, model, hf_tokenizer, prepared, run_dir, callbacks):
    """The DPO or ORPO trainer for a prepared run (``trainer._setup_trainer`` calls it in place of SFT's)."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback

    train_rows = [p.for_trainer() for p in prepared.train_tokens]
    eval_rows = [p.for_trainer() for p in prepared.eval_tokens or []]
    if eval_rows and recipe.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping_patience))
    if recipe.method == "dpo":
        if backend.name != "unsloth" and backend.device == "cpu":
            # Measured (bench/dpo_speed.py): plain TRL DPOTrainer fails at its first step with
            # "0 active drivers"; Unsloth serves the same slot with its own kernel.
            raise QuicktuneError(
                "method dpo on the CPU needs Unsloth: TRL 1.15's DPO loss runs its fused LM head, a Triton "
                "kernel with no CPU driver",
                hint=f"Make `import unsloth` work ({backend.notice or 'see quicktune doctor'}), train on a GPU, "
                "or use method: orpo.",
            )
        from trl import DPOTrainer

        trainer_class = _own_tokens_dpo(DPOTrainer)
    else:
        from trl.experimental.orpo import ORPOTrainer

        trainer_class = _own_tokens_orpo(ORPOTrainer)
    return trainer_class(
        model=model,
        args=preference_config(recipe, backend, run_dir, len(train_rows), bool(eval_rows)),
        processing_class=hf_tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=callbacks,
    )


def _drop_reference(model) -> None:
    """The reference copy is TRL's working state, not part of the trained adapter."""
    config = getattr(model, "peft_config", None)
    if config and REFERENCE_ADAPTER in config:
        model.delete_adapter(REFERENCE_ADAPTER)


def _own_tokens_dpo(dpo_trainer):
    class QuicktuneDPOTrainer(dpo_trainer):
        """DPO on the pairs quicktune tokenized (the dataset already holds the ids TRL would build)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            """A checkpoint holds the trained adapter at its root and TRL's reference copy in ``ref/``;
            transformers (5.17, ``Trainer._load_from_checkpoint``) then loads only the sub-folder
            adapters and leaves the trained one where it started. Load the trained one here; the
            reference was copied from the ``--from`` adapter when this trainer was built."""
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            model = model if model is not None else self.model
            weights = load_file(str(Path(resume_from_checkpoint) / "adapter_model.safetensors"))
            result = set_peft_model_state_dict(model, weights, adapter_name="default")
            if result.unexpected_keys:  # a checkpoint of another adapter layout: a bug, not a user mistake
                raise RuntimeError(f"{resume_from_checkpoint}: unexpected adapter weights {result.unexpected_keys[:3]}")

        def train(self, *args, **kwargs):
            output = super().train(*args, **kwargs)
            _drop_reference(self.model)
            return output

    return QuicktuneDPOTrainer


def _own_tokens_orpo(orpo_trainer):
    class QuicktuneORPOTrainer(orpo_trainer):
        """ORPO on the pairs quicktune tokenized: each row's tokens become the fields ORPO's collator pads."""

        def concatenated_forward(self, model, batch):
            """TRL (1.15, ``ORPOTrainer.concatenated_forward``) computes ORPO's SFT term "over the full prompt
            and response" of a decoder-only model: the system prompt and the user's words were trained too,
            which the recipe refuses for every other method (``train_on_responses_only``). The same logits give
            the term on the chosen answer's tokens (its end-of-turn included), as the ORPO paper defines it."""
            from torch.nn import functional

            out = super().concatenated_forward(model, batch)
            chosen_logits = out[2]  # all_logits[:len_chosen, :-1, :]
            if chosen_logits.dim() != 3:
                raise QuicktuneError(
                    "method orpo: UNSLOTH_FUSED_PREFERENCE_LOSS=1 scores pairs without the logits quicktune needs "
                    "for ORPO's SFT term on the answers only",
                    hint="Unset UNSLOTH_FUSED_PREFERENCE_LOSS for ORPO runs.",
                )
            labels = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value,
                                              device=self.accelerator.device)["concatenated_labels"]
            targets = labels[: chosen_logits.shape[0], 1:].to(chosen_logits.device)
            vocab = chosen_logits.shape[-1]
            answer_nll = functional.cross_entropy(chosen_logits.reshape(-1, vocab), targets.reshape(-1),
                                                  ignore_index=-100)  # the labels' padding and prompt
            return (*out[:4], answer_nll, *out[5:])

        def tokenize_row(self, feature, model=None) -> dict[str, Any]:
            prompt = feature["prompt_ids"]
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                ids = (prompt + feature[f"{side}_ids"])[: self.max_length]
                labels = ([-100] * len(prompt) + feature[f"{side}_ids"])[: self.max_length]
                row.update({f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                            f"{side}_labels": labels})
            return row

    return QuicktuneORPOTrainer


def logged_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged preference accuracy and reward margin (train and eval), for the manifest."""
    found = {}
    for key, name in LOGGED.items():
        values = [h[key] for h in history if key in h]
        if values:
            found[name] = round(float(values[-1]), 4)
    return found
