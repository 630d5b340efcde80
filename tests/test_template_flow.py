"""A conversation rendered from its shape is the same text as the conversation rendered in full.

``templates.render`` fills a shape's placeholders only for templates ``template_flow`` proves only
copy message texts into their output. These tests check that on llama.cpp's copies of the models'
official templates and the family templates (every conversation, filled or not, equals the full
render), that the common templates are in fact filled, and that each way a template can look at a
text makes the proof refuse it.
"""

from __future__ import annotations

import random

import pytest

from quicktune import templates
from quicktune.templates import FAMILY_TEMPLATES, TemplateError

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
# Texts a chat row holds: plain, empty, edge whitespace (which trimming templates change), Jinja
# syntax, the placeholder characters themselves, other scripts, a special token, newlines.
TEXTS = [
    "Hi", "", " padded ", "two\nlines", "{{ x }} {% if %}", "\ue0000\ue001", "ünï 汉字", "  ", "\n",
    "<|im_end|>", "ends with a newline\n", "What is 2 + 2?",
]
STRIPPED = [text for text in TEXTS if text == text.strip()]


def conversations(rng: random.Random, count: int, texts: list[str]):
    for _ in range(count):
        roles = ["system"] if rng.random() < 0.5 else []
        roles += ["user" if turn % 2 == 0 else "assistant" for turn in range(rng.randint(1, 5))]
        yield [{"role": role, "content": rng.choice(texts)} for role in roles], rng.random() < 0.5


def full_or_error(source, messages, add_generation_prompt, *, by_shape):
    try:
        return templates.render(
            source, messages, add_generation_prompt=add_generation_prompt, special_tokens=SPECIAL, by_shape=by_shape
        )
    except TemplateError as exc:
        return f"TemplateError: {exc}"


def official_and_family_templates(folder) -> dict[str, str]:
    sources = {f"family {name}": source for name, source in FAMILY_TEMPLATES.items()}
    sources.update({path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.jinja"))})
    return sources


def test_every_template_renders_the_same_from_its_shape(official_templates):
    sources = official_and_family_templates(official_templates)
    assert len(sources) > 40
    rng = random.Random(35)
    filled = 0
    for name, source in sources.items():
        for messages, prompt in conversations(rng, 40, TEXTS if rng.random() < 0.5 else STRIPPED):
            expected = full_or_error(source, messages, prompt, by_shape=False)
            assert full_or_error(source, messages, prompt, by_shape=True) == expected, (name, messages, prompt)
            filled += templates.fill_shape(
                source, messages, add_generation_prompt=prompt, special_tokens=SPECIAL
            ) is not None
    assert filled > 300  # the comparison above covers filled renders, not only full ones


@pytest.mark.parametrize(
    ("name", "trims"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", False),
        ("microsoft-Phi-3.5-mini-instruct.jinja", False),
        ("google-gemma-2-2b-it.jinja", True),
        ("ibm-granite-granite-3.3-2B-Instruct.jinja", False),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", True),  # tojson on a tool message's text, trim on the rest
        ("meta-llama-Llama-3.2-3B-Instruct.jinja", True),
        ("meta-llama-Llama-3.3-70B-Instruct.jinja", True),
    ],
)
def test_common_templates_are_proven_to_pass_texts_through(official_templates, name, trims):
    source = (official_templates / name).read_text(encoding="utf-8")
    verdict = templates.content_flow(source)
    assert verdict.passes, verdict.reason
    assert verdict.trims is trims
    conversation = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    filled = templates.fill_shape(source, conversation, special_tokens=SPECIAL)
    assert filled is not None
    assert filled == templates.render(source, conversation, special_tokens=SPECIAL, by_shape=False)


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATES))
def test_family_templates_are_proven(family):
    assert templates.content_flow(FAMILY_TEMPLATES[family]).passes


SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_smollm2_template_the_demo_trains_with_is_filled():
    conversation = [{"role": "user", "content": "Lunch with Ana at noon"}, {"role": "assistant", "content": "{}"}]
    assert templates.fill_shape(SMOLLM2, conversation) == templates.render(SMOLLM2, conversation, by_shape=False)
    assert "SmolLM" in templates.fill_shape(SMOLLM2, conversation)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% if 'x' in messages[0]['content'] %}A{% endif %}{{ messages[0]['content'] }}", "Compare"),
        ("{% set c = messages[0]['content'] %}{% if c == 'x' %}A{% endif %}{{ c }}", "Compare"),
        ("{{ messages[0]['content'].split('x')[0] }}", ".split"),
        ("{{ messages[0].content.strip() }}", ".strip"),
        ("{{ messages[0]['content'] | length }}", "length"),
        ("{{ messages[0]['content'] | upper }}", "upper"),
        ("{{ messages | tojson }}", "tojson"),
        ("{{ messages[0]['content'][0] }}", "indexes"),
        ("{{ messages[0] }}", "whole message"),
        ("{% for key in messages[0] %}{{ key }}{% endfor %}", "iterates"),
        ("{% for part in messages[0]['content'] %}{{ part }}{% endfor %}", "iterates"),
        ("{% macro say(x) %}{{ x }}{% endmacro %}{{ say(messages[0]['content']) }}", "Macro"),
        ("{% for m in messages %}{{ loop.nextitem['role'] if loop.nextitem }}{% endfor %}", "loop.nextitem"),
        ("{{ strftime_now('%H:%M') }}{{ messages[0]['content'] }}", "time of day"),
        ("{% set ns = namespace(t='') %}{% set ns.t = messages[0].content %}{{ ns | string }}", "namespace"),
        ("{% for m in messages %}{{ m.items() | list }}{% endfor %}", ".items"),
        ("{{ raise_exception('bad: ' + messages[0]['content']) }}", "Call"),
        ("{% filter upper %}{{ messages[0]['content'] }}{% endfilter %}", "FilterBlock"),
        ("{{ messages[0]['content'] * 2 }}", "Mul"),
        ("{{ messages[0]['content'] | default('none') }}", "default"),
        ("{{ messages[0]['content'] | tojson(indent=2) }}", "tojson"),
        ("{% set a, b = messages %}{% if a['content'] == 'x' %}A{% endif %}", "unpacks"),
        ("{% for role, text in messages %}{{ text }}{% endfor %}", "unpacks"),
        (
            (
                "{% set ns = namespace(t='') %}{% set ns.t = messages[0].content %}{% set other = ns %}"
                "{% if other.t == 'x' %}A{% endif %}"
            ),
            "holds messages at one place",
        ),
        ("{{ messages[0].fromkeys(['a']) }}", ".fromkeys"),
    ],
)
def test_a_template_that_looks_at_a_text_is_rendered_in_full(source, reason):
    verdict = templates.content_flow(source)
    assert not verdict.passes
    assert reason in verdict.reason
    conversation = [{"role": "user", "content": "x"}]
    assert templates.fill_shape(source, conversation) is None


@pytest.mark.parametrize(
    "source",
    [
        "{% if messages[0]['content'] %}[{{ messages[0]['content'] }}]{% else %}(empty){% endif %}",
        "{{ (messages[0]['content'] or 'none') + '|' }}",
        (
            "{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}"
            "{% set ns.system = m.content + '\\n' %}{% else %}{{ ns.system + m.content }}{% endif %}{% endfor %}"
        ),
        "{% set system %}S: {{ messages[0].content }}{% endset %}{{ system }}{% if system is defined %}!{% endif %}",
        "{{ messages[0]['content'] | trim }}{{ messages | length }}{{ messages[-1]['role'] }}",
        "{{ messages[0]['content'] | tojson }}|{{ messages[1]['content'] }}|{{ ('\"' + messages[1].content)|tojson }}",
    ],
)
def test_allowed_uses_render_the_same(source):
    assert templates.content_flow(source).passes, templates.content_flow(source).reason
    for texts in (["", "x"], ["a b", "c"], ["", ""], ["\ue0000\ue001", "{{ y }}"], ['say "hi"\\n', 'ü\t\\ "q"'],
                  ['\ue0000"\ue001', '\ue0001\\"\ue001']):
        conversation = [{"role": "system", "content": texts[0]}, {"role": "user", "content": texts[1]}]
        assert templates.render(source, conversation) == templates.render(source, conversation, by_shape=False)


def test_trimming_templates_fill_only_texts_without_edge_whitespace():
    source = FAMILY_TEMPLATES["llama3"]
    assert templates.content_flow(source).trims
    edged = [{"role": "user", "content": " hi \n"}]
    assert templates.fill_shape(source, edged, special_tokens=SPECIAL) is None
    assert templates.render(source, edged, special_tokens=SPECIAL) == templates.render(
        source, edged, special_tokens=SPECIAL, by_shape=False
    )
    clean = [{"role": "user", "content": "hi"}]
    assert templates.fill_shape(source, clean, special_tokens=SPECIAL) is not None


def test_a_shape_the_template_refuses_raises_as_the_full_render_does(official_templates):
    source = (official_templates / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert templates.fill_shape(source, conversation, special_tokens=SPECIAL) is None
    with pytest.raises(TemplateError, match="System role not supported"):
        templates.render(source, conversation, special_tokens=SPECIAL)


def test_placeholder_characters_in_the_template_or_a_special_token_are_never_filled():
    assert not templates.content_flow("\ue000{{ messages[0]['content'] }}").passes
    conversation = [{"role": "user", "content": "hi"}]
    source = "{{ bos_token }}{{ messages[0]['content'] }}"
    odd = {"bos_token": "\ue0000\ue001"}
    assert templates.fill_shape(source, conversation, special_tokens=odd) is None
    assert templates.render(source, conversation, special_tokens=odd) == "\ue0000\ue001hi"


def test_a_text_escaped_twice_is_rendered_in_full():
    source = "{{ messages[0]['content'] | tojson | tojson }}"
    conversation = [{"role": "user", "content": 'a "b"'}]
    assert templates.content_flow(source).passes  # the flow is fine; the placeholder comes out escaped twice
    assert templates.fill_shape(source, conversation) is None
    assert templates.render(source, conversation) == '"\\"a \\\\\\"b\\\\\\"\\""'
