"""A batch's common first tokens computed once: the same loss and gradients as the plain forward, on
the real SmolLM2 with LoRA through the backend training uses, and the guards that keep it off."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from quicktune.backend import load_backend
from quicktune.data.masking import IGNORE, tokenize_examples
from quicktune.data.records import Example, Message
from quicktune.train import shared_prefix
from tests.conftest import SMOLLM2

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_prefix_length_counts_the_real_tokens_every_row_begins_with():
    import torch

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 0], [1, 2, 3, 4, 7, 0]])
    assert shared_prefix.prefix_length(ids, torch.ones_like(ids)) == 3
    left_padded = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert shared_prefix.prefix_length(ids, left_padded) == 0  # a pad is not a shared token
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix.prefix_length(same, None) == 2  # at least one token of each row stays its own


def _model(dropout: float = 0.0):
    from quicktune.base_model import prepare_base

    backend = load_backend()
    model, _ = backend.load_model(prepare_base(SMOLLM2).load_from, max_seq_length=256, load_in_4bit=False,
                                  dtype="float32", full=False)
    return backend.add_lora(model, r=8, alpha=16, dropout=dropout, targets=TARGETS, dora=False, rslora=False,
                            gradient_checkpointing=False, seed=3407)


def _demo_batch(tokenizer, rows: int = 4):
    import torch

    lines = resources.files("quicktune.demo").joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    examples = [
        Example(f"train.jsonl:{n}", tuple(Message(m["role"], m["content"]) for m in json.loads(line)["messages"]))
        for n, line in enumerate(lines, 1)
    ]
    tokenized = tokenize_examples(tokenizer, examples, max_length=256)
    width = max(len(t.input_ids) for t in tokenized)
    ids = torch.full((rows, width), tokenizer.pad_id)
    labels = torch.full((rows, width), IGNORE)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, t in enumerate(tokenized):  # right-padded, as TRL's collator pads
        ids[row, : len(t.input_ids)] = torch.tensor(t.input_ids)
        labels[row, : len(t.labels)] = torch.tensor(t.labels)
        mask[row, : len(t.input_ids)] = 1
    return ids, mask, labels


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_shared_prefix_gives_the_plain_loss_and_gradients(smollm2_tokenizer):
    model = _model()
    model.train()
    ids, mask, labels = _demo_batch(smollm2_tokenizer)
    prefix = shared_prefix.prefix_length(ids, mask)
    assert prefix >= shared_prefix.MIN_PREFIX  # the demo's system prompt, inside the chat markup
    plain_loss, plain_grads = _loss_and_grads(model, ids, mask, labels)

    said = []
    state = shared_prefix.install(model, say=said.append)
    assert state is not None
    loss, grads = _loss_and_grads(model, ids, mask, labels)
    assert state.checked and state.off is None and said == []
    assert state.max_difference < 1e-5
    assert (state.batches, state.tokens_saved) == (1, prefix * (ids.shape[0] - 1))
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in plain_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((grads[name] - grad).abs().max()) <= 1e-4 * scale, name

    # rows that share less than MIN_PREFIX tokens take the plain forward
    ids[1, 1] = ids[0, 1] + 1
    _loss_and_grads(model, ids, mask, labels)
    assert state.batches == 1


@pytest.mark.slow
def test_not_installed_where_one_prefix_would_change_the_numbers():
    assert shared_prefix.install(_model(dropout=0.1), say=print) is None  # one prefix, one dropout mask
    model = _model()
    model.get_base_model().model.gradient_checkpointing = True  # the cache is off under checkpointing
    assert shared_prefix.install(model, say=print) is None


def test_a_first_batch_that_differs_from_the_plain_forward_switches_it_off():
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPast

    plain = BaseModelOutputWithPast(last_hidden_state=torch.ones(2, 5, 3))
    wrong = BaseModelOutputWithPast(last_hidden_state=torch.ones(2, 5, 3) * 1.01)
    said = []
    state = shared_prefix.SharedPrefix(_say=said.append)
    out = shared_prefix.check_first_batch(state, wrong, lambda: plain)
    assert out is plain and state.off is not None and "off for this run" in said[0]

    state = shared_prefix.SharedPrefix(_say=said.append)
    close = BaseModelOutputWithPast(last_hidden_state=torch.ones(2, 5, 3) * (1 + 1e-6))
    assert shared_prefix.check_first_batch(state, close, lambda: plain) is close and state.off is None
