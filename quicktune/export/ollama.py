"""The Ollama Modelfile: the trained chat template in Go's text/template, stops, parameters.

Ollama cannot run a Jinja chat template; its TEMPLATE is a Go template over
``.System`` and ``.Messages``. Instead of keeping a hand-written Go template per
family (and trusting that it matches), quicktune reads the format off the trained
template itself: it renders probe conversations and takes the literal text around
each message. Chat templates of the families we support (chatml, llama3, mistral,
gemma, phi3, with their default system prompts and date headers) are all "literal
text between messages", so the Go template is a mechanical transcription of:

    HEAD(system) user1 BEFORE_ANSWER answer1 AFTER_ANSWER user2 ... userN GENERATION

The format is then checked against the Jinja template on other conversations
(multi-turn, with and without a system prompt); a template it does not fit is an
error, never a guessed TEMPLATE. Tests render the Go template with Go's own
text/template and compare it with the Jinja rendering.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from quicktune.errors import QuicktuneError

Render = Callable[..., str]  # render(messages, add_generation_prompt=...) -> str

_S, _U1, _A1, _U2, _A2, _U3 = "QtSys7", "QtUser1", "QtAnswer1", "QtUser2", "QtAnswer2", "QtUser3"
FAMILY_MARKERS = {
    "chatml": "<|im_start|>",
    "llama3": "<|start_header_id|>",
    "mistral": "[INST]",
    "gemma": "<start_of_turn>",
    "phi3": "<|user|>",
}


class TemplateUnsupported(QuicktuneError):
    pass


@dataclass(frozen=True)
class TurnFormat:
    """A chat template as the literal text around each message of a conversation."""

    head: str  # before the first user message, no system message (may hold a default system prompt)
    system_before: str  # before the system text ...
    system_after: str  # ... and after it; in "last_user" mode, what follows the system text
    system_place: str  # "head": opens the conversation; "last_user": opens the last user message
    before_answer: str
    after_answer: str
    generation: str  # after the last user message: the generation prompt
    bos: str = ""  # text the template opens with that llama.cpp adds itself as BOS (left out of TEMPLATE)

    @property
    def family(self) -> str:
        text = self.head + self.before_answer + self.generation
        return next((name for name, marker in FAMILY_MARKERS.items() if marker in text), "custom")

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt as Ollama will build it from the TEMPLATE (BOS included)."""
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        out = [self.bos]
        if system and self.system_place == "head":
            out += [self.system_before, system, self.system_after]
        else:
            out.append(self.head)
        for index, message in enumerate(turns):
            if message["role"] == "user":
                if system and self.system_place == "last_user" and index == len(turns) - 1:
                    out += [system, self.system_after]
                out.append(message["content"])
            else:
                out += [self.before_answer, message["content"], self.after_answer]
        out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        last_user_system = ""
        if self.system_place == "last_user":
            last_user_system = (
                "{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}"
                + _lit(self.system_after)
                + "{{ end }}"
            )
            opening = _lit(self.head)
        else:
            opening = (
                "{{ if .System }}"
                + _lit(self.system_before)
                + "{{ .System }}"
                + _lit(self.system_after)
                + "{{ else }}"
                + _lit(self.head)
                + "{{ end }}"
            )
        return (
            opening
            + '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}'
            + last_user_system
            + "{{ .Content }}"
            + '{{ else if eq .Role "assistant" }}'
            + _lit(self.before_answer)
            + "{{ .Content }}"
            + _lit(self.after_answer)
            + "{{ end }}{{ end }}"
            + _lit(self.generation)
        )


def _lit(text: str) -> str:
    """Literal text in a Go template; quoted when it could be read as an action."""
    if "{{" in text or "}}" in text:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _split(text: str, *sentinels: str) -> list[str] | None:
    """``text`` cut at each sentinel in order, or None when one is missing or repeated."""
    parts = []
    for sentinel in sentinels:
        if text.count(sentinel) != 1:
            return None
        before, text = text.split(sentinel)
        parts.append(before)
    parts.append(text)
    return parts


def _msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


def _unsupported(why: str) -> TemplateUnsupported:
    return TemplateUnsupported(
        f"the chat template cannot be written as an Ollama TEMPLATE: {why}",
        hint="Train with model.chat_template set to one of chatml, llama3, mistral, gemma, phi3 "
        "(the model then learns a template quicktune can translate); the GGUF itself works with "
        "`quicktune chat` and llama.cpp either way.",
    )


def read_format(render: Render, *, bos: str | None = None, add_bos: bool = False) -> TurnFormat:
    """Derive the format from probe renders, then check it on more conversations.

    ``bos``/``add_bos``: the BOS token text, and whether llama.cpp adds BOS itself for
    this GGUF; then a template that writes BOS as text must not also put it in TEMPLATE.
    """
    try:
        one = _split(render(_msgs(("user", _U1)), add_generation_prompt=True), _U1)
        multi = _split(
            render(_msgs(("user", _U1), ("assistant", _A1), ("user", _U2)), add_generation_prompt=True),
            _U1,
            _A1,
            _U2,
        )
        with_system = render(_msgs(("system", _S), ("user", _U1)), add_generation_prompt=True)
    except Exception as exc:  # a template that raises on plain conversations
        raise _unsupported(f"it failed on a plain conversation ({exc})") from None
    if one is None or multi is None:
        raise _unsupported("a message's text does not appear exactly once in the rendered prompt")
    head, generation = one
    if multi[0] != head or multi[3] != generation:
        raise _unsupported("the first turn renders differently in longer conversations")
    before_answer, after_answer = multi[1], multi[2]

    system = _split(with_system, _S, _U1)
    if system is None:
        raise _unsupported("the system prompt does not appear in the rendered prompt")
    if system[2] != generation:
        raise _unsupported("a system prompt changes the generation prompt")
    place, system_before, system_after = "head", system[0], system[1]
    two_turns = render(_msgs(("system", _S), ("user", _U1), ("assistant", _A1), ("user", _U2)), add_generation_prompt=True)
    if two_turns.index(_S) > two_turns.index(_U1):  # Mistral puts the system prompt in the last user turn
        place, system_before = "last_user", ""
        if system[0] != head:
            raise _unsupported("the system prompt moves the conversation's opening")

    fmt = TurnFormat(head, system_before, system_after, place, before_answer, after_answer, generation)
    if add_bos and bos and fmt.head.startswith(bos) and (place == "last_user" or system_before.startswith(bos)):
        fmt = TurnFormat(
            head[len(bos) :],
            system_before[len(bos) :] if place == "head" else "",
            system_after,
            place,
            before_answer,
            after_answer,
            generation,
            bos=bos,
        )
    _check(fmt, render)
    return fmt


CHECK_CONVERSATIONS = [
    _msgs(("user", "Hello there.")),
    _msgs(("system", "Answer in French."), ("user", "What is 2+2?")),
    _msgs(("user", "First question?"), ("assistant", "First answer."), ("user", "Second question?")),
    _msgs(
        ("system", "You are terse.\nReply in one line."),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c\nwith a second line"),
        ("assistant", "d"),
        ("user", "e"),
    ),
]


def _check(fmt: TurnFormat, render: Render) -> None:
    for conversation in CHECK_CONVERSATIONS:
        expected = render(conversation, add_generation_prompt=True)
        if fmt.render(conversation) != expected:
            raise _unsupported(
                f"it renders a {len(conversation)}-message conversation differently than the format read off it"
            )


# --- the Modelfile ---------------------------------------------------------------------------


@dataclass
class ModelfileSettings:
    gguf_name: str  # FROM ./<gguf_name>, beside the Modelfile
    name: str  # the Ollama model name in the header's commands
    modelfile_name: str
    stops: list[str]
    temperature: float
    top_p: float
    num_ctx: int
    system: str | None = None


def stop_tokens(end_of_turn: str | None, eos: str | None) -> list[str]:
    stops = [token for token in (end_of_turn, eos) if token]
    return list(dict.fromkeys(stops))


def _quoted(text: str) -> str:
    if '"""' in text:
        raise QuicktuneError('a Modelfile value cannot contain """ (TEMPLATE or SYSTEM)')
    return f'"""{text}"""'


def modelfile_template() -> str:
    return resources.files("quicktune").joinpath("Modelfile.template").read_text(encoding="utf-8")


def render_modelfile(fmt: TurnFormat, settings: ModelfileSettings) -> str:
    if not settings.stops:
        raise QuicktuneError("no stop token: the model's end-of-turn token is unknown")
    values = {
        "name": settings.name,
        "modelfile": settings.modelfile_name,
        "family": fmt.family,
        "gguf": settings.gguf_name,
        "template": _quoted(fmt.go_template()),
        "stops": "\n".join(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in settings.stops),
        "temperature": _number(settings.temperature),
        "top_p": _number(settings.top_p),
        "num_ctx": str(settings.num_ctx),
        "system": f"SYSTEM {_quoted(settings.system)}" if settings.system else "",
    }
    return string.Template(modelfile_template()).substitute(values).rstrip() + "\n"


def _number(value: float) -> str:
    return f"{value:g}"


# --- rendering the TEMPLATE the way Ollama does ----------------------------------------------


class GoUnavailable(QuicktuneError):
    pass


def go_render(go_template: str, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Render with Go's text/template, over the data Ollama passes (see ollama_render.go)."""
    import shutil
    import subprocess

    go = shutil.which("go")
    if go is None:
        raise GoUnavailable("Go is not installed (Ollama renders TEMPLATE with Go's text/template)")
    source = resources.files("quicktune.export").joinpath("ollama_render.go")
    with resources.as_file(source) as path:
        done = subprocess.run(
            [go, "run", str(path)],
            input=json.dumps({"template": go_template, "conversations": conversations}),
            capture_output=True,
            text=True,
            env={**os.environ, "GO111MODULE": "off"},
        )
    if done.returncode != 0:
        raise QuicktuneError(f"Go could not render the TEMPLATE: {done.stderr.strip()}")
    return json.loads(done.stdout)


def go_parity(fmt: TurnFormat, render: Render, conversations: list[list[dict[str, str]]]) -> str:
    """'n/m conversations' rendered identically by Go and by the chat template, or why skipped."""
    conversations = CHECK_CONVERSATIONS + list(conversations)
    try:
        rendered = go_render(fmt.go_template(), conversations)
    except GoUnavailable as exc:
        return f"skipped: {exc}"
    expected = [render(c, add_generation_prompt=True) for c in conversations]
    same = sum(fmt.bos + got == want for got, want in zip(rendered, expected))
    return f"{same}/{len(conversations)} conversations"
