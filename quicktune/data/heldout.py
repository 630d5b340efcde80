"""Held-out conversations: what evaluation and the export's fidelity check answer.

Each one ends with the reference answer; the prompt is everything before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from quicktune.data.check import load_examples, prepare_for_recipe
from quicktune.data.preference import holds_pairs, load_pairs
from quicktune.data.records import Example, Problems
from quicktune.errors import QuicktuneError
from quicktune.recipe import PREFERENCE_METHODS, Recipe


@dataclass
class EvalSet:
    examples: list[Example]  # each ends with the reference answer
    source: str
    pairs: list | None = None  # preference pairs (dpo/orpo): examples[i] is pairs[i]'s prompt + chosen answer

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [e.as_dicts()[:-1] for e in self.examples]

    @property
    def references(self) -> list[str]:
        return [e.messages[-1].content for e in self.examples]

    @property
    def sha256(self) -> str:
        rows = [e.as_dicts() for e in self.examples]
        if self.pairs:  # the rejected answers are scored too
            rows = [[*row, {"rejected": p.rejected}] for row, p in zip(rows, self.pairs)]
        payload = json.dumps(rows, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _all_pairs(data_files: list[str]) -> bool:
    return all(holds_pairs(path) for path in data_files)


def load_eval_set(
    recipe: Recipe, data_files: list[str], limit: int | None, *, train_if_no_eval: bool = False
) -> EvalSet:
    """``--data`` files, else the recipe's held-out split (the same rows training evaluated on);
    with ``train_if_no_eval``, the last training rows when the recipe holds nothing out.

    A dpo/orpo run reads ``--data`` files of preference pairs as pairs (scored with preference
    accuracy too) and files of conversations as conversations: its task metrics on the rows an
    SFT run is scored on, e.g. the demo's eval.jsonl for ``smollm2-demo-dpo``."""
    pairs = None
    if data_files and recipe.method in PREFERENCE_METHODS and _all_pairs(data_files):
        problems = Problems()
        pairs, _ = load_pairs(list(data_files), recipe.data.format, recipe.data.system_prompt, "eval", problems)
        problems.raise_if_any(", ".join(data_files))
        examples, source = [p.as_example() for p in pairs], ", ".join(data_files)
    elif data_files:
        examples, _ = load_examples(data_files, fmt=recipe.data.format, system_prompt=recipe.data.system_prompt)
        source = ", ".join(data_files)
    else:
        prepared = prepare_for_recipe(recipe, tokenize=False)
        examples = prepared.eval
        pairs = getattr(prepared, "eval_pairs", None)  # a dpo/orpo recipe's held-out pairs
        held_from = ", ".join(recipe.data.eval) or f"{recipe.data.eval_fraction:.0%} of train"
        source = f"the recipe's eval data ({held_from})"
        if not examples and train_if_no_eval:
            examples, source = prepared.train[::-1], "the last training rows (the recipe has no eval data)"
            pairs = None
    usable = [e for e in examples if e.is_chat and e.messages and e.messages[-1].role == "assistant"]
    if not usable:
        raise QuicktuneError(
            "no held-out conversations ending with an assistant answer to evaluate on",
            hint="Give a file with --data, or set data.eval / data.eval_fraction in the recipe.",
        )
    if pairs:  # every pair's example is usable: pairs stay aligned with the examples
        return EvalSet(examples[:limit] if limit else examples, source, pairs[:limit] if limit else pairs)
    return EvalSet(usable[:limit] if limit else usable, source)
