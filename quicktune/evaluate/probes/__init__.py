"""The forgetting check: ``quicktune eval RUN --probe general`` (and ``eval.probes`` in ``quicktune run``).

What did the model lose while it learned the task? A probe set that ships with quicktune
(``general.jsonl``, written by ``generate.py`` beside it: arithmetic, formatting
instructions, copying, counting, short reasoning; one exact answer each) is asked of the
base model (or another run) and of the run, greedily, each probe as a lone user turn with
no system prompt (the chat template's default, as for a question outside the task). A
probe passes when the answer, without surrounding whitespace and one final full stop,
equals the expected answer (``match``: ``exact``, ``casefold`` ignoring case, or ``json``
equal once parsed). The report gives the pass rate per category, the share of replies that hold
the expected answer somewhere (``found``: for models too small to answer in the asked format),
the loss on the expected answers (a rise of more than ``LOSS_RISE`` is reported as forgetting),
and names every probe the run got wrong that the comparator got right.

Reports go to ``RUN/eval/probes-<set>-<sha12>.json`` (sha256 of the probe file), beside the
held-out reports; they are not held-out reports (no ``subjects``), so the run's headline
and ``runs compare`` are not taken from them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from quicktune.base_model import open_run
from quicktune.data.heldout import EvalSet
from quicktune.data.records import Example, Message
from quicktune.errors import QuicktuneError
from quicktune.evaluate import regression
from quicktune.evaluate.runner import SubjectResult, answer_budget, evaluate_hf, run_subject
from quicktune.runs import EVAL_DIR, now, resolve_run, run_label, write_atomic

PROBE_SETS = ("general",)  # recipe.py's eval.probes and the CLI's --probe name these
# A rise of the loss on the expected answers above this share is reported as forgetting, pass
# rates or not: a model too small to answer in the asked format passes no probe before or after.
LOSS_RISE = 0.10


@dataclass(frozen=True)
class Probe:
    id: str
    category: str
    prompt: str
    answer: str
    match: str


def probe_file(name: str) -> Path:
    if name not in PROBE_SETS:
        raise QuicktuneError(f"no probe set {name!r}", hint=f"Probe sets: {', '.join(PROBE_SETS)}.")
    return Path(str(resources.files("quicktune.evaluate.probes") / f"{name}.jsonl"))


def load_probes(name: str) -> tuple[list[Probe], str]:
    """The probes of a set and the sha256 of its file."""
    data = probe_file(name).read_bytes()
    probes = [Probe(**json.loads(line)) for line in data.decode("utf-8").splitlines() if line.strip()]
    return probes, hashlib.sha256(data).hexdigest()


def _trimmed(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def passes(probe: Probe, answer: str) -> bool:
    got = _trimmed(answer)
    if probe.match == "json":
        try:
            return json.loads(got) == json.loads(probe.answer)
        except (json.JSONDecodeError, ValueError):
            return False
    if probe.match == "casefold":
        return got.casefold() == probe.answer.casefold()
    return got == probe.answer


def found(probe: Probe, answer: str) -> bool:
    """The expected answer appears in the reply as a whole word or phrase, whatever else is said.

    A small model that ignores "reply with the number only" ("10 times 7 is 70.") fails every
    probe but can still know the answer; this second, lenient rate shows it."""
    if probe.match == "json":
        return passes(probe, answer)
    flags = re.IGNORECASE if probe.match == "casefold" else 0
    return re.search(rf"(?<!\w){re.escape(probe.answer)}(?!\w)", answer, flags) is not None


@dataclass
class ProbeScores:
    label: str
    answers: list[str]
    passed: list[bool]
    loss: float | None
    seconds: float = 0.0
    found: list[bool] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0

    @property
    def found_score(self) -> float:
        return sum(self.found) / len(self.found) if self.found else 0.0

    def to_json(self, probes: list[Probe]) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "by_category": by_category(probes, self.passed),
            "found_score": self.found_score,
            "found_by_category": by_category(probes, self.found),
            "loss": self.loss,
            "seconds": self.seconds,
            "answers": self.answers,
            "passed": self.passed,
            "found": self.found,
        }


def by_category(probes: list[Probe], passed: list[bool]) -> dict[str, float]:
    categories: dict[str, list[bool]] = {}
    for probe, ok in zip(probes, passed):
        categories.setdefault(probe.category, []).append(ok)
    return {name: sum(oks) / len(oks) for name, oks in categories.items()}


@dataclass
class ProbeReport:
    run_dir: Path
    probe_set: str
    sha256: str
    probes: list[Probe]
    models: list[ProbeScores]  # the comparator, then the run
    created: str = ""
    against: str = "base"
    max_new_tokens: int = 0
    threshold: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    def dropped(self) -> list[Probe]:
        """Right before, wrong after."""
        before, after = self.models[0].passed, self.models[-1].passed
        return [p for p, b, a in zip(self.probes, before, after) if b and not a]

    def gained(self) -> list[Probe]:
        before, after = self.models[0].passed, self.models[-1].passed
        return [p for p, b, a in zip(self.probes, before, after) if a and not b]

    def fell(self) -> list[str]:
        """Categories (and the whole set) whose pass rate fell by more than the threshold."""
        before, after = self.models[0], self.models[-1]
        rows = {"all probes": (before.score, after.score)}
        cats_before, cats_after = by_category(self.probes, before.passed), by_category(self.probes, after.passed)
        rows.update({name: (cats_before[name], cats_after[name]) for name in cats_before})
        return [name for name, (b, a) in rows.items() if regression.fell(b, a, self.threshold)]

    def loss_rose(self) -> float | None:
        """The relative rise of the loss on the expected answers, when it rose by more than LOSS_RISE."""
        before, after = self.models[0].loss, self.models[-1].loss
        if before is None or after is None or before <= 0:
            return None
        rise = (after - before) / before
        return rise if rise > LOSS_RISE else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "probes",
            "created": self.created,
            "probe_set": self.probe_set,
            "sha256": self.sha256,
            "against": self.against,
            "max_new_tokens": self.max_new_tokens,
            "asked_as": "one user turn each, no system prompt (the chat template's default), greedy",
            "probes": [p.__dict__ for p in self.probes],
            "models": [m.to_json(self.probes) for m in self.models],
            "dropped": [p.id for p in self.dropped()],
            "gained": [p.id for p in self.gained()],
            "regressions": {"threshold_points": self.threshold, "fell": self.fell(),
                            "loss_rise_over": LOSS_RISE, "loss_rose": self.loss_rose()},
        }


def report_path(report: ProbeReport) -> Path:
    return report.run_dir / EVAL_DIR / f"probes-{report.probe_set}-{report.sha256[:12]}.json"


def write_probe_report(report: ProbeReport) -> tuple[Path, bool]:
    """(path, whether an earlier report of the same probes was replaced)."""
    path = report_path(report)
    replaced = path.is_file()
    write_atomic(path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path, replaced


def evaluate_probes(
    run_dir: Path,
    probe_set: str = "general",
    *,
    against: str = "base",
    runs_root: Path = Path("runs"),
    threshold: float = 2.0,
    progress=lambda message: None,
) -> ProbeReport:
    """Ask the probes of the comparator (the base model, or another run) and of the run."""
    probes, sha = load_probes(probe_set)
    run = open_run(run_dir)
    run.require_finished()
    recipe = run.recipe
    tokenizer = run.chat_tokenizer()
    questions = _probe_questions(probes, probe_set)
    budget = answer_budget(tokenizer, questions.references)
    if against == "base":
        progress(f"the base model answers {len(probes)} probes")
        other = evaluate_hf("base", run.base_folder(), None, recipe, tokenizer, questions, budget)
        against_label = "base"
    else:
        other_dir = resolve_run(against, runs_root, run_dir.parent.name)
        against_label = run_label(other_dir)
        progress(f"{against_label} answers {len(probes)} probes")
        other = run_subject(open_run(other_dir), questions, tokenizer, budget)
    progress(f"{run_label(run_dir)} answers {len(probes)} probes")
    answered = run_subject(run, questions, tokenizer, budget)
    models = [_probe_scores(probes, other), _probe_scores(probes, answered)]
    return ProbeReport(run_dir, probe_set, sha, probes, models, created=now(), against=against_label,
                       max_new_tokens=budget, threshold=threshold)


def _probe_questions(probes: list[Probe], probe_set: str) -> EvalSet:
    """The probes as held-out rows: one user turn each (no system prompt), the expected answer as the
    reference (and the tokens the loss is taken on)."""
    return EvalSet(
        [Example(f"{probe_set}.jsonl:{i + 1}", (Message("user", p.prompt), Message("assistant", p.answer)))
         for i, p in enumerate(probes)],
        f"quicktune's {probe_set} probe set",
    )


def _probe_scores(probes: list[Probe], subject: SubjectResult) -> ProbeScores:
    """A subject's answers to the probes, each passed or not, and found or not."""
    answers = [a.text for a in subject.answers]
    return ProbeScores(subject.label, answers, [passes(p, a) for p, a in zip(probes, answers)], subject.loss,
                       subject.seconds, [found(p, a) for p, a in zip(probes, answers)])
