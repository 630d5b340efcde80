"""The family templates render the turn format of each family and mark answers correctly."""

from __future__ import annotations

import pytest

from quicktune import templates
from quicktune.data.masking import render_example
from quicktune.data.records import Example, Message
from quicktune.data.tokenizer import ChatTokenizer

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "unk_token": None}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Ciao"},
]
EXPECTED = {
    "chatml": (
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nCiao<|im_end|>\n"
        ),
        ["Hello<|im_end|>", "Ciao<|im_end|>"],
    ),
    "llama3": (
        (
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nCiao<|eot_id|>"
        ),
        ["Hello<|eot_id|>", "Ciao<|eot_id|>"],
    ),
    "mistral": (
        "<s>[INST]Be brief.\n\nHi[/INST]Hello</s>[INST]Bye[/INST]Ciao</s>",
        ["Hello</s>", "Ciao</s>"],
    ),
    "gemma": (
        (
            "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\nCiao<end_of_turn>\n"
        ),
        ["Hello<end_of_turn>", "Ciao<end_of_turn>"],
    ),
    "phi3": (
        (
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
            "<|user|>\nBye<|end|>\n<|assistant|>\nCiao<|end|>\n"
        ),
        ["Hello<|end|>", "Ciao<|end|>"],
    ),
}


@pytest.mark.parametrize("family", sorted(templates.FAMILY_TEMPLATES))
def test_family_renders_and_masks(family):
    text, answers = EXPECTED[family]
    source = templates.FAMILY_TEMPLATES[family]
    assert templates.render(source, CONVERSATION, special_tokens=SPECIAL) == text
    tokenizer = ChatTokenizer(backend=None, chat_template=source, special=SPECIAL, template_family=family)
    example = Example("t:1", tuple(Message(m["role"], m["content"]) for m in CONVERSATION))
    rendered = render_example(tokenizer, example)
    assert [rendered.text[a:b] for a, b in rendered.spans] == answers


def test_template_errors_are_reported():
    source = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(templates.TemplateError, match="System role not supported"):
        templates.render(source, CONVERSATION)
    with pytest.raises(templates.TemplateError, match="chat template failed"):
        templates.render("{{ messages[0].nope.deeper }}", CONVERSATION)


def test_system_is_folded_for_templates_without_a_system_role():
    """Gemma 2's template raises on a system message; the system text then opens the first user turn,
    joined by one newline as llama.cpp (llama-server, so Ollama's Jinja path) folds it."""
    source = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + templates.FAMILY_TEMPLATES["gemma"]
    )
    tokenizer = ChatTokenizer(backend=None, chat_template=source, special=SPECIAL)
    assert not tokenizer.accepts_system()
    example = Example("t:1", tuple(Message(m["role"], m["content"]) for m in CONVERSATION))
    rendered = render_example(tokenizer, example)
    assert rendered.text == EXPECTED["gemma"][0].replace("Be brief.\n\nHi", "Be brief.\nHi")
    assert [rendered.text[a:b] for a, b in rendered.spans] == EXPECTED["gemma"][1]
