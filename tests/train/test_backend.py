"""Greedy answers in token-budgeted batches: the same answers as one prompt at a time, in the prompts' order."""

from __future__ import annotations

from quicktune.train.backend import generate_batch_size, greedy_answers, load_backend
from tests.conftest import SMOLLM2


def test_batch_size_follows_the_tokens_per_row_within_8_and_64_rows():
    assert generate_batch_size([[1] * 130, [1] * 120], 78) == 8192 // 208  # the demo's eval: 39 rows
    assert generate_batch_size([[1] * 2000], 512) == 8  # long rows: never fewer than before
    assert generate_batch_size([[1] * 10], 20) == 64
    assert generate_batch_size([], 16) == 64


def test_batched_answers_equal_one_prompt_at_a_time_in_the_prompts_order(smollm2_tokenizer):
    from quicktune.data.check import stop_token_ids
    from quicktune.train.base_model import prepare_base

    backend = load_backend()
    model, _ = backend.load_model(prepare_base(SMOLLM2).load_from, max_seq_length=256, load_in_4bit=False,
                                  dtype="float32", full=False)
    model = backend.for_inference(model)
    questions = ["Hi", "Name three colours of the rainbow, one word each.", "2+2=?",
                 "Write one short sentence about a cat that sleeps on a warm windowsill in the afternoon sun.", "Say yes."]
    prompts = [smollm2_tokenizer.encode_prompt([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: left padding and sorting are exercised
    stops = stop_token_ids(smollm2_tokenizer)
    alone = greedy_answers(model, prompts, stops, smollm2_tokenizer.pad_id, 12, batch_size=1)
    batched = greedy_answers(model, prompts, stops, smollm2_tokenizer.pad_id, 12)
    pairs = greedy_answers(model, prompts, stops, smollm2_tokenizer.pad_id, 12, batch_size=2)
    assert batched == alone and pairs == alone
    assert len({tuple(a) for a in alone}) == len(alone)  # distinct answers: a mix-up of the order would show
