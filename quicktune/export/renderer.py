"""Which renderer Ollama uses to build a prompt for an export: its Go TEMPLATE or llama.cpp's Jinja.

Since Ollama v0.30 a GGUF model runs in llama-server, and the Modelfile's TEMPLATE is not
always the one that renders the prompt. Read from Ollama's source (ollama/ollama at fb30760,
v0.33.0-rc2: ``server/images.go`` ``GetModel``/``shouldPreferChatTemplate``, ``server/routes.go``
``shouldUseGoTemplate``), the rule for a GGUF with a TEMPLATE and no RENDERER/PARSER is:

* ``OLLAMA_GO_TEMPLATE`` set on the Ollama server decides alone: true -> TEMPLATE, false -> Jinja.
* A GGUF without ``tokenizer.chat_template`` -> TEMPLATE.
* Otherwise Ollama compares capabilities, found by plain substring tests on the Jinja source
  (tools: ``tools`` or ``tool_call``; thinking: ``<think>`` and ``</think>``, or a
  ``content.split('</think>')`` without ``reasoning_content``) and by the fields the Go template
  uses (tools: ``.Tools``; insert: ``.Suffix``; thinking: ``.Thinking`` inside the messages loop).
  More capabilities in the Jinja template -> Jinja, unless only the TEMPLATE round-trips tool
  calls; equal capabilities including tools -> Jinja when only the Jinja template round-trips.

quicktune's TEMPLATE uses only ``.System``, ``.Messages``, ``.Role`` and ``.Content``, so an
export is rendered by llama.cpp exactly when its chat template mentions tools or thinking.
(Harmony and the built-in renderers are for gpt-oss and models Ollama ships; not ours.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JINJA, GO = "jinja", "go"
TOOLS, THINKING, INSERT = "tools", "thinking", "insert"


@dataclass(frozen=True)
class OllamaRenderer:
    renderer: str  # JINJA: llama-server renders the GGUF's chat template; GO: the Modelfile TEMPLATE
    reason: str

    @property
    def label(self) -> str:
        name = "llama.cpp Jinja" if self.renderer == JINJA else "Go TEMPLATE"
        return f"{name} ({self.reason})"


def chat_template_capabilities(chat_template: str | None) -> list[str]:
    """Ollama's capabilities of a Jinja chat template (``chatTemplateCapabilities``)."""
    text = chat_template or ""
    capabilities = []
    if "tools" in text or "tool_call" in text:
        capabilities.append(TOOLS)
    splits_thinking = "content.split('</think>')" in text or 'content.split("</think>")' in text
    if ("<think>" in text and "</think>" in text) or (
        splits_thinking and "reasoning_content" not in text and "<SPECIAL_12>" not in text
    ):
        capabilities.append(THINKING)
    return capabilities


def chat_template_round_trips_tools(chat_template: str | None) -> bool:
    """``chatTemplateHasToolRoundTrip``: the template renders tool calls and tool results."""
    text = chat_template or ""
    if TOOLS not in chat_template_capabilities(text):
        return False
    calls = "tool_calls" in text or "assistant_tool_call" in text
    results = (
        "tool_response",
        "tool_results",
        "role'] == 'tool'",
        "role'] == \"tool\"",
        "role\"] == 'tool'",
        'role"] == "tool"',
        "message.role == 'tool'",
        'message.role == "tool"',
        "ipython",
    )
    return calls and any(marker in text for marker in results)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_FIELD = re.compile(r"(?<!\d)\.([A-Za-z_]\w*)")  # every name of a chain: .Function.Name, $m.Role


def go_template_fields(go_template: str) -> set[str]:
    """The field names a Go template reads (lower case), like Ollama's ``Template.Vars``."""
    fields: set[str] = set()
    for action in re.findall(r"{{-?(.*?)-?}}", go_template, flags=re.S):
        fields.update(name.lower() for name in _FIELD.findall(_STRING.sub("", action)))
    return fields


def go_template_capabilities(go_template: str | None) -> list[str]:
    """``goTemplateCapabilities``. Thinking is approximated by a ``.Thinking`` field: Ollama
    also wants text tags around it inside the messages loop, which only raises the count."""
    if not go_template:
        return []
    fields = go_template_fields(go_template)
    return [cap for cap, field in ((TOOLS, "tools"), (INSERT, "suffix"), (THINKING, "thinking")) if field in fields]


def go_template_round_trips_tools(go_template: str | None) -> bool:
    if not go_template:
        return False
    fields = go_template_fields(go_template)
    if "tools" not in fields or "toolcalls" not in fields:
        return False
    return 'eq .Role "tool"' in go_template or "tool_response" in go_template or "TOOL_RESULTS" in go_template


def _prefers_chat_template(chat_template: str, go_template: str | None) -> bool:
    jinja_caps = chat_template_capabilities(chat_template)
    go_caps = go_template_capabilities(go_template)
    if len(jinja_caps) > len(go_caps):
        return not go_template_round_trips_tools(go_template) or chat_template_round_trips_tools(chat_template)
    if set(jinja_caps) != set(go_caps) or TOOLS not in jinja_caps:
        return False
    return chat_template_round_trips_tools(chat_template) and not go_template_round_trips_tools(go_template)


def _go_bool(value: str) -> bool:
    """Ollama's ``envconfig.BoolWithDefault``: Go's ParseBool, and true for anything unparsable."""
    return value not in ("0", "f", "F", "false", "FALSE", "False")


def ollama_renderer(
    chat_template: str | None, go_template: str | None, go_template_env: str | None = None
) -> OllamaRenderer:
    """The renderer Ollama will use for a GGUF with ``chat_template`` and a Modelfile TEMPLATE.

    ``go_template_env``: ``OLLAMA_GO_TEMPLATE`` as set where Ollama runs (None: not set, the default).
    """
    if go_template_env:
        if _go_bool(go_template_env) and go_template:
            return OllamaRenderer(GO, f"OLLAMA_GO_TEMPLATE={go_template_env}")
        return OllamaRenderer(JINJA, f"OLLAMA_GO_TEMPLATE={go_template_env}")
    if not go_template:
        return OllamaRenderer(JINJA, "no TEMPLATE")
    if not chat_template:
        return OllamaRenderer(GO, "the GGUF has no chat template")
    if _prefers_chat_template(chat_template, go_template):
        has = " and ".join(chat_template_capabilities(chat_template))
        return OllamaRenderer(JINJA, f"template has {has}")
    return OllamaRenderer(GO, "template has no tools or thinking")
