"""The eval loss in batches: the mean NLL of the trained tokens, as one row at a time with every logit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from quicktune.backend import load_backend
from quicktune.data.masking import IGNORE, tokenize_examples
from quicktune.data.records import Example, Message
from quicktune.inference import reference_loss
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.slow


def _reference(model, rows) -> float:
    """One row at a time, logits at every position (how quicktune computed it before)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(row.labels[1:])
            keep = labels != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def test_batched_loss_equals_one_row_at_a_time_with_every_logit(smollm2_tokenizer):
    from quicktune.base_model import prepare_base

    backend = load_backend()
    model, _ = backend.load_model(prepare_base(SMOLLM2).load_from, max_seq_length=256, load_in_4bit=False,
                                  dtype="float32", full=False)
    model = backend.for_inference(model)
    turns = [
        (("user", "Hi"), ("assistant", "Hello!")),
        (("user", "Name three colours."), ("assistant", "Red, green and blue.")),
        # two answers: a trained span in the middle of the row, far from its end
        (("user", "2+2=?"), ("assistant", "4, and that is the whole answer to your question."), ("user", "And 3+3?"),
         ("assistant", "6")),
        (("system", "Answer in one word."), ("user", "Capital of France?"), ("assistant", "Paris")),
    ]
    examples = [Example(f"t:{i}", tuple(Message(role, text) for role, text in row)) for i, row in enumerate(turns)]
    rows = tokenize_examples(smollm2_tokenizer, examples, max_length=256)
    assert len({len(r.input_ids) for r in rows}) == len(rows)  # different lengths: padding is exercised
    untrained = SimpleNamespace(input_ids=rows[1].input_ids, labels=[IGNORE] * len(rows[1].input_ids))
    reference = _reference(model, rows)
    for batch_tokens in (1, 64, 2048):  # one row a pass, two rows, all rows
        loss = reference_loss(model, [*rows, untrained], batch_tokens=batch_tokens)
        assert loss == pytest.approx(reference, abs=2e-5)
    assert reference_loss(model, [untrained]) is None
