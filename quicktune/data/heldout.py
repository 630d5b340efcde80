"""Held-out conversations: what evaluation and the export's fidelity check answer.

Each one ends with the reference answer; the prompt is everything before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from quicktune.data.records import Example
from quicktune.errors import QuicktuneError


@dataclass
class EvalSet:
    examples: list[Example]  # each ends with the reference answer
    source: str

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [e.as_dicts()[:-1] for e in self.examples]

    @property
    def references(self) -> list[str]:
        return [e.messages[-1].content for e in self.examples]

    @property
    def sha256(self) -> str:
        payload = json.dumps([e.as_dicts() for e in self.examples], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()



def load_eval_set(recipe, data_files: list[str], limit: int | None, *, train_if_no_eval: bool = False) -> EvalSet:
    """``--data`` files, else the recipe's held-out split (the same rows training evaluated on);
    with ``train_if_no_eval``, the last training rows when the recipe holds nothing out."""
    from quicktune.data.check import load_examples, prepare_for_recipe

    if data_files:
        examples, _ = load_examples(data_files, fmt=recipe.data.format, system_prompt=recipe.data.system_prompt)
        source = ", ".join(data_files)
    else:
        prepared = prepare_for_recipe(recipe, tokenize=False)
        examples = prepared.eval
        source = "the recipe's eval data (" + (", ".join(recipe.data.eval) or f"{recipe.data.eval_fraction:.0%} of train") + ")"
        if not examples and train_if_no_eval:
            examples, source = prepared.train[::-1], "the last training rows (the recipe has no eval data)"
    usable = [e for e in examples if e.is_chat and e.messages and e.messages[-1].role == "assistant"]
    if not usable:
        raise QuicktuneError(
            "no held-out conversations ending with an assistant answer to evaluate on",
            hint="Give a file with --data, or set data.eval / data.eval_fraction in the recipe.",
        )
    return EvalSet(usable[:limit] if limit else usable, source)
