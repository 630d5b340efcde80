"""What Ollama's Modelfile parser reads from a Modelfile's text.

quicktune writes Modelfiles; Ollama reads them with its own parser (ollama/ollama,
``parser/parser.go``), whose rules are not the ones a reader expects:

* a value is bare, ``"quoted"`` or ``\"\"\"triple-quoted\"\"\"``; quotes are only stripped from
  the ends, nothing inside is an escape (``"a\\nb"`` stays backslash-n);
* a value ends at the first line break where the text so far, trimmed, is a complete
  value (a bare word, or a quoted value whose closing quote ends that line);
* inside a value, a character that Go's ``strconv.IsPrint`` rejects is dropped, except
  tab, CR and LF: a no-break space, a zero-width space, a soft hyphen or a control
  character silently disappears.

``read_modelfile`` applies those rules, so tests and the export can read back what they
wrote and compare it with what they meant (see ``ollama.render_modelfile``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from quicktune.errors import QuicktuneError

COMMANDS = (
    "from", "license", "template", "system", "adapter", "draft",
    "renderer", "parser", "parameter", "message", "requires",
)
ROLES = ("system", "user", "assistant")
_BLANK = " \t"  # separates words; inside a value always kept
_BREAK = "\r\n"  # may end a value


def go_is_print(char: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and ASCII space.

    Go and Python each use their own Unicode version (Go 1.24: 15.0; Python 3.11: 14.0),
    so a character assigned only in the newer one differs; tests compare the two on every
    code point both know.
    """
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def dropped_characters(text: str) -> list[str]:
    """The characters of ``text`` Ollama's parser drops from a value, in order, each once."""
    return list(dict.fromkeys(c for c in text if c not in "\t\r\n" and not go_is_print(c)))


def describe_characters(chars: list[str]) -> str:
    """``U+00A0 NO-BREAK SPACE, U+200B ZERO WIDTH SPACE``: for messages."""
    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'control character')}" for c in chars)


class ModelfileSyntaxError(QuicktuneError):
    pass


@dataclass(frozen=True)
class Command:
    name: str  # "model" for FROM, the parameter's name for PARAMETER, else the command in lower case
    args: str  # MESSAGE: "role: text"


@dataclass(frozen=True)
class ReadBack:
    """A Modelfile's values, as Ollama will hold them."""

    commands: tuple[Command, ...]

    def value(self, name: str) -> str | None:
        values = [c.args for c in self.commands if c.name == name]
        return values[-1] if values else None

    @property
    def template(self) -> str | None:
        return self.value("template")

    @property
    def system(self) -> str | None:
        return self.value("system")

    @property
    def stops(self) -> list[str]:
        return [c.args for c in self.commands if c.name == "stop"]


def unquote(text: str) -> str | None:
    """A complete value without its quotes, or None while a quote is still open."""
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


class _Reader:
    def __init__(self, text: str):
        self.text = text.removeprefix("\ufeff")
        self.at = 0
        self.line = 1

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self) -> str:
        char = self.text[self.at]
        self.at += 1
        if char in _BREAK:
            self.line += 1
        return char

    def fail(self, why: str) -> ModelfileSyntaxError:
        return ModelfileSyntaxError(f"Modelfile line {self.line}: {why}")

    def word(self, allowed) -> str:
        """Characters in ``allowed`` up to one blank (consumed); anything else is an error."""
        start = self.at
        while self.peek() and allowed(self.peek()):
            self.take()
        word = self.text[start : self.at]
        if self.peek() not in _BLANK or not self.peek():
            raise self.fail(f"unexpected {self.peek()!r} after {word!r}" if self.peek() else "unexpected end of file")
        self.take()
        return word

    def value(self) -> str:
        kept: list[str] = []
        while self.peek():
            char = self.take()
            if char in _BREAK:
                done = unquote("".join(kept).strip(" \t\r\n"))
                if done is not None:
                    return done
                kept.append(char)
            elif char in _BLANK or go_is_print(char):
                kept.append(char)
        done = unquote("".join(kept).strip(" \t\r\n"))
        if done is None:
            raise self.fail("a quoted value is never closed")
        return done


def _ascii_letter(char: str) -> bool:
    return char.isascii() and char.isalpha()


def read_modelfile(text: str) -> ReadBack:
    """The commands Ollama's parser reads from ``text`` (``ModelfileSyntaxError`` where it would fail)."""
    reader = _Reader(text)
    commands = []
    while reader.peek():
        char = reader.peek()
        if char in _BLANK + _BREAK:
            reader.take()
        elif char == "#":
            while reader.peek() and reader.peek() not in _BREAK:
                reader.take()
        else:
            reader.take()  # any character starts a command word (a non-printable one is dropped); the word is checked
            word = ((char if go_is_print(char) else "") + reader.word(_ascii_letter)).lower()
            if word not in COMMANDS:
                raise reader.fail(f"unknown command {word!r}")
            if word == "parameter":
                name = reader.word(lambda c: c.isascii() and (c.isalnum() or c == "_"))
                commands.append(Command(name, reader.value()))
            elif word == "message":
                role = reader.word(_ascii_letter)
                if role not in ROLES:
                    raise reader.fail(f"message role {role!r} is not one of {', '.join(ROLES)}")
                commands.append(Command("message", f"{role}: {reader.value()}"))
            else:
                commands.append(Command("model" if word == "from" else word, reader.value()))
    if not any(c.name == "model" for c in commands):
        raise reader.fail("no FROM line")
    return ReadBack(tuple(commands))
