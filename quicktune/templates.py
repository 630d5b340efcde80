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
from datetime import datetime
from functools import lru_cache
from typing import Any

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


@lru_cache(maxsize=16)
def compile_template(source: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
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
) -> str:
    """Render ``messages`` with the Jinja chat template ``source``."""
    import jinja2

    template = compile_template(source)
    try:
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **(special_tokens or {}),
        )
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template failed: {exc}") from None
