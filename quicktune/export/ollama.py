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

A template that trims each message (Llama 3.x, Gemma) cannot be matched by a Go template,
which has no trim: the format records it (``trims``), and the checks send messages as a
client must, edges stripped. Every Modelfile is read back with Ollama's parser rules
(quicktune/ollama_rules.py) before it is written: TEMPLATE, SYSTEM and stops must read as meant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from quicktune.errors import QuicktuneError
from quicktune.export.renderer import JINJA, OllamaRenderer
from quicktune.ollama_rules import describe_characters, dropped_characters, read_modelfile

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
    trims: bool = False  # the template strips message edges; Ollama's TEMPLATE cannot, so clients must

    def client_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """What a client must send Ollama to get the trained prompt: edges stripped when the template trims."""
        return [{**m, "content": m["content"].strip()} for m in messages] if self.trims else messages

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
    two_turns = render(
        _msgs(("system", _S), ("user", _U1), ("assistant", _A1), ("user", _U2)), add_generation_prompt=True
    )
    if two_turns.index(_S) > two_turns.index(_U1):  # Mistral puts the system prompt in the last user turn
        place, system_before = "last_user", ""
        if system[0] != head:
            raise _unsupported("the system prompt moves the conversation's opening")

    trims = _trims(render)
    fmt = TurnFormat(head, system_before, system_after, place, before_answer, after_answer, generation, trims=trims)
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
            trims=trims,
        )
    _check(fmt, render)
    return fmt


def _trims(render: Render) -> bool:
    """Whether ``render`` strips the edges of a message's text (probed, not assumed per family)."""
    edged = "  \n QtEdge \n "
    rendered = render(_msgs(("user", edged)), add_generation_prompt=True)
    return edged not in rendered and edged.strip() in rendered


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
    # Whitespace at a message's edges: trimmed by Llama 3.x's and Gemma's templates, never by Ollama's Go
    # TEMPLATE; the check sends it as a client must (TurnFormat.client_messages).
    _msgs(("system", " Be exact.\n"), ("user", "  hi  \n"), ("assistant", "\nhello "), ("user", "\tbye ")),
]


def _check(fmt: TurnFormat, render: Render) -> None:
    for conversation in CHECK_CONVERSATIONS:
        expected = render(conversation, add_generation_prompt=True)
        if fmt.render(fmt.client_messages(conversation)) != expected:
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
    num_ctx_note: str = ""  # why this context size: a comment line above PARAMETER num_ctx
    renderer: OllamaRenderer | None = None  # which renderer Ollama will use (export/renderer.py)
    system_key: str = "export.system"  # the recipe key the system prompt came from, for messages
    template_check: str | None = None  # what this export checked of TEMPLATE (``template_check``); None: nothing


class ModelfileValueError(QuicktuneError):
    """A value Ollama's Modelfile parser would not read back as written."""


def stop_tokens(end_of_turn: str | None, eos: str | None) -> list[str]:
    """The end-of-turn and eos tokens' texts: each one special token, which Ollama reads literally."""
    stops = list(dict.fromkeys(token for token in (end_of_turn, eos) if token))
    for stop in stops:
        if any(c.isspace() for c in stop) or '"' in stop or dropped_characters(stop):
            raise ModelfileValueError(
                f"the stop token {stop!r} cannot be a PARAMETER stop that Ollama reads as written",
                hint="A stop is one special token's text, without whitespace, quotes or control characters; "
                "check the tokenizer's eos token and the chat template's end of turn.",
            )
    return stops


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelfileValueError(f'{what} contains """, which ends a Modelfile value early')
    return f'"""{text}"""'


def modelfile_template() -> str:
    return resources.files("quicktune").joinpath("Modelfile.template").read_text(encoding="utf-8")


def render_modelfile(fmt: TurnFormat, settings: ModelfileSettings) -> str:
    if not settings.stops:
        raise QuicktuneError("no stop token: the model's end-of-turn token is unknown")
    if settings.system and fmt.trims:  # trained without edge whitespace; Ollama inserts SYSTEM as it is
        settings = dataclasses.replace(settings, system=settings.system.strip())
    values = {
        "name": settings.name,
        "modelfile": settings.modelfile_name,
        "family": fmt.family,
        "gguf": settings.gguf_name,
        "template": _quoted(fmt.go_template(), "TEMPLATE"),
        "stops": "\n".join(f'PARAMETER stop "{stop}"' for stop in settings.stops),
        "temperature": _number(settings.temperature),
        "top_p": _number(settings.top_p),
        "num_ctx": str(settings.num_ctx),
        "num_ctx_comment": f"# num_ctx {settings.num_ctx}: {settings.num_ctx_note}\n" if settings.num_ctx_note else "",
        "system": f"SYSTEM {_quoted(settings.system, settings.system_key)}" if settings.system else "",
        "renderer_comment": _renderer_comment(settings.renderer),
        "template_check": _template_check_comment(settings.template_check),
        "trim_comment": (
            "# The chat template trims each message; this TEMPLATE (Go) cannot: send messages without\n"
            "# leading or trailing whitespace (the model was trained on them stripped).\n"
        )
        if fmt.trims
        else "",
    }
    text = string.Template(modelfile_template()).substitute(values).rstrip() + "\n"
    _read_back(text, fmt, settings)
    return text


def _read_back(text: str, fmt: TurnFormat, settings: ModelfileSettings) -> None:
    """Read the Modelfile as Ollama's parser will; anything it would change is an error, not a surprise."""
    if settings.system and dropped_characters(settings.system):
        dropped = dropped_characters(settings.system)
        kept = "".join(c for c in settings.system if c not in dropped)
        raise ModelfileValueError(
            f"{settings.system_key}: Ollama's Modelfile parser drops {describe_characters(dropped)} from SYSTEM, "
            f"so Ollama would serve {kept!r}, not the system prompt the model was trained with",
            hint=f"Replace those characters in {settings.system_key} (a no-break space with a plain space) and "
            f"train again, or set export.system to {kept!r} to serve that text knowingly.",
        )
    if dropped_characters(fmt.go_template()):
        raise ModelfileValueError(
            f"the TEMPLATE holds {describe_characters(dropped_characters(fmt.go_template()))}, "
            "which Ollama's Modelfile parser drops",
            hint="The characters come from the chat template; set model.chat_template to a family template.",
        )
    back = read_modelfile(text)
    wrong = [
        name
        for name, read, meant in (
            ("TEMPLATE", back.template, fmt.go_template()),
            ("SYSTEM", back.system, settings.system or None),
            ("PARAMETER stop", back.stops, settings.stops),
        )
        if read != meant
    ]
    if wrong:
        raise ModelfileValueError(f"Ollama would read the Modelfile's {', '.join(wrong)} differently than written")


def template_check(fmt: TurnFormat, render: Render) -> str:
    """What this export checked of the TEMPLATE, for the Modelfile's header: rendered with Go's text/template
    (as Ollama renders it) against the chat template, or why it was not, and what was checked instead."""
    parity = go_parity(fmt, render, [])
    if parity.startswith("skipped: "):
        return (f"Not rendered with Go's text/template on this export ({parity.removeprefix('skipped: ')}); "
                f"checked only that the turn format read off the chat template reproduces it on "
                f"{len(CHECK_CONVERSATIONS)} conversations (in Python).")
    return f"Rendered with Go's text/template (as Ollama does) on this export: {parity} equal to the chat template."


def _template_check_comment(check: str | None) -> str:
    """The header's sentence on what was checked, as comment lines of under 100 columns (no line breaks from
    the text itself: a Go error message could hold one)."""
    words = " ".join((check or "Not rendered with Go's text/template for this file.").split()).split(" ")
    lines, line = [], ""
    for word in words:
        limit = 78 if not lines else 96  # the first line follows "# template syntax. "
        if line and len(line) + 1 + len(word) > limit:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n# ".join([*lines, line])


def _renderer_comment(renderer: OllamaRenderer | None) -> str:
    if renderer is None:
        return ""
    line = f"# Ollama renders prompts with: {renderer.label}.\n"
    if renderer.renderer == JINJA:
        line += (
            "#   llama-server renders the chat template inside the GGUF (checked by quicktune against\n"
            "#   training: see the export's fidelity check); TEMPLATE is used with OLLAMA_GO_TEMPLATE=1.\n"
        )
    return line


def _number(value: float) -> str:
    return f"{value:g}"


# --- rendering the TEMPLATE the way Ollama does ----------------------------------------------


class GoUnavailable(QuicktuneError):
    pass


def go_render(go_template: str, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Render with Go's text/template, over the data Ollama passes (see ollama_render.go)."""
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
        rendered = go_render(fmt.go_template(), [fmt.client_messages(c) for c in conversations])
    except GoUnavailable as exc:
        return f"skipped: {exc}"
    expected = [render(c, add_generation_prompt=True) for c in conversations]
    same = sum(fmt.bos + got == want for got, want in zip(rendered, expected))
    return f"{same}/{len(conversations)} conversations"
