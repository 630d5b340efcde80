"""The prompt-engineered baseline: ``quicktune eval RUN --against fewshot[:K]``.

Would a good prompt on the base model have done as well as the fine-tune? The base model
gets each held-out row's own prompt (its system prompt: the recipe's, as served) with K
training examples given as earlier chat turns before the question. The K examples are
chosen reproducibly: the training rows ranked by the sha256 of the training seed and the
row's text, never a row whose prompt is the same as (or nearly the same as) a held-out
prompt. Its answers are scored like the others', and the loss is taken on the held-out
answers only (the examples' answers are context, not scored), without truncation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from quicktune.data import quality
from quicktune.data.heldout import EvalSet
from quicktune.data.masking import label_tokens, render_example
from quicktune.data.records import Example, Message
from quicktune.errors import QuicktuneError

DEFAULT_SHOTS = 3
NAME = "fewshot"


def parse_against(value: str | None) -> int | None:
    """K for ``fewshot`` / ``fewshot:K``; None for anything else (base, a run, none)."""
    if value is None or not (value == NAME or value.startswith(NAME + ":")):
        return None
    if value == NAME:
        return DEFAULT_SHOTS
    count = value.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise QuicktuneError(
            f"--against {value}: the number of examples must be a whole number of at least 1",
            hint=f"e.g. --against {NAME}:3 (or just --against {NAME}: {DEFAULT_SHOTS} examples)",
        )
    return int(count)


def label(k: int) -> str:
    return f"base + {k}-shot"


def _rank(example: Example, seed: int) -> str:
    text = json.dumps(example.as_dicts(), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def pick_shots(train: list[Example], eval_set: EvalSet, k: int, seed: int) -> list[Example]:
    """K training conversations for the prompt, the same every time for the same data and seed."""
    usable = [e for e in train if e.is_chat and e.messages and e.messages[-1].role == "assistant"]
    leaks = quality.leakage_pairs(
        [quality.prompt_text(e) for e in usable], [quality.prompt_text(e) for e in eval_set.examples]
    )
    leaked = {pair.first for pair in leaks}
    candidates = [e for i, e in enumerate(usable) if i not in leaked]
    if len(candidates) < k:
        raise QuicktuneError(
            f"--against {NAME}:{k} needs {k} training conversations that are not held-out prompts; "
            f"the training data has {len(candidates)}",
            hint=f"Ask for fewer examples, e.g. --against {NAME}:{max(1, len(candidates))}.",
        )
    return sorted(candidates, key=lambda e: _rank(e, seed))[:k]


def with_shots(eval_set: EvalSet, shots: list[Example], served_system: str | None) -> EvalSet:
    """Each held-out conversation with the shots' turns (their system turns left out) before its own.

    The system prompt is the row's own, else the one the run is served with (None: the
    chat template's default, as for the base and the run)."""
    turns = tuple(m for shot in shots for m in shot.messages if m.role != "system")
    examples = []
    for example in eval_set.examples:
        own = example.messages
        if own and own[0].role == "system":
            system, rest = own[:1], own[1:]
        else:
            system, rest = ((Message("system", served_system),) if served_system else ()), own
        examples.append(Example(example.origin, (*system, *turns, *rest)))
    return EvalSet(examples, eval_set.source)


@dataclass
class AnswerTokens:
    """Token ids with labels on the held-out answers only (the shots' answers are context)."""

    input_ids: list[int]
    labels: list[int]


def held_out_answer_tokens(tokenizer, examples: list[Example], shots: list[Example]) -> list[AnswerTokens]:
    shot_answers = sum(1 for shot in shots for m in shot.messages if m.role == "assistant")
    rendered = [render_example(tokenizer, e, responses_only=True) for e in examples]
    encodings = tokenizer.encode_batch([r.text for r in rendered])
    return [
        AnswerTokens(encoding.ids, label_tokens(encoding, item.spans[shot_answers:]))
        for item, encoding in zip(rendered, encodings)
    ]
