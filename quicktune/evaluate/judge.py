"""Judged answers: ``quicktune eval RUN --judge MODEL.gguf`` or ``--judge-endpoint URL --judge-model NAME``.

Exact match says nothing about free-text answers. A judge model reads each held-out request, its
reference answer and the two answers (the run's and the comparator's), with the rubric below, and
chooses ``A``, ``B`` or ``tie``. Every row is judged twice, the run's answer first as A and then as
B, which cancels the judge's preference for a position; a row's outcome for the run is the sum of
the two verdicts (win +1, tie 0, loss -1: above 0 a win, below a loss, else a tie). Rows whose two
answers are the same text are ties and are not judged.

Two kinds of judge, one bookkeeping (``tally``):
- a local GGUF (``Judge``, through quicktune's llama.cpp seam): the choice is read off its next-token
  scores after the prompt, restricted to the first tokens of the three options (what a grammar that
  allows only them would pick greedily), so it cannot answer off-format; the three shares are kept;
- a model behind an OpenAI-compatible server (``judge_pair_endpoint``): asked greedily for a few
  tokens; the reply is kept as it came and read with ``parse_verdict``, which accepts only a reply
  that says A, B or tie; anything else is ``unparsed``, counted and never guessed.

Position bias, measured for both kinds: ``chose_a`` (the share of verdicts naming the first answer)
and ``agreement`` (the share of rows where both orders gave the run the same verdict). A consistent
judge names A in one order and B in the other, so over its verdicts that name a position it names
the first one half the time, whatever the answers' quality. A judge is ``flagged`` as unreliable
(its win/tie/loss says little) when, over at least ``MIN_JUDGED`` judged rows, 90% or more of its
verdicts that name a position name the same position, its two orders agree on fewer than half the
rows, or most of its replies were unparsed. Four rows is the least that can tell: below that a few
verdicts one way happen by chance, and the report says the judge could not be judged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from quicktune import llamacpp
from quicktune.endpoints import Endpoint
from quicktune.errors import QuicktuneError
from quicktune.evaluate.served import ask_all
from quicktune.templates import TemplateError, render

RUBRIC = (
    "The better answer is the one that does what the request asks: it is correct (it agrees with the reference "
    "answer on every fact the request is about), complete, in the format the request asks for (or the reference "
    "uses), and adds nothing that was not asked for. A longer answer is not better for being longer. When both "
    "answers are equally good, or equally wrong, the verdict is tie."
)
OPTIONS = ("A", "B", "tie")
UNPARSED = "unparsed"  # a judge's reply that says none of the options
SCORE = {"win": 1, "tie": 0, "loss": -1}
JUDGE_MAX_TOKENS = 16  # enough for "The better answer is A."; a judge that explains itself is cut off
MIN_JUDGED = 4  # judged rows needed before a judge's position bias can be told from chance
POSITION_LIMIT = 0.9  # share of positional verdicts naming one position at which a judge is flagged
AGREEMENT_LIMIT = 0.5  # share of rows both orders agree on below which a judge is flagged


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


_VERDICT = re.compile(
    r"(?:(?:the\s+)?(?:better\s+answer|answer|verdict)(?:\s+is)?\s*:?\s*)?(A|B|tie)(?:\s+is\s+better)?[.!]?",
    re.IGNORECASE,
)


def parse_verdict(reply: str) -> str:
    """``A``, ``B`` or ``tie`` when the reply's first line says just that ("A", "**B**", "Tie.",
    "Answer A", "Verdict: B", "The better answer is A", "A is better"); else ``UNPARSED``."""
    lines = reply.strip().splitlines()
    first = lines[0].strip().strip("*_`'\"#> \t") if lines else ""
    found = _VERDICT.fullmatch(first)
    if found is None:
        return UNPARSED
    said = found.group(1)
    return "tie" if said.lower() == "tie" else said.upper()


def _outcome(first: str, second: str) -> tuple[str | None, str | None, str]:
    """(verdict for the run with its answer as A, with it as B, combined); an unparsed verdict gives
    None for its order and ``UNPARSED`` combined."""
    as_a = {"A": "win", "B": "loss", "tie": "tie"}.get(first)
    as_b = {"B": "win", "A": "loss", "tie": "tie"}.get(second)
    if as_a is None or as_b is None:
        return as_a, as_b, UNPARSED
    total = SCORE[as_a] + SCORE[as_b]
    return as_a, as_b, "win" if total > 0 else "loss" if total < 0 else "tie"


def judged_row(run_as_a: dict[str, Any], run_as_b: dict[str, Any]) -> dict[str, Any]:
    """One judged row from the two orders' records (each with its ``verdict``, and what the judge
    kind keeps: the shares, or the raw reply): adds what each verdict means for the run, and the outcome."""
    as_a, as_b, outcome = _outcome(run_as_a["verdict"], run_as_b["verdict"])
    return {"identical": False, "run_as_a": {**run_as_a, "for_run": as_a}, "run_as_b": {**run_as_b, "for_run": as_b},
            "outcome": outcome}


IDENTICAL_ROW = {"identical": True, "outcome": "tie"}


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bookkeeping of both judge kinds, from the rows (``IDENTICAL_ROW`` or ``judged_row``): the
    outcomes (win, tie, loss, unparsed), the position-bias figures and whether the judge is flagged."""
    judged = [r for r in rows if not r["identical"]]
    parsed = [r for r in judged if r["outcome"] != UNPARSED]
    verdicts = [r[order]["verdict"] for r in judged for order in ("run_as_a", "run_as_b")]
    said = [v for v in verdicts if v != UNPARSED]
    first, second = said.count("A"), said.count("B")
    agree = sum(r["run_as_a"]["for_run"] == r["run_as_b"]["for_run"] for r in parsed)
    figures = {
        **{name: sum(r["outcome"] == name for r in rows) for name in ("win", "tie", "loss", UNPARSED)},
        "rows": len(rows),
        "identical": len(rows) - len(judged),
        "judged": len(judged),
        "unparsed_replies": len(verdicts) - len(said),
        "agreement": _share(agree, len(parsed)),
        "chose_a": _share(first, len(said)),
        "first_position": _share(first, first + second),  # of the verdicts naming a position, the first's share
    }
    return {**figures, **_reliability(figures, first, second)}


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _reliability(figures: dict[str, Any], first: int, second: int) -> dict[str, Any]:
    """``flagged`` and its reasons (``flags``), or ``too_few`` judged rows to tell."""
    if figures["judged"] < MIN_JUDGED:
        return {"flagged": False, "flags": [], "too_few": True}
    flags = []
    if figures["unparsed_replies"] > figures["judged"]:  # more than half of its two replies a row
        flags.append(f"{figures['unparsed_replies']} of {figures['judged'] * 2} replies said none of A, B, tie")
    if first + second >= MIN_JUDGED and max(first, second) / (first + second) >= POSITION_LIMIT:
        position = "first (A)" if first >= second else "second (B)"
        flags.append(f"{max(first, second)} of the {first + second} verdicts naming a position named the {position}")
    both_read = figures["judged"] - figures[UNPARSED]
    if both_read >= MIN_JUDGED and figures["agreement"] < AGREEMENT_LIMIT:
        flags.append(f"the two orders agreed on only {figures['agreement']:.0%} of rows")
    return {"flagged": bool(flags), "flags": flags, "too_few": False}


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


def judging_prompts(eval_set, other, run) -> list[tuple[str, str] | None]:
    """Per held-out row, the judging prompts with the run's answer first and second; None for a row
    whose two answers are the same text (a tie, not judged)."""
    prompts: list[tuple[str, str] | None] = []
    for prompt, reference, theirs, ours in zip(eval_set.prompts, eval_set.references, other.answers, run.answers):
        ours_text, theirs_text = ours.text.strip(), theirs.text.strip()
        prompts.append(None if ours_text == theirs_text else (
            judge_prompt(prompt, reference, ours_text, theirs_text),
            judge_prompt(prompt, reference, theirs_text, ours_text),
        ))
    return prompts


def _report(judge: dict[str, Any], other, run, rows: list[dict[str, Any]], start: float) -> dict[str, Any]:
    """The report's ``judge`` section: who judged (``judge``), what against what, the tally, the rows."""
    return {
        **judge,
        "rubric": RUBRIC,
        "options": list(OPTIONS),
        "run": run.label,
        "against": other.label,
        **tally(rows),
        "min_judged": MIN_JUDGED,
        "seconds": round(time.perf_counter() - start, 1),
        "verdicts": rows,
    }


def judge_pair(path: Path, eval_set, other, run, progress=lambda message: None) -> dict[str, Any]:
    """A local GGUF judges the run's answers against ``other``'s on every held-out row, in both orders."""
    start = time.perf_counter()
    prompts = judging_prompts(eval_set, other, run)
    judge = None
    asked = [p for p in prompts if p is not None]
    if asked:
        sizing = Judge(path, n_ctx=512)  # the prompts' lengths size the context of the judge that runs
        lengths = [len(sizing.encode(text)) for pair in asked for text in pair]
        del sizing
        judge = Judge(path, n_ctx=max(lengths) + 8)
    rows = []
    for index, pair in enumerate(prompts):
        if pair is None:
            rows.append(dict(IDENTICAL_ROW))
            continue
        orders = []
        for text in pair:
            verdict, shares = judge.choose(judge.encode(text))
            orders.append({"verdict": verdict, "shares": shares})
        rows.append(judged_row(*orders))
        progress(f"the judge: {index + 1} of {len(prompts)} rows")
    del judge
    return _report({"kind": "gguf", "model": str(path)}, other, run, rows, start)


def judge_pair_endpoint(endpoint: Endpoint, eval_set, other, run, *, concurrency: int = 1,
                        progress=lambda message: None) -> dict[str, Any]:
    """A model behind ``endpoint`` judges the run's answers against ``other``'s, in both orders: asked
    greedily for ``JUDGE_MAX_TOKENS`` tokens; each raw reply is kept beside the verdict read from it."""
    start = time.perf_counter()
    prompts = judging_prompts(eval_set, other, run)
    asked = [[{"role": "user", "content": text}] for pair in prompts if pair is not None for text in pair]
    replies = iter(ask_all(endpoint, asked, max_tokens=JUDGE_MAX_TOKENS, concurrency=concurrency,
                           progress=lambda done, total: progress(f"the judge: {done} of {total} verdicts")))
    rows = []
    for pair in prompts:
        if pair is None:
            rows.append(dict(IDENTICAL_ROW))
            continue
        orders = [next(replies) for _ in pair]
        rows.append(judged_row(*({"verdict": parse_verdict(r.text), "reply": r.text} for r in orders)))
    judge = {"kind": "endpoint", "model": endpoint.model, "endpoint": endpoint.describe(),
             "max_tokens": JUDGE_MAX_TOKENS}
    return _report(judge, other, run, rows, start)
