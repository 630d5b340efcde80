"""Which version of a recipe is promoted: ``runs/<recipe>/promotions.jsonl``, an append-only history.

One JSON object a line, oldest first: each promotion (``quicktune runs promote``) and each rollback
(``quicktune runs rollback``), with who, when, why, the run, the metrics compared and the Ollama
tags. Lines are never changed or removed; the file is rewritten whole (``write_atomic``) with one
line more, under the recipe folder's lock, so two promotions at once never both record.

What is promoted now follows from the history like a stack: a promotion puts its run on top, a
rollback takes the top one off. ``promoted`` is the top, ``promoted~1`` the one below it (what a
rollback goes back to). No torch here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError
from quicktune.runs.files import write_atomic
from quicktune.runs.locks import RunInUse, lock_run

HISTORY = "promotions.jsonl"
PROMOTE, ROLLBACK = "promote", "rollback"


@dataclass(frozen=True)
class Promotion:
    """One line of the history."""

    action: str  # PROMOTE or ROLLBACK
    run: str  # recipe/vN: the version promoted by this line (for a rollback: the one gone back to)
    version: str  # vN
    when: str
    who: str
    why: str  # the --reason, or "passed the checks" / "rolled back from recipe/vM"
    name: str  # the Ollama model name: tags NAME:vN and NAME:latest
    tags: list[str] = field(default_factory=list)
    ollama: str = "skipped"  # "done" (quicktune ran it), "printed" (no ollama on PATH) or "skipped" (--no-ollama)
    modelfile: str | None = None  # relative to the run folder: what `ollama create` read
    forced: bool = False
    replaced: str | None = None  # recipe/vM promoted before this line, if any
    compared: dict[str, Any] | None = None  # the eval scores the checks compared (see quicktune/promote.py)


def history_path(recipe_dir: Path) -> Path:
    return recipe_dir / HISTORY


def read_history(recipe_dir: Path) -> list[Promotion]:
    """Every line of ``recipe_dir``'s history, oldest first ([] when nothing was promoted yet).

    A line that is not a promotion (edited by hand) is an error naming the file and the line."""
    path = history_path(recipe_dir)
    if not path.is_file():
        return []
    known = {f.name for f in fields(Promotion)}
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            entries.append(Promotion(**{k: v for k, v in data.items() if k in known}))
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise QuicktuneError(
                f"{path}:{number}: not a promotion ({exc})",
                hint="quicktune writes this file and never changes a line; if it was edited by hand, undo the edit.",
            ) from None
    return entries


def in_force(entries: list[Promotion]) -> list[Promotion]:
    """The promotions still in force, oldest first: the last is what is promoted now."""
    stack: list[Promotion] = []
    for entry in entries:
        if entry.action == ROLLBACK:
            stack = stack[:-1]
        else:
            stack.append(entry)
    return stack


def promoted_entry(recipe_dir: Path, back: int = 0) -> Promotion | None:
    """The promotion ``back`` steps below the current one (0: the current), or None."""
    stack = in_force(read_history(recipe_dir))
    return stack[-1 - back] if back < len(stack) else None


def append_entry(recipe_dir: Path, entry: Promotion) -> None:
    """Adds ``entry`` as the history's last line; the caller holds ``lock_history``."""
    path = history_path(recipe_dir)
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    if before and not before.endswith("\n"):
        before += "\n"
    write_atomic(path, before + json.dumps(asdict(entry), ensure_ascii=False) + "\n")


@contextlib.contextmanager
def lock_history(recipe_dir: Path, what: str) -> Iterator[Path]:
    """Holds ``recipe_dir`` (its ``.lock``) while a promotion or rollback checks and records; a second
    one at the same time fails at once with ``RunInUse`` (it does not wait)."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(lock_run(recipe_dir, what))
    except RunInUse as busy:
        holder = busy.message.partition(" is in use: ")[2] or "another process"
        raise RunInUse(
            f"{recipe_dir.name}: another promotion or rollback is being recorded: {holder}",
            hint="Wait for it to end, then run the command again (`quicktune runs history` shows what it recorded).",
        ) from None
    with held:
        yield recipe_dir
