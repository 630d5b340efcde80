"""The one conversation form every data format is turned into."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from quicktune.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


def message_dicts(messages: Iterable[Message]) -> list[dict[str, str]]:
    """Messages as the ``{"role", "content"}`` dicts a chat template renders (``parse_turns`` reads them back)."""
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass(frozen=True, slots=True)
class Example:
    """One training row. ``messages`` for chat data; ``text`` alone for raw text."""

    origin: str  # "path:line", for error messages and reports
    messages: tuple[Message, ...] = ()
    text: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.text is None

    def as_dicts(self) -> list[dict[str, str]]:
        return message_dicts(self.messages)


@dataclass
class Problems:
    """Collects every problem in the input so all of them are reported at once."""

    items: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # said once, however many lines share the cause

    def add(self, origin: str, message: str) -> None:
        self.items.append(f"{origin}: {message}")

    def hint(self, text: str) -> None:
        if text not in self.hints:
            self.hints.append(text)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_PROBLEMS_SHOWN]
        more = len(self.items) - len(shown)
        if more:
            shown.append(f"... and {more} more")
        raise DataError(
            f"{len(self.items)} problem(s) in {what}; nothing was processed",
            problems=shown,
            hint="\n".join(self.hints) or "Fix these lines and run `quicktune data check` again.",
        )
