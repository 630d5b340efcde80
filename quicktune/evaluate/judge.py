"""Judged answers: ``quicktune eval RUN --judge MODEL.gguf``.

Exact match says nothing about free-text answers. A local judge model (any chat GGUF,
through quicktune's llama.cpp seam) reads each held-out request, its reference answer and
the two answers (the run's and the comparator's), with the rubric below, and chooses
``A``, ``B`` or ``tie``. Every row is judged twice, the run's answer first as A and then as
B, which cancels the judge's preference for a position; a row's outcome for the run is
the sum of the two verdicts (win +1, tie 0, loss -1: above 0 a win, below a loss, else a
tie). The judge's agreement between the orders is how often both gave the same outcome:
a judge that mostly picks "A" whatever it reads agrees rarely, and then its win/tie/loss
says little. Rows whose two answers are the same text are ties and are not judged.

The choice is read off the judge's next-token scores after the prompt, restricted to the
first tokens of the three options (what a grammar that allows only them would pick
greedily), so a verbose judge cannot answer off-format, and the three probabilities are
kept per row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from quicktune import llamacpp
from quicktune.errors import QuicktuneError
from quicktune.templates import TemplateError, render

RUBRIC = (
    "The better answer is the one that does what the request asks: it is correct (it agrees with the reference "
    "answer on every fact the request is about), complete, in the format the request asks for (or the reference "
    "uses), and adds nothing that was not asked for. A longer answer is not better for being longer. When both "
    "answers are equally good, or equally wrong, the verdict is tie."
)
OPTIONS = ("A", "B", "tie")
SCORE = {"win": 1, "tie": 0, "loss": -1}


def judge_prompt(request: list[dict[str, str]], reference: str, first: str, second: str) -> str:
    asked = "\n".join(f"{m['role']}: {m['content']}" for m in request)
    return (
        "You compare two answers to the same request and say which one is better.\n"
        f"Rubric: {RUBRIC}\n\n"
        f"The request (the conversation so far):\n<<<\n{asked}\n>>>\n\n"
        f"A reference answer (a correct one; others can be correct too):\n<<<\n{reference}\n>>>\n\n"
        f"Answer A:\n<<<\n{first}\n>>>\n\n"
        f"Answer B:\n<<<\n{second}\n>>>\n\n"
        "Which answer is better by the rubric? Reply with exactly one of: A, B, tie."
    )


class Judge:
    """A GGUF chat model that answers A, B or tie."""

    def __init__(self, path: Path, n_ctx: int):
        self.path = path
        self.llm = llamacpp.load(path, n_ctx=n_ctx, logits_all=True)
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise QuicktuneError(f"--judge {path}: the GGUF has no chat template (tokenizer.chat_template)",
                                 hint="Use an instruction-tuned chat model as the judge.")
        self.special = {name: self._token_text(meta.get(f"tokenizer.ggml.{name.split('_')[0]}_token_id"))
                        for name in ("bos_token", "eos_token")}
        firsts = [self.llm.tokenize(option.encode("utf-8"), add_bos=False, special=False)[0] for option in OPTIONS]
        if len(set(firsts)) != len(OPTIONS):
            raise QuicktuneError(f"--judge {path}: its vocabulary starts {', '.join(OPTIONS)} with the same token",
                                 hint="Use another judge model.")
        self.option_ids = firsts

    def _token_text(self, token_id: str | None) -> str | None:
        if token_id is None:
            return None
        return self.llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def encode(self, user_text: str) -> list[int]:
        try:
            text = render(self.template, [{"role": "user", "content": user_text}], add_generation_prompt=True,
                          special_tokens=self.special)
        except TemplateError as exc:
            raise QuicktuneError(
                f"--judge {self.path}: its chat template cannot render the judging prompt: {exc}"
            ) from None
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        bos = self.llm.token_bos()
        if len(ids) > 1 and ids[0] == ids[1] == bos:  # the template wrote BOS and the vocabulary adds it too
            ids = ids[1:]
        return ids

    def choose(self, prompt: list[int]) -> tuple[str, list[float]]:
        """The option the judge scores highest next, and the three options' shares (softmax over them)."""
        self.llm.reset()
        self.llm.eval(prompt)
        logits = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)[self.option_ids]
        shares = np.exp(logits - logits.max())
        shares /= shares.sum()
        return OPTIONS[int(np.argmax(logits))], [round(float(p), 4) for p in shares]


def _outcome(first: str, second: str) -> tuple[str, str, str]:
    """(verdict for the run with its answer as A, with it as B, combined)."""
    as_a = {"A": "win", "B": "loss", "tie": "tie"}[first]
    as_b = {"B": "win", "A": "loss", "tie": "tie"}[second]
    total = SCORE[as_a] + SCORE[as_b]
    return as_a, as_b, "win" if total > 0 else "loss" if total < 0 else "tie"


def judge_pair(path: Path, eval_set, other, run, progress=lambda message: None) -> dict[str, Any]:
    """Judge the run's answers against ``other``'s on every held-out row, in both orders."""
    start = time.perf_counter()
    texts = []
    for prompt, reference, theirs, ours in zip(eval_set.prompts, eval_set.references, other.answers, run.answers):
        texts.append((judge_prompt(prompt, reference, ours.text.strip(), theirs.text.strip()),
                      judge_prompt(prompt, reference, theirs.text.strip(), ours.text.strip()),
                      ours.text.strip() == theirs.text.strip()))
    judge = None
    if not all(identical for _, _, identical in texts):
        sizing = Judge(path, n_ctx=512)  # the prompts' lengths size the context of the judge that runs
        lengths = [
            len(sizing.encode(t)) for first, second, identical in texts if not identical for t in (first, second)
        ]
        del sizing
        judge = Judge(path, n_ctx=max(lengths) + 8)
    rows = []
    for index, (run_first, run_second, identical) in enumerate(texts):
        if identical:
            rows.append({"identical": True, "outcome": "tie"})
            continue
        first, first_shares = judge.choose(judge.encode(run_first))
        second, second_shares = judge.choose(judge.encode(run_second))
        as_a, as_b, outcome = _outcome(first, second)
        rows.append({
            "identical": False,
            "run_as_a": {"verdict": first, "for_run": as_a, "shares": first_shares},
            "run_as_b": {"verdict": second, "for_run": as_b, "shares": second_shares},
            "outcome": outcome,
        })
        progress(f"judged {index + 1} of {len(texts)} rows")
    judged = [r for r in rows if not r["identical"]]
    agree = sum(r["run_as_a"]["for_run"] == r["run_as_b"]["for_run"] for r in judged)
    first_position = sum(r[key]["verdict"] == "A" for r in judged for key in ("run_as_a", "run_as_b"))
    counts = {name: sum(r["outcome"] == name for r in rows) for name in ("win", "tie", "loss")}
    del judge
    return {
        "model": str(path),
        "rubric": RUBRIC,
        "options": list(OPTIONS),
        "run": run.label,
        "against": other.label,
        **counts,
        "rows": len(rows),
        "identical": len(rows) - len(judged),
        "judged": len(judged),
        "agreement": round(agree / len(judged), 4) if judged else None,
        "chose_a": round(first_position / (2 * len(judged)), 4) if judged else None,
        "seconds": round(time.perf_counter() - start, 1),
        "verdicts": rows,
    }
