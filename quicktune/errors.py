"""User-facing errors.

A ``QuicktuneError`` is a mistake the user can fix (a bad recipe, a broken data
line, a missing file). The CLI prints it as a short message with exit status 2 and
no traceback. Anything else is a bug and is allowed to raise.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a process ended by SIGINT (128 + 2)


class QuicktuneError(Exception):
    """An error caused by user input, shown without a traceback."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.hint = hint

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class RecipeError(QuicktuneError):
    """The recipe (or an override) is invalid."""


class DataError(QuicktuneError):
    """The training or eval data is invalid."""
