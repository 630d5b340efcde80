"""The GGUF side of the export's fidelity check, in a child process of its own.

llama.cpp is C++: an assertion or an uncaught exception in it (e.g. ``llama_vocab::byte_to_token``
on a vocabulary without a byte the text needs) aborts the whole process. Run in quicktune's own
process, that would kill the export with no message; run here, it ends this child, and
``check_ggufs`` turns the crash into a ``QuicktuneError`` that names the file and the step.

The parent (export/verify.py) sends what the merged model answered, the reference's most likely
tokens at each answer position, and the prompts as Ollama builds them; the child loads each GGUF,
compares, and writes the rows back as JSON. ``python -m quicktune.export.gguf_check REQUEST RESULT``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quicktune.errors import QuicktuneError

PROGRESS = "progress\t"  # a line of the child's stdout that is a progress message
REFERENCE_TOP_K = 8  # the reference's most likely tokens kept per answer position (for ties)


@dataclass
class AnswerComparison:
    """One GGUF answer against the reference, ties allowed (see ``compare_answer``)."""

    identical: bool  # identical to the reference, every difference a tie
    first_answer: list[int]  # the GGUF's own greedy answer
    answer: list[int]  # the answer compared: the reference up to the last tie, then the GGUF's continuation
    ties: list[dict[str, float]] = field(default_factory=list)  # {"token": position, "gap": nats}
    difference: dict[str, float] | None = None  # the first difference that is not a tie


def compare_answer(
    reference: list[int], top: list[dict[int, float]], continue_from: Callable[[int], list[int]], tolerance: float
) -> AnswerComparison:
    """The GGUF's greedy answer against the reference's, tie-aware.

    ``top[k]``: the reference's (merged model's) log-probabilities of its most likely tokens at answer
    position k, fed the reference answer before k. ``continue_from(k)``: the GGUF's greedy tokens after
    the prompt plus ``reference[:k]``. Where the GGUF's token g differs from the reference's r at k,
    and the reference itself rated g within ``tolerance`` nats of r (log p(r) - log p(g) <= tolerance:
    a near-tie that rounding decides), it is a tie: the comparison goes on teacher-forced, from the
    prompt plus ``reference[:k + 1]``. Any other difference (a gap above the tolerance, a token not
    among the reference's top ones, an answer that stops early or runs on) ends it, not identical."""
    first = continue_from(0)
    start, answer, ties = 0, first, []
    while True:
        rest = reference[start:]
        k = next((i for i, (a, b) in enumerate(zip(rest, answer)) if a != b), min(len(rest), len(answer)))
        if k == len(rest) == len(answer):
            return AnswerComparison(True, first, reference[:start] + answer, ties)
        position = start + k
        gap = None
        if k < len(rest) and k < len(answer):
            ranked = top[position] if position < len(top) else {}
            wanted, got = ranked.get(reference[position]), ranked.get(answer[k])
            if wanted is not None and got is not None:
                gap = wanted - got
        if gap is None or gap > tolerance:
            difference = {"token": position + 1, "of": len(reference)}
            if gap is not None:
                difference["gap"] = round(gap, 4)
            return AnswerComparison(False, first, reference[:start] + answer, ties, difference)
        ties.append({"token": position + 1, "gap": round(gap, 4)})
        start = position + 1
        answer = continue_from(start) if start < len(reference) else []  # after the reference's last token


@dataclass
class GgufRow:
    name: str
    same_top_token: float
    greedy_agreement: float | None = None
    identical_answers: int | None = None
    ties: int | None = None
    stops: int | None = None
    differences: list[dict[str, Any]] = field(default_factory=list)  # {"prompt", "token", "of", "gap"?}
    tied: list[dict[str, Any]] = field(default_factory=list)  # ties in identical answers: {"prompt", "token", "gap"}


def agreement(reference: list[int], other: list[int]) -> float:
    """The share of ``reference`` that ``other`` reproduces before their first different token."""
    same = 0
    for a, b in zip(reference, other):
        if a != b:
            break
        same += 1
    return same / max(len(reference), len(other), 1)


def _stops(answers: list[list[int]], stop_ids: set[int]) -> int:
    return sum(bool(a) and a[-1] in stop_ids for a in answers)


def _same_top_token(llm: Any, prompt: list[int], answer: list[int]) -> tuple[int, int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt + answer[:-1])
    logits = np.asarray(llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(answer)])
    return int((logits.argmax(axis=-1) == np.asarray(answer)).sum()), len(answer)


def run_check(request: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """In the child: every GGUF against the reference (see export/verify.py for what each row means)."""
    from quicktune import llamacpp

    prompts, reference = request["prompts"], request["reference"]
    top = [[{int(t): lp for t, lp in position} for position in answer] for answer in request["reference_top"]]
    context = max(len(p) for p in prompts) + request["max_new_tokens"] + 8
    rows, prompt_tokens_equal = [], None
    for index, (name, path) in enumerate(request["ggufs"].items()):
        progress(f"{name}: llama.cpp on the same prompts")
        llm = llamacpp.load(Path(path), n_ctx=context, logits_all=True)
        same = total = 0
        for prompt, answer in zip(prompts, reference):
            s, t = _same_top_token(llm, prompt, answer)
            same, total = same + s, total + t
        row = GgufRow(name, round(same / max(total, 1), 4))
        if index == 0:  # the F16 file: it answers greedily, and tokenizes the prompts Ollama will build
            _answer_greedily(llm, row, request, top)
            prompt_tokens_equal = _prompt_tokens_equal(llm, request)
        rows.append(asdict(row))
        llm.close()
        del llm
    return {"rows": rows, "prompt_tokens_equal": prompt_tokens_equal}


def _answer_greedily(llm: Any, row: GgufRow, request: dict[str, Any], top: list[list[dict[int, float]]]) -> None:
    """The GGUF's greedy answers against the reference's, ties allowed (``compare_answer``), into ``row``."""
    from quicktune import llamacpp

    prompts, reference = request["prompts"], request["reference"]
    stop_ids, budget = set(request["stop_ids"]), request["max_new_tokens"]

    def continuing(prompt: list[int], answer: list[int]) -> Callable[[int], list[int]]:
        def continue_from(k: int) -> list[int]:
            return llamacpp.greedy(llm, prompt + answer[:k], stop_ids, budget - k) if k < budget else []

        return continue_from

    compared = [
        compare_answer(answer, ranked, continuing(prompt, answer), request["tolerance"])
        for prompt, answer, ranked in zip(prompts, reference, top)
    ]
    row.greedy_agreement = round(sum(agreement(a, c.first_answer) for a, c in zip(reference, compared)) / len(prompts),
                                 4)
    row.identical_answers = sum(c.identical for c in compared)
    row.tied = [{"prompt": i + 1, **tie} for i, c in enumerate(compared) if c.identical for tie in c.ties]
    row.ties = len(row.tied)
    row.stops = _stops([c.answer for c in compared], stop_ids)
    row.differences = [{"prompt": i + 1, **c.difference} for i, c in enumerate(compared) if c.difference]


def _prompt_tokens_equal(llm: Any, request: dict[str, Any]) -> int | None:
    """How many of the prompts Ollama sends (text, add BOS) tokenize to the training tokens; None: not
    checked (llama.cpp's renderer could not run), 0 when there is no TEMPLATE to build them with."""
    sent = request["sent"]
    if sent is None or sent == "none":
        return None if sent is None else 0
    equal = 0
    for (text, bos), ids in zip(sent, request["prompts"]):
        built = None if text is None else llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)
        equal += built == ids
    return equal


# --- the parent's side ---------------------------------------------------------------------------


def check_ggufs(request: dict[str, Any], progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """``run_check`` in a child process. A QuicktuneError there is raised here as one; a crash of
    llama.cpp (the child killed by a signal, e.g. SIGABRT) becomes a QuicktuneError naming the step."""
    with tempfile.TemporaryDirectory(prefix="quicktune-gguf-check-") as temp:
        request_file, result_file, log_file = (Path(temp) / n for n in ("request.json", "result.json", "stderr"))
        request_file.write_text(json.dumps(request), encoding="utf-8")
        command = [sys.executable, "-m", "quicktune.export.gguf_check", str(request_file), str(result_file)]
        step = "starting"
        with open(log_file, "wb") as log:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=_child_env())
            try:
                for line in child.stdout:
                    if line.startswith(PROGRESS):
                        step = line[len(PROGRESS) :].strip()
                        progress(step)
                status = child.wait()
            except BaseException:  # Ctrl-C or an error here: the child goes too
                child.kill()
                child.wait()
                raise
        tail = _what_it_said(log_file.read_text(encoding="utf-8", errors="replace"))
        answer = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
    if answer is not None and "error" in answer:
        raise QuicktuneError(answer["error"], problems=answer.get("problems") or [], hint=answer.get("hint"))
    if status == 0 and answer is not None:
        return answer
    if status >= 0:  # a Python exception in the child: a bug, raised as one
        raise RuntimeError(f"the fidelity check's llama.cpp process failed (exit status {status}):\n{tail}")
    raise QuicktuneError(
        f"llama.cpp {_how(status)} during the export's fidelity check ({step}); the GGUF files are written, "
        "but this check could not compare them with the trained model"
        + (f":\n{tail}" if tail else ""),
        hint="This is a fault in llama.cpp (or in the GGUF it was given): `quicktune doctor` shows the llama.cpp "
        "build. `quicktune export RUN --no-verify` skips the check; do not ship a GGUF llama.cpp crashes on "
        "before you have tried it (`quicktune chat RUN`).",
    )


_CRASH_LINES = ("terminate called", "what():", "GGML_ASSERT", "error", "Error", "Fatal Python error")


def _what_it_said(log: str) -> str:
    """The lines of the child's stderr that say why it ended (an uncaught C++ exception, a failed assertion),
    else its last lines."""
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()]
    telling = [line for line in lines if any(mark in line for mark in _CRASH_LINES)]
    return "\n".join((telling or lines)[-6:])


def _how(status: int) -> str:
    """How the child, ended by a signal (``status`` < 0), ended, in words: 'crashed (SIGABRT, exit status 134)'."""
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    if name == "SIGKILL":
        return f"was killed ({name}, exit status {128 - status}: out of memory?)"
    return f"crashed ({name}, exit status {128 - status})"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a crash's Python stack goes to the child's stderr
    env.setdefault("GGML_NO_BACKTRACE", "1")  # ggml would attach gdb to print its own on a crash: slow
    return env


def main(argv: list[str]) -> int:
    request_file, result_file = map(Path, argv)
    request = json.loads(request_file.read_text(encoding="utf-8"))

    def progress(message: str) -> None:
        print(PROGRESS + message, flush=True)

    try:
        answer = run_check(request, progress)
    except QuicktuneError as exc:
        answer = {"error": exc.message if hasattr(exc, "message") else str(exc),
                  "problems": list(getattr(exc, "problems", []) or []), "hint": getattr(exc, "hint", None)}
    result_file.write_text(json.dumps(answer), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
