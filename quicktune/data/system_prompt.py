"""One system prompt from the training rows to the Modelfile and ``chat``.

The rule (README, "System prompt"):
- ``data.system_prompt`` is inserted into every row without a system turn, and the same
  text is what the Modelfile's SYSTEM and ``chat`` send;
- without it, when every training row carries the same system prompt, that one is sent;
- otherwise nothing is sent, so serving renders the chat template's default (if it has
  one), as training did for the rows without a system turn.
``data.shared_instruction: system`` moves the instruction most rows share (quicktune.data.instruction)
into their system turn, after ``data.system_prompt`` or the row's own: the system turn those rows then
have is what is sent, so the user types the input alone.
``export.system`` replaces what is sent. That is a deliberate choice (a prompt shared by
only some rows, a wording tried after training), so a prompt no row was trained with is a
warning at ``data check``, ``train --dry-run`` and ``export``, not an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from quicktune.data.instruction import SharedInstruction
from quicktune.data.records import Example

KEPT = 10  # most common system prompts kept in the report and the manifest
SHOWN = 3  # ... and named in a warning
_PROBE_SYSTEM = "QUICKTUNE-SYSTEM-PROBE"
_PROBE_USER = "QUICKTUNE-USER-PROBE"


@dataclass
class SystemPrompts:
    """The system prompts the training rows carry, and the one serving sends."""

    trained: str | None  # what serving must send to match training; None: no system message
    trained_from: str  # "data.shared_instruction", "data.system_prompt", "every training row" or
    # "the chat template's default"
    served: str | None  # the Modelfile's SYSTEM and chat's system message
    served_from: str  # "export.system" or trained_from
    rows: int  # chat rows in the training set
    common: list[tuple[str | None, int]] = field(default_factory=list)  # (text or None: no system turn, rows)
    distinct: int = 0
    template_default: str | None = None  # the template's own text for rows without a system turn, if any
    warning: str | None = None
    shared_instruction: SharedInstruction | None = None  # the instruction most rows share, kept or moved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def system_of(example: Example) -> str | None:
    first = example.messages[0] if example.messages else None
    return first.content if first is not None and first.role == "system" else None


def summarise(
    train: list[Example],
    *,
    recipe_prompt: str | None,
    export_prompt: str | None,
    template_default: str | None = None,
    shared: SharedInstruction | None = None,
) -> SystemPrompts | None:
    """What training renders and what serving will send (None when there is no chat row); ``shared``: the
    instruction most rows share, whose system turn is the one sent when it was moved there."""
    chat = [e for e in train if e.is_chat]
    if not chat:
        return None
    counts = Counter(system_of(e) for e in chat)
    if shared is not None and shared.mode == "system" and shared.system:
        trained, trained_from = shared.system, "data.shared_instruction"
    elif recipe_prompt:
        trained, trained_from = recipe_prompt, "data.system_prompt"
    elif len(counts) == 1 and None not in counts:
        (trained,) = counts
        trained_from = "every training row"
    else:
        trained, trained_from = None, "the chat template's default"
    served, served_from = (export_prompt, "export.system") if export_prompt else (trained, trained_from)
    return SystemPrompts(
        trained=trained,
        trained_from=trained_from,
        served=served,
        served_from=served_from,
        rows=len(chat),
        common=counts.most_common(KEPT),
        distinct=len(counts),
        template_default=template_default,
        warning=_warning(served, served_from, counts, len(chat), len(counts)),
        shared_instruction=shared,
    )


def _warning(served: str | None, served_from: str, counts: Counter, rows: int, distinct: int) -> str | None:
    # Rows are stripped when the template trims messages, so " text\n" was trained as "text".
    if counts.get(served) or (served is not None and counts.get(served.strip())):
        return None
    what = "no system prompt (the chat template's default)" if served is None else f"the system prompt {_short(served)}"
    training = "; ".join(f"{_label(text)} on {n}" for text, n in counts.most_common(SHOWN))
    more = f" ({distinct} different)" if distinct > SHOWN else ""
    fix = {
        "export.system": "remove export.system to send what training used, or keep it if the difference is deliberate",
        "data.shared_instruction": "no row kept the moved instruction; set data.shared_instruction: keep",
        "data.system_prompt": "every row has its own system turn, so data.system_prompt was inserted into none; "
        "remove it, or drop the rows' own system turns",
        "the chat template's default": "set data.system_prompt to the one to send (rows without one get it too), "
        "or export.system to send one without changing training",
    }[served_from]
    return (
        f"the Modelfile and chat will send {what} ({served_from}), which no training row was trained with "
        f"(training: {training} of {rows} rows{more}); {fix}"
    )


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _label(text: str | None) -> str:
    return "no system turn" if text is None else _short(text)


def template_default(tokenizer) -> str | None:
    """The system text a chat template renders for a conversation without one (SmolLM2's
    "You are a helpful AI assistant named SmolLM, ..."), or None when it adds none or the
    template is not laid out as system block + conversation."""
    user = [{"role": "user", "content": _PROBE_USER}]
    try:
        plain = tokenizer.render(user, add_generation_prompt=True)
        system = [{"role": "system", "content": _PROBE_SYSTEM}]
        with_system = tokenizer.render([*system, *user], add_generation_prompt=True)
    except Exception:  # a template that cannot render a probe has no default to show
        return None
    before, found, after = with_system.partition(_PROBE_SYSTEM)
    if not found or not plain.startswith(before) or not plain.endswith(after) or len(plain) < len(before) + len(after):
        return None
    return plain[len(before) : len(plain) - len(after)].strip() or None


def served_prompt(recipe, manifest: dict[str, Any]) -> str | None:
    """The system prompt the Modelfile and ``chat`` send for a trained run."""
    if recipe.export.system:
        return recipe.export.system
    recorded = (manifest.get("data") or {}).get("system_prompt")
    if recorded is not None:
        return recorded.get("trained")
    return recipe.data.system_prompt  # a run trained before quicktune recorded what it trained with


def served_warning(recipe, manifest: dict[str, Any]) -> str | None:
    """``export``'s warning when the system prompt it sends is one no training row had."""
    recorded = (manifest.get("data") or {}).get("system_prompt")
    if not recorded:
        return None  # trained before quicktune recorded it, or no chat rows
    served = served_prompt(recipe, manifest)
    if served == recorded["served"]:
        return recorded["warning"]
    # export.system edited in the run's recipe.yaml after training: compare with what was recorded
    counts = Counter(dict(recorded["common"]))
    return _warning(served, "export.system", counts, recorded["rows"], recorded["distinct"])
