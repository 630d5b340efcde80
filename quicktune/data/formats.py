"""Detect a record format and normalise every record into an ``Example``.

Each file has its own format: detected from its first record unless ``data.format`` pins
it (one name for every file, or a mapping of file to format; see ``format_for``).

Formats:
- ``messages`` (OpenAI): ``{"messages": [{"role": ..., "content": ...}, ...]}``
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|..., "value": ...}], "system"?: ...}``
- ``alpaca``: ``{"instruction": ..., "input"?: ..., "output": ..., "system"?: ...}``
- ``text``: ``{"text": ...}``: raw text, every token trained.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quicktune.data.load import RawRecord
from quicktune.data.records import ROLES, Example, Message, Problems
from quicktune.errors import DataError

FORMATS = ("messages", "sharegpt", "alpaca", "text")
LOOKS = {
    "messages": "messages (OpenAI)",
    "sharegpt": "sharegpt (conversations)",
    "alpaca": "alpaca (instruction/output)",
    "text": "text",
    "preference": "preference pairs (prompt/chosen/rejected)",
}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


class Invalid(Exception):
    """One record's problem: the field path and what is wrong."""


def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "chosen" in record and "rejected" in record:  # TRL's preference format (quicktune.data.preference)
        return "preference"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    return None


def format_for(setting: str | Mapping[str, str], path: str | Path) -> str:
    """The format ``data.format`` gives one file: its own entry in a mapping (else auto), or the one name."""
    if isinstance(setting, str):
        return setting
    wanted = Path(path).resolve()
    return next((fmt for name, fmt in setting.items() if Path(name).resolve() == wanted), "auto")


def normalise(
    records: Iterable[RawRecord],
    fmt: str,
    problems: Problems,
    *,
    source: str,
    system_prompt: str | None = None,
) -> tuple[str, list[Example]]:
    """Turn one file's raw records into examples; every bad record goes into ``problems``.

    ``fmt`` is ``auto`` or a name from ``FORMATS``; the detected format is returned. A record
    that fails because it is in another format says which one, and the fix is hinted once.
    """
    examples: list[Example] = []
    pinned = fmt != "auto"
    seen = False
    looks_like: Counter[str] = Counter()
    for raw in records:
        seen = True
        if raw.error is not None:
            problems.add(raw.origin, raw.error)
            continue
        if fmt == "auto":
            detected = detect_format(raw.value)
            if detected is None:
                keys = sorted(raw.value) if isinstance(raw.value, dict) else type(raw.value).__name__
                raise DataError(
                    f"{raw.origin}: cannot tell the data format from {keys}",
                    hint="Use one of: messages, conversations (sharegpt), instruction+output (alpaca), text; "
                    "or set data.format in the recipe.",
                )
            fmt = detected
        if fmt == "preference":
            raise DataError(
                f"{raw.origin}: a preference pair (prompt/chosen/rejected); this recipe trains on conversations",
                hint="Preference pairs are trained with method: dpo or method: orpo (README, Preference training).",
            )
        try:
            examples.append(_PARSERS[fmt](raw.value, raw.origin, system_prompt))
        except Invalid as exc:
            other = detect_format(raw.value)
            if other is not None and other != fmt:
                looks_like[other] += 1
                problems.add(raw.origin, f"{exc} — this record looks like {LOOKS[other]}")
            else:
                problems.add(raw.origin, str(exc))
    if not seen:
        problems.add(source, "no records found (the file is empty)")
    if looks_like:
        problems.hint(_mismatch_hint(Path(source).name, fmt, pinned, looks_like))
    return fmt, examples


def _mismatch_hint(name: str, fmt: str, pinned: bool, looks_like: Counter[str]) -> str:
    other, count = looks_like.most_common(1)[0]
    if pinned:
        return (
            f"{name}: data.format says {fmt}, but {count} of its records look like {other}. "
            f"Set data.format: auto (each file's format is detected on its own), "
            f"or pin this file: data.format: {{{name}: {other}}}."
        )
    return (
        f"{name}: its first record is {fmt}, but {count} later record(s) look like {other}; "
        "one file holds one format: put each format in its own file."
    )


def require_dict(value: Any) -> dict[str, Any]:
    """``value`` itself when it is a JSON object; else ``Invalid``."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a JSON object, got {type(value).__name__}")
    return value


def _string(record: dict[str, Any], key: str, *, label: str | None = None, required: bool = True) -> str | None:
    label = label or key
    if key not in record or record[key] is None:
        if required:
            raise Invalid(f"{label}: missing field")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise Invalid(f"{label}: expected a string, got {type(value).__name__}")
    return value


# --- one parser for every list of turns ---------------------------------------------------------------


def _known_role(role: Any, label: str) -> str:
    if role not in ROLES:
        raise Invalid(f"{label}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def _openai_role(turn: dict[str, Any], label: str) -> str:
    """``role``: a string naming one of ``ROLES``."""
    return _known_role(_string(turn, "role", label=label), label)


def _trl_role(turn: dict[str, Any], label: str) -> str:
    """``role`` in a preference pair: present and one of ``ROLES`` (a value that is not a string is an
    unknown role there, not a wrong type)."""
    role = turn.get("role")
    if role is None:
        raise Invalid(f"{label}: missing field")
    return _known_role(role, label)


def _sharegpt_role(turn: dict[str, Any], label: str) -> str:
    """``from``: a ShareGPT speaker name in any case, mapped onto one of ``ROLES``."""
    speaker = _string(turn, "from", label=label)
    role = _SHAREGPT_ROLES.get(speaker.lower())
    if role is None:
        raise Invalid(
            f"{label}: unknown speaker {speaker!r}; expected one of {', '.join(_SHAREGPT_ROLES)} (any case)"
        )
    return role


@dataclass(frozen=True)
class TurnLayout:
    """How a record spells one turn: the key naming the speaker, the key holding the text, and how the
    speaker is read into a role (``read_role(turn, "label[i].key")``, raising ``Invalid``)."""

    speaker: str
    text: str
    read_role: Callable[[dict[str, Any], str], str]


OPENAI_TURNS = TurnLayout("role", "content", _openai_role)  # {"role": ..., "content": ...}
TRL_TURNS = TurnLayout("role", "content", _trl_role)  # the same, inside a preference pair
SHAREGPT_TURNS = TurnLayout("from", "value", _sharegpt_role)  # {"from": "human"|"gpt"|..., "value": ...}


def parse_turns(
    value: Any, label: str, layout: TurnLayout = OPENAI_TURNS, *, expected: str = "a list"
) -> list[Message]:
    """The ``Message``s of a list of turns found at ``label`` (``messages``, ``prompt``, ...).

    Reads each turn's role and text as ``layout`` spells them; the first problem is raised as
    ``Invalid`` naming its field (``label[i].key``). ``expected`` says what ``value`` should have
    been when it is not a list. Turn order is not checked here (``check_turns``)."""
    if not isinstance(value, list):
        raise Invalid(f"{label}: expected {expected}, got {type(value).__name__}")
    messages = []
    for index, turn in enumerate(value):
        where = f"{label}[{index}]"
        if not isinstance(turn, dict):
            raise Invalid(f"{where}: expected an object with {layout.speaker} and {layout.text}")
        role = layout.read_role(turn, f"{where}.{layout.speaker}")
        messages.append(Message(role, _string(turn, layout.text, label=f"{where}.{layout.text}")))
    return messages


def _finish(messages: list[Message], origin: str, system_prompt: str | None, where: str) -> Example:
    if system_prompt and (not messages or messages[0].role != "system"):
        messages.insert(0, Message("system", system_prompt))
    check_turns(messages, where)
    return Example(origin=origin, messages=tuple(messages))


def check_turns(messages: list[Message], where: str) -> None:
    """System first (optional), then user/assistant alternating, ending on the assistant."""
    if not messages:
        raise Invalid(f"{where}: no messages")
    expected = "user"
    for index, message in enumerate(messages):
        label = f"{where}[{index}]"
        if message.role == "system":
            if index != 0:
                raise Invalid(f"{label}: a system message may only come first")
            continue
        if message.role != expected:
            raise Invalid(f"{label}: wrong role order: expected {expected}, got {message.role}")
        if not message.content.strip():
            raise Invalid(f"{label}: empty {message.role} turn")
        expected = "assistant" if expected == "user" else "user"
    if messages[-1].role != "assistant":
        raise Invalid(f"{where}: the last turn must be the assistant's (nothing to learn after it)")


# --- one parser per format ------------------------------------------------------------------------------


def _turn_list(record: dict[str, Any], key: str) -> list[Any]:
    """``record[key]``, present and a list."""
    turns = record.get(key)
    if turns is None:
        raise Invalid(f"{key}: missing field")
    if not isinstance(turns, list):
        raise Invalid(f"{key}: expected a list, got {type(turns).__name__}")
    return turns


def _parse_messages(value: Any, origin: str, system_prompt: str | None) -> Example:
    record = require_dict(value)
    messages = parse_turns(_turn_list(record, "messages"), "messages")
    return _finish(messages, origin, system_prompt, "messages")


def _parse_sharegpt(value: Any, origin: str, system_prompt: str | None) -> Example:
    record = require_dict(value)
    turns = _turn_list(record, "conversations")
    messages = []
    system = _string(record, "system", required=False)
    if system:
        messages.append(Message("system", system))
    messages += parse_turns(turns, "conversations", SHAREGPT_TURNS)
    return _finish(messages, origin, system_prompt, "conversations")


def _parse_alpaca(value: Any, origin: str, system_prompt: str | None) -> Example:
    record = require_dict(value)
    instruction = _string(record, "instruction")
    extra = _string(record, "input", required=False)
    output = _string(record, "output")
    if not instruction.strip():
        raise Invalid("instruction: empty")
    if not output.strip():
        raise Invalid("output: empty assistant turn")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = []
    system = _string(record, "system", required=False)
    if system:
        messages.append(Message("system", system))
    messages += [Message("user", prompt), Message("assistant", output)]
    return _finish(messages, origin, system_prompt, "messages")


def _parse_text(value: Any, origin: str, system_prompt: str | None) -> Example:
    record = require_dict(value)
    text = _string(record, "text")
    if not text.strip():
        raise Invalid("text: empty")
    return Example(origin=origin, text=text)


def strip_message_edges(examples: list[Example]) -> tuple[list[Example], int]:
    """Examples whose messages have no leading or trailing whitespace, and how many messages changed."""
    out, changed = [], 0
    for example in examples:
        messages = tuple(Message(m.role, m.content.strip()) for m in example.messages)
        changed += sum(a.content != b.content for a, b in zip(example.messages, messages))
        out.append(replace(example, messages=messages) if example.is_chat else example)
    return out, changed


_PARSERS = {
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca,
    "text": _parse_text,
}
