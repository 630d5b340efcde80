"""An instruction most rows share: found in the first user turn, and moved into the system turn on request.

An Alpaca file whose rows all say "Turn this blog post title into a URL slug." with the title as
``input`` is trained with the instruction in front of every title; a user who types the title alone
(``quicktune chat``, Ollama) asks the model something it was never trained on. ``find_shared`` finds
such an instruction: a prefix, a suffix or both of the first user turn, shared by at least ``MOST``
of the chat rows. ``data.shared_instruction: system`` moves it into the system turn
(``move_to_system``), where the Modelfile's SYSTEM and ``chat`` send it (quicktune.data.system_prompt);
``typed_form`` is a row as a user sends it, which eval scores beside the training form.

What counts as an instruction, so that a question style ("How do I ...") does not: a prefix ends
at a line break or after ``.:?!`` and whitespace ("Question: ", "Translate to French:\\n"); a suffix
starts on its own line, or is a whole sentence ("... Answer with the slug only."). Either holds at
least ``MIN_CHARS`` characters with a letter, and a row has it only when something else is left.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from quicktune.data.records import Example, Message

MOST = 0.8  # share of the chat rows that must have it: below, the others are a real second task
MIN_ROWS = 10  # fewer chat rows than this say nothing about "most rows"
MIN_CHARS = 8  # shorter than this ("Q: ") is a label, not an instruction
SENTENCE_ENDS = ".:?!"
JOIN = "\n\n"  # between a row's own system turn and the instruction moved after it
MODES = ("keep", "system")


@dataclass
class SharedInstruction:
    """The instruction the rows share and what was done with it (``data.shared_instruction``)."""

    prefix: str  # as it stands in the rows, with the whitespace after it; "" when there is none
    suffix: str  # as it stands, with the whitespace before it; "" when there is none
    rows: int  # chat rows whose first user turn has it and more besides
    of_rows: int  # chat rows looked at (the train files')
    mode: str = "keep"  # "keep": left in the user turn; "system": moved into the system turn
    moved: int = 0  # rows (train and eval files) whose instruction was moved
    system: str | None = None  # the system turn most moved rows got: what serving sends
    text: str = field(init=False)  # the instruction as a system prompt carries it: prefix and suffix, stripped

    def __post_init__(self) -> None:
        self.text = JOIN.join(part.strip() for part in (self.prefix, self.suffix) if part.strip())

    @property
    def share(self) -> float:
        return self.rows / self.of_rows if self.of_rows else 0.0

    def remainder(self, content: str) -> str | None:
        """What is left of a user turn without the instruction (stripped); None when it does not have it."""
        if not content.startswith(self.prefix) or not content.endswith(self.suffix):
            return None
        if len(content) < len(self.prefix) + len(self.suffix):
            return None
        rest = content[len(self.prefix) : len(content) - len(self.suffix)].strip()
        return rest or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> SharedInstruction | None:
        """The instruction as the manifest recorded it (``to_dict``); None when none was."""
        if not value:
            return None
        return cls(**{key: value[key] for key in ("prefix", "suffix", "rows", "of_rows", "mode", "moved", "system")})


def first_user(example: Example) -> int | None:
    """The index of a chat row's first user turn."""
    return next((i for i, m in enumerate(example.messages) if m.role == "user"), None)


def find_shared(examples: Sequence[Example], share: float = MOST) -> SharedInstruction | None:
    """The instruction at least ``share`` of the chat ``examples`` put before or after what they ask
    in their first user turn; None when there is none (or fewer than ``MIN_ROWS`` chat rows).

    Costs two sorts of the first user turns: the longest prefix shared by a share of the rows is the
    longest common prefix of some window of that many rows in sorted order (and the same for suffixes,
    on the reversed texts)."""
    texts = [e.messages[i].content for e in examples if e.is_chat and (i := first_user(e)) is not None]
    if len(texts) < MIN_ROWS:
        return None
    needed = math.ceil(share * len(texts))
    prefix = _prefix_boundary(_longest_shared(texts, needed))
    suffix = _suffix_boundary(_longest_shared([t[::-1] for t in texts], needed)[::-1])
    found = []
    for pre, suf in dict.fromkeys(((prefix, suffix), (prefix, ""), ("", suffix))):
        if pre or suf:
            candidate = SharedInstruction(pre, suf, 0, len(texts))
            candidate.rows = sum(candidate.remainder(t) is not None for t in texts)
            if candidate.rows >= needed:
                found.append(candidate)
    both = [f for f in found if f.prefix and f.suffix]
    return both[0] if both else max(found, key=lambda f: f.rows, default=None)  # a tie: the prefix


def _longest_shared(texts: list[str], needed: int) -> str:
    """The longest prefix at least ``needed`` of ``texts`` start with."""
    ordered = sorted(texts)
    best = ""
    for first in range(len(ordered) - needed + 1):
        a, b = ordered[first], ordered[first + needed - 1]
        longer = len(best) + 1
        if a[:longer] != b[:longer] or len(a) < longer:  # this window cannot beat the best: most are skipped here
            continue
        best = _common_prefix(a, b)
    return best


def _common_prefix(a: str, b: str) -> str:
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; find the largest such
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return a[:low]


def _prefix_boundary(prefix: str) -> str:
    """The longest start of ``prefix`` that ends in whitespace after a line break or after ``.:?!``."""
    for end in range(len(prefix), 0, -1):
        if not prefix[end - 1].isspace() or (end < len(prefix) and prefix[end].isspace()):
            continue
        head = prefix[:end].rstrip()
        if _worth_it(head) and ("\n" in prefix[len(head) : end] or head[-1] in SENTENCE_ENDS):
            return prefix[:end]
    return ""


def _suffix_boundary(suffix: str) -> str:
    """The longest end of ``suffix`` that starts with whitespace and is its own line or whole sentence(s)."""
    for start in range(len(suffix)):
        if not suffix[start].isspace() or (start > 0 and suffix[start - 1].isspace()):
            continue
        tail = suffix[start:].lstrip()
        if not _worth_it(tail):
            continue
        own_line = "\n" in suffix[start : len(suffix) - len(tail)]
        if own_line or (tail[0].isupper() and tail.rstrip()[-1] in SENTENCE_ENDS):
            return suffix[start:]
    return ""


def _worth_it(text: str) -> bool:
    return len(text.strip()) >= MIN_CHARS and any(c.isalpha() for c in text)


def move_to_system(examples: Sequence[Example], found: SharedInstruction) -> tuple[list[Example], int]:
    """Each row that has the instruction, with it taken out of the first user turn and put at the end of
    the system turn (or as the system turn, when the row has none); the others as they are. Returns the
    rows and how many moved."""
    out, moved = [], 0
    for example in examples:
        index = first_user(example) if example.is_chat else None
        rest = None if index is None else found.remainder(example.messages[index].content)
        if rest is None:
            out.append(example)
            continue
        messages = list(example.messages)
        messages[index] = Message("user", rest)
        if messages[0].role == "system":
            messages[0] = Message("system", f"{messages[0].content}{JOIN}{found.text}")
        else:
            messages.insert(0, Message("system", found.text))
        out.append(replace(example, messages=tuple(messages)))
        moved += 1
    return out, moved


def moved_system(examples: Sequence[Example], found: SharedInstruction) -> str | None:
    """The system turn most rows with the moved instruction have (what serving must send)."""
    counts = Counter(
        e.messages[0].content
        for e in examples
        if e.is_chat and e.messages and e.messages[0].role == "system" and e.messages[0].content.endswith(found.text)
    )
    return counts.most_common(1)[0][0] if counts else None


def without_instruction(example: Example, found: SharedInstruction) -> Example:
    """A chat row with the instruction left out of its first user turn (as it is, when it does not have it)."""
    index = first_user(example) if example.is_chat else None
    rest = None if index is None else found.remainder(example.messages[index].content)
    if rest is None:
        return example
    messages = list(example.messages)
    messages[index] = Message("user", rest)
    return replace(example, messages=tuple(messages))


def typed_form(example: Example, found: SharedInstruction | None, served: str | None) -> Example:
    """A chat row as a user of the served model sends it: the instruction left out of the first user turn,
    and the served system prompt (or none: the chat template's default) in place of the row's own."""
    if found is not None:
        example = without_instruction(example, found)
    messages = [m for m in example.messages if m.role != "system"]
    if served:
        messages.insert(0, Message("system", served))
    return replace(example, messages=tuple(messages))


def describe(found: SharedInstruction) -> str:
    """One sentence for the data report: the instruction, how many rows have it, and what it means."""
    where = "in front of" if found.prefix and not found.suffix else "after" if not found.prefix else "around"
    head = (
        f"{found.rows} of the {found.of_rows} rows of the train files ({found.share:.0%}) put the same instruction "
        f"{where} what they ask: {_short(found.text)}"
    )
    if found.mode == "system":
        return (
            f"{head}; data.shared_instruction: system moved it into the system turn of {found.moved} row(s) (train "
            "and eval), which the Modelfile's SYSTEM and `quicktune chat` send: users type the input alone"
            + (f"; the other {found.of_rows - found.rows} train row(s) are kept as they are"
               if found.rows < found.of_rows else "")
        )
    return (
        f"{head}; it is trained in the user turn, so a user of the served model (chat, Ollama) must type it "
        "before every input, or the model is asked something it was not trained on; set "
        "data.shared_instruction: system to train it as the system prompt, which the Modelfile and chat send"
    )


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
