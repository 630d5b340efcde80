"""Chat templates: rendering a conversation exactly as the model is trained on it.

A model's own tokenizer template (a Jinja string) is used when it has one. For a
base model without one, ``model.chat_template`` names a family and the template
below is used; the same family later decides the Ollama TEMPLATE and stop tokens.
Rendering follows the conventions of Hugging Face's ``apply_chat_template`` (a
sandboxed Jinja environment with ``trim_blocks``/``lstrip_blocks``, the loop
controls extension, ``raise_exception``, ``tojson`` and ``strftime_now``), so a
model's template renders here exactly as it does in transformers, without
importing transformers.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from functools import lru_cache
from typing import Any, ClassVar

import jinja2
from jinja2 import meta, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from quicktune import template_flow

# Each family's turn format, for base models whose tokenizer has no chat template.
# Written for quicktune; a system message is folded into the first user turn where
# the family has no system role.
FAMILY_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ '[INST]' + ns.system + m['content'] + '[/INST]' }}"
        "{% set ns.system = '' %}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
        "{% else %}"
        "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
        "{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] | trim + '<end_of_turn>\\n' }}"
        "{% set ns.system = '' %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for m in messages %}"
        "{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
}


class TemplateError(Exception):
    """The chat template refused a conversation (``raise_exception`` or a Jinja error)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class GenerationBlock(Extension):
    """transformers' ``{% generation %}`` ... ``{% endgeneration %}`` tag.

    transformers uses the block to mark the assistant's tokens; its text renders as usual.
    quicktune finds the answer spans itself (``data/masking.py``), so here the block only
    renders its body, which is what makes these templates render as they do in transformers.
    """

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@lru_cache(maxsize=16)
def compile_template(source: str):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render(
    source: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str | None] | None = None,
    by_shape: bool = True,
) -> str:
    """Render ``messages`` with the Jinja chat template ``source``.

    ``tools`` is None, as in transformers without tools. A template that needs a tool list
    to render at all (the tool-use templates of Hermes 2 Pro or Command R+ loop over it) is
    rendered with an empty one instead, which is also what llama.cpp's engine sees.

    Where the template provably only copies message texts into its output
    (``template_flow``), a conversation's shape is rendered once with placeholders and each
    conversation of that shape is the placeholders filled in: the same text, without a Jinja
    render per conversation (``by_shape=False`` renders it in full regardless).
    """
    values = _values(messages, add_generation_prompt, special_tokens)
    filled = _fill_shape(source, messages, values) if by_shape else None
    return filled if filled is not None else _render_messages(source, values)


def fill_shape(
    source: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str | None] | None = None,
) -> str | None:
    """``render``'s text when it comes from the conversation's shape, else None (rendered in full)."""
    return _fill_shape(source, messages, _values(messages, add_generation_prompt, special_tokens))


def _values(messages, add_generation_prompt: bool, special_tokens: dict[str, str | None] | None) -> dict[str, Any]:
    return {"messages": messages, "add_generation_prompt": add_generation_prompt, "documents": None,
            **server_context(), **(special_tokens or {})}


def _render_messages(source: str, values: dict[str, Any]) -> str:
    try:
        return _render(source, tools=None, **values)
    except TemplateError:
        if "tools" not in template_variables(source):
            raise
        return _render(source, tools=[], **values)


# Private-use characters, in no template's own text (checked), around the message's index and a quote:
# ``tojson`` escapes the quote (and only that), so a placeholder written through it reads \ue000N\"\ue001,
# and the text filled in there is the message's text JSON-escaped the same way.
_PLACEHOLDER = '\ue000{}"\ue001'
_PLACEHOLDERS = re.compile('\ue000(\\d+)(\\\\?)"\ue001')
_SHAPES: dict[tuple, tuple[str | tuple[int, bool], ...] | None] = {}  # a shape's render, split at the placeholders


@lru_cache(maxsize=16)
def content_flow(source: str) -> template_flow.Verdict:
    """Whether ``source`` only copies message texts into its output (see ``template_flow``)."""
    if "\ue000" in source or "\ue001" in source:
        return template_flow.Verdict(False, reason="the template's text holds the placeholder characters")
    return template_flow.passes_content_through(compile_template(source).environment.parse(source))


def _fill_shape(source: str, messages: list[dict[str, str]], values: dict[str, Any]) -> str | None:
    """The render of ``messages`` from its shape's render, or None where that is not proven equal."""
    flow = content_flow(source)
    if not flow.passes:
        return None
    shape = []
    for message in messages:
        content = message.get("content")
        if type(content) is not str or (flow.trims and content != content.strip()):
            return None  # trimming a text with whitespace at its edges would change it
        shape.append((tuple(item for item in message.items() if item[0] != "content"), not content))
    key = (source, tuple(shape), tuple(sorted((k, v) for k, v in values.items() if k != "messages")))
    try:
        parts = _SHAPES[key]
    except TypeError:  # a message value that cannot be a key (a list of tool calls): render it in full
        return None
    except KeyError:
        parts = _SHAPES[key] = _shape_parts(source, messages, values)
        if len(_SHAPES) > 4096:
            _SHAPES.clear()
    if parts is None:
        return None
    pieces = list(parts)
    for at in range(1, len(pieces), 2):
        index, escaped = parts[at]
        text = messages[index]["content"]
        pieces[at] = _tojson(text)[1:-1] if escaped else text
    return "".join(pieces)


def _shape_parts(
    source: str, messages: list[dict[str, str]], values: dict[str, Any]
) -> tuple[str | tuple[int, bool], ...] | None:
    if any("\ue000" in value for value in values.values() if isinstance(value, str)):
        return None  # a special token holding the placeholder characters
    stand_ins = [{**message, "content": _PLACEHOLDER.format(at) if message["content"] else ""}
                 for at, message in enumerate(messages)]
    try:
        text = _render_messages(source, {**values, "messages": stand_ins})
    except TemplateError:
        return None  # the conversation is rendered in full, and fails there with its own message
    split = _PLACEHOLDERS.split(text)  # text, index, escape, text, index, escape, ..., text
    parts: list[str | tuple[int, bool]] = [split[0]]
    for at in range(1, len(split), 3):
        parts += [(int(split[at]), bool(split[at + 1])), split[at + 2]]
    if text.count("\ue000") != len(parts) // 2:
        return None  # a placeholder changed some other way (escaped twice, cut): render in full
    return tuple(parts)


def server_context() -> dict[str, str]:
    """The variables llama-server gives every chat template (llama.cpp ``common/chat.cpp``):
    today's date. Llama 3.1/3.3 print ``date_string`` in their system header ("Today Date:
    02 Dec 2026"), with "26 Jul 2024" when it is not given, as in transformers. Training and
    ``chat`` render it as llama-server (and so Ollama) will: the date of the render, the way
    Llama 3.2's template already does with ``strftime_now``."""
    return dict(_date_values(date.today()))


@lru_cache(maxsize=4)
def _date_values(day: date) -> dict[str, str]:  # one strftime per day, not two per render
    return {"date_string": day.strftime("%d %b %Y"), "datetime": day.strftime("%b %d %Y")}


def _render(source: str, **values: Any) -> str:
    try:
        return compile_template(source).render(**values)
    except TemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError) as exc:  # TypeError: e.g. iterating a None
        raise TemplateError(f"chat template failed: {exc}") from None


@lru_cache(maxsize=16)
def template_variables(source: str) -> frozenset[str]:
    """The variables a template reads that it does not set itself."""
    environment = compile_template(source).environment
    return frozenset(meta.find_undeclared_variables(environment.parse(source)))
