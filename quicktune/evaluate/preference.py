"""Preference metrics on held-out pairs, beside the task metrics of ``quicktune eval``.

For each pair the subject scores the chosen and the rejected answer to the same prompt: the
summed log-probability of the answer's tokens (its end-of-turn token included), exactly the
tokens DPO trains. ``preference_accuracy`` is the share of pairs whose chosen answer is the more
likely one; ``preference_margin`` the mean of log p(chosen) - log p(rejected), in nats. Both need
no reference model, so the base, an SFT run and a DPO run are scored on one scale. (TRL's
``rewards/margins`` in the training log is beta times the same difference *measured against the
reference model*: zero for the reference itself by construction.)
"""

from __future__ import annotations

from quicktune.data.preference import tokenize_pairs

PREFERENCE_METRICS = ("preference_accuracy", "preference_margin")
SHARES = ("preference_accuracy",)  # shown as a percentage; the margin is in nats


def answer_logps(model, tokenized_pairs) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) for each tokenized pair."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for pair in tokenized_pairs:
            scores = []
            for answer in (pair.chosen_ids, pair.rejected_ids):
                ids = torch.tensor([pair.prompt_ids + answer], device=device)
                logits = model(input_ids=ids).logits[0, len(pair.prompt_ids) - 1 : -1].float()
                targets = torch.tensor(answer, device=device)
                scores.append(float(torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()))
            out.append((scores[0], scores[1]))
    return out


def preference_scores(logps: list[tuple[float, float]]) -> dict[str, float | None]:
    if not logps:
        return dict.fromkeys(PREFERENCE_METRICS)
    margins = [chosen - rejected for chosen, rejected in logps]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        "preference_margin": round(sum(margins) / len(margins), 4),
    }


def score_pairs(model, tokenizer, pairs) -> dict[str, float | None]:
    return preference_scores(answer_logps(model, tokenize_pairs(tokenizer, pairs)))


def shown(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if name in SHARES else f"{value:+.3f}"


def change(name: str, first: float | None, last: float | None) -> str:
    if first is None or last is None:
        return "-"
    return f"{(last - first) * 100:+.1f} pts" if name in SHARES else f"{last - first:+.3f}"


def pair_metrics(model, tokenizer, eval_set) -> dict[str, float | None]:
    """Preference metrics when the held-out set holds pairs (a dpo/orpo recipe's eval data), else none."""
    pairs = getattr(eval_set, "pairs", None)
    return score_pairs(model, tokenizer, pairs) if pairs else {}
