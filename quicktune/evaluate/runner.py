"""``quicktune eval``: a run against the base model (or another run) on the same held-out set.

Every subject answers the same prompts, rendered with the run's trained chat template
and decoded greedily; its answers are scored with ``metrics`` and its loss on the
reference answers (the trained tokens, as in training) gives the perplexity. A subject
is a Hugging Face model (the base, or base + a run's adapter, loaded through the
training backend), an exported GGUF through llama.cpp (``--gguf``), so the cost of
quantization shows in the same table, or the model as a server serves it (``--endpoint``,
evaluate/served.py: scored the same, no loss, and compared answer by answer with the GGUF).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quicktune import llamacpp
from quicktune.adapters import check_adapter_base
from quicktune.backend import load_backend, package_versions
from quicktune.base_model import TrainedRun, open_run
from quicktune.data.check import prepare_for_recipe
from quicktune.data.heldout import EvalSet, load_eval_set
from quicktune.data.instruction import SharedInstruction, typed_form, without_instruction
from quicktune.data.masking import IGNORE, tokenize_examples
from quicktune.data.system_prompt import served_prompt
from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.errors import QuicktuneError
from quicktune.evaluate import answer_cache, fewshot
from quicktune.evaluate.judge import judge_pair, judge_pair_endpoint
from quicktune.evaluate.preference import pair_metrics
from quicktune.evaluate.regression import DEFAULT_THRESHOLD, find_regressions
from quicktune.evaluate.served import (
    SERVED_KIND,
    EndpointOptions,
    agreement,
    ask_all,
    served_answers,
    served_label,
    served_messages,
    served_record,
)
from quicktune.inference import LOSS_BATCH_TOKENS, cut_at_stop, generate_batch_size, greedy_answers, reference_loss
from quicktune.metrics import METRICS, Answer, score_all
from quicktune.models import PACKAGE_SCHEME, resolve_model
from quicktune.rewards import means, resolve
from quicktune.runs import exported_gguf, now, pick_quantization, resolve_run, run_label

MAX_NEW_TOKENS_CAP = 512
TYPED = "(input alone)"  # the run's second subject: the held-out rows as a user of the served model sends them


@dataclass
class SubjectResult:
    label: str
    kind: str  # "hf", "gguf" or "endpoint" (served.SERVED_KIND: no loss)
    metrics: dict[str, float | None]
    loss: float | None
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0
    prompt_tokens: float | None = None  # mean prompt length in tokens: what each question costs
    reused: str | None = None  # when these answers were computed, if they came from the cache (answer_cache)

    @property
    def perplexity(self) -> float | None:
        return None if self.loss is None else math.exp(min(self.loss, 50.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "loss": self.loss,
            "perplexity": self.perplexity,
            "metrics": self.metrics,
            "seconds": self.seconds,
            "prompt_tokens": self.prompt_tokens,
            "answers": [{"text": a.text, "stopped": a.stopped} for a in self.answers],
            **({"reused": self.reused} if self.reused else {}),
        }


# --- Hugging Face subjects -----------------------------------------------------------------------


def answer_budget(tokenizer, references: list[str]) -> int:
    longest = max(len(enc.ids) for enc in tokenizer.encode_batch(references))
    return min(longest + 32, MAX_NEW_TOKENS_CAP)


def evaluate_hf(
    label: str, model_dir: str, adapter_dir: str | None, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int
) -> SubjectResult:
    views = [View.plain(label, tokenizer, eval_set, recipe)]
    return evaluate_hf_views(model_dir, adapter_dir, recipe, tokenizer, eval_set, max_new_tokens, views)[0]


@dataclass
class View:
    """One way of asking the held-out questions of a model: the prompts' token ids, and the
    token ids with labels on the reference answers (the loss)."""

    label: str
    prompts: list[list[int]]
    tokenized: list  # items with .input_ids and .labels

    @classmethod
    def plain(cls, label: str, tokenizer, eval_set: EvalSet, recipe) -> View:
        prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
        return cls(label, prompts, _tokenized(tokenizer, eval_set, recipe))


def evaluate_hf_views(
    model_dir: str, adapter_dir: str | None, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int,
    views: list[View], cache: answer_cache.AnswerCache = answer_cache.NOT_KEPT,
) -> list[SubjectResult]:
    """Load one model (base, or base + adapter) once and answer every view's prompts with it; a view whose
    answers ``cache`` kept is not asked again, and the model is not loaded when no view needs it."""
    backend = load_backend()
    stops = stop_token_ids(tokenizer)
    keys = [cache.key(_answer_key(view, recipe, tokenizer, eval_set, max_new_tokens, stops)) if cache.active else None
            for view in views]
    kept = [cache.read(key, len(view.prompts)) for key, view in zip(keys, views)]
    if all(kept):
        return [_kept_subject(view, entry, eval_set) for view, entry in zip(views, kept)]
    start = time.perf_counter()
    model, _ = backend.load_model(
        model_dir,
        max_seq_length=recipe.model.max_seq_length,
        load_in_4bit=recipe.model.load_in_4bit,
        dtype=recipe.model.dtype,
        full=False,
    )
    model = backend.for_inference(model, adapter_dir)
    results = []
    pair_scores = pair_metrics(model, tokenizer, eval_set)  # held-out preference pairs, when there are any
    for view, key, entry in zip(views, keys, kept):
        if entry is not None:
            results.append(_kept_subject(view, entry, eval_set))
            continue
        generated = greedy_answers(model, view.prompts, stops, tokenizer.pad_id, max_new_tokens)
        answers = []
        for tokens in generated:
            ids, stopped = cut_at_stop(tokens, stops)
            answers.append(Answer(tokenizer.backend.decode(ids, skip_special_tokens=False), stopped))
        loss = reference_loss(model, view.tokenized)
        results.append(
            SubjectResult(
                view.label, "hf", {**score_all(answers, eval_set.references), **pair_scores}, loss, answers,
                round(time.perf_counter() - start, 1), _mean_length(view.prompts),
            )
        )
        cache.write(key, answers, loss, results[-1].seconds, results[-1].prompt_tokens, pair_scores)
        start = time.perf_counter()
    del model
    return results


def _answer_key(view: View, recipe, tokenizer, eval_set: EvalSet, budget: int, stops: set[int]) -> dict[str, Any]:
    """What ``view``'s answers, loss and pair scores depend on besides the model (answer_cache.hf_parts)."""
    backend = load_backend()
    pairs = [[p.conversation(p.chosen), p.rejected] for p in getattr(eval_set, "pairs", None) or []]
    return answer_cache.hf_parts(
        view.prompts, view.tokenized, pairs, budget, batch=generate_batch_size(view.prompts, budget),
        loss_batch_tokens=LOSS_BATCH_TOKENS, stops=stops, pad_id=tokenizer.pad_id,
        loading=[recipe.model.dtype, recipe.model.load_in_4bit, recipe.model.max_seq_length, recipe.model.revision],
        backend=[backend.name, backend.device], packages=package_versions(),
    )


def _kept_subject(view: View, entry: dict[str, Any], eval_set: EvalSet) -> SubjectResult:
    """A subject from the answers an earlier eval kept (scored again: the metrics may have changed since)."""
    answers = entry["answers"]
    return SubjectResult(
        view.label, "hf", {**score_all(answers, eval_set.references), **entry.get("pair_metrics", {})}, entry["loss"],
        answers, entry.get("seconds") or 0.0, entry["prompt_tokens"], reused=entry["computed"],
    )


def _mean_length(prompts: list[list[int]]) -> float | None:
    return round(sum(map(len, prompts)) / len(prompts), 1) if prompts else None


def _tokenized(tokenizer, eval_set: EvalSet, recipe):
    return tokenize_examples(
        tokenizer, eval_set.examples, max_length=recipe.model.max_seq_length,
        responses_only=recipe.data.train_on_responses_only,
    )


def run_subject(run: TrainedRun, eval_set: EvalSet, tokenizer, budget: int) -> SubjectResult:
    """A run's answers (``run`` as ``open_run`` read it): its trained model (a full fine-tune), or its
    base with its adapter on top."""
    return run_subjects(run, eval_set, tokenizer, budget)[0]


def run_subjects(
    run: TrainedRun, eval_set: EvalSet, tokenizer, budget: int, typed: EvalSet | None = None,
    cache: str = answer_cache.OFF,
) -> list[SubjectResult]:
    """``run_subject``, and with ``typed`` (the same rows as a user sends them, ``typed_set``) a second
    subject answered by the same loaded model; ``cache`` (answer_cache.USE, REFRESH, OFF): the answers kept
    in the run's folder."""
    kept = answer_cache.for_run(run.run_dir, run.manifest, run.trained, run.full, cache)
    label = run_label(run.run_dir)
    views = [View.plain(label, tokenizer, eval_set, run.recipe)]
    if typed is not None:
        views.append(View.plain(f"{label} {TYPED}", tokenizer, typed, run.recipe))
    if run.full:
        return evaluate_hf_views(str(run.trained), None, run.recipe, tokenizer, eval_set, budget, views, kept)
    adapter = str(run.trained)
    base = run.base_folder()
    check_adapter_base(Path(adapter), Path(base))  # an adapter of another model: an error, not a traceback
    return evaluate_hf_views(base, adapter, run.recipe, tokenizer, eval_set, budget, views, kept)


def shared_instruction(run: TrainedRun) -> SharedInstruction | None:
    """The instruction most of the run's training rows shared, as training recorded it (None: none, or a run
    trained before quicktune looked)."""
    recorded = (run.manifest.get("data") or {}).get("system_prompt") or {}
    return SharedInstruction.from_dict(recorded.get("shared_instruction"))


def moved_as_trained(run: TrainedRun, eval_set: EvalSet) -> EvalSet:
    """``--data`` rows of a run trained with data.shared_instruction: system: the instruction left out of the
    user turn, since the served system prompt they are asked with (``_served_recipe``) carries it."""
    found = shared_instruction(run)
    if found is None or found.mode != "system" or eval_set.pairs:
        return eval_set
    return EvalSet([without_instruction(e, found) for e in eval_set.examples], eval_set.source)


def typed_set(run: TrainedRun, eval_set: EvalSet) -> tuple[EvalSet, dict[str, Any]] | None:
    """The held-out rows as a user of the served model sends them (the instruction most training rows shared
    left out of the user turn, the served system prompt in place of the row's own), and what the report says
    of them; None when the run recorded no shared instruction or every row is sent as it was trained."""
    found = shared_instruction(run)
    if found is None or eval_set.pairs:
        return None
    served = served_prompt(run.recipe, run.manifest)
    typed = [typed_form(example, found, served) for example in eval_set.examples]
    differ = sum(a.messages != b.messages for a, b in zip(typed, eval_set.examples))
    if not differ:
        return None
    about = {"label": f"{run_label(run.run_dir)} {TYPED}", "instruction": found.text, "mode": found.mode,
             "system_prompt": served, "rows": differ}
    return EvalSet(typed, eval_set.source), about


# --- the base model's answers, computed once ----------------------------------------------------
#
# Every run of a recipe is compared with the same base model on the same held-out rows, so the base's
# answers (alone and few-shot) are kept in the user cache under a key of everything they depend on
# (evaluate/answer_cache.py); a run's own answers are kept in its folder the same way.


def base_subject(run: TrainedRun, tokenizer, eval_set: EvalSet, budget: int, progress=lambda m: None,
                 cache: str = answer_cache.USE) -> SubjectResult:
    """The base model's subject: from the cache when the same answers were computed before (``cache``:
    answer_cache.USE, REFRESH or OFF)."""
    recipe = run.recipe
    view = View.plain("base", tokenizer, eval_set, recipe)
    [result] = evaluate_hf_views(run.base_folder(), None, recipe, tokenizer, eval_set, budget, [view],
                                 answer_cache.for_base(run.manifest, cache))
    if result.reused:
        progress(f"the base model: {len(result.answers)} of {len(result.answers)} answers from the cache")
    return result


# --- GGUF subjects -------------------------------------------------------------------------------


def evaluate_gguf(label: str, gguf: Path, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int,
                  cache: answer_cache.AnswerCache = answer_cache.NOT_KEPT) -> SubjectResult:
    """An exported GGUF's answers through llama.cpp, greedy, and its loss on the reference answers (those
    ``cache`` kept, when it did)."""
    start = time.perf_counter()
    stops = stop_token_ids(tokenizer)
    prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
    tokenized = _tokenized(tokenizer, eval_set, recipe)
    context = max(max(len(p) for p in prompts) + max_new_tokens, max(len(t.input_ids) for t in tokenized)) + 8
    key = cache.key(answer_cache.gguf_parts(prompts, tokenized, max_new_tokens, stops, context)) if cache.active \
        else None
    kept = cache.read(key, len(prompts))
    if kept is not None:
        answers = kept["answers"]
        return SubjectResult(label, "gguf", score_all(answers, eval_set.references), kept["loss"], answers,
                             kept.get("seconds") or 0.0, kept["prompt_tokens"], reused=kept["computed"])
    llm = llamacpp.load(gguf, n_ctx=context, logits_all=True)
    answers = []
    for prompt in prompts:
        ids, stopped = cut_at_stop(llamacpp.greedy(llm, prompt, stops, max_new_tokens), stops)
        answers.append(Answer(llm.detokenize(ids).decode("utf-8", errors="replace"), stopped))
    loss = _gguf_loss(llm, tokenized)
    del llm
    seconds = round(time.perf_counter() - start, 1)
    cache.write(key, answers, loss, seconds, _mean_length(prompts))
    return SubjectResult(
        label, "gguf", score_all(answers, eval_set.references), loss, answers, seconds, _mean_length(prompts),
    )


def _gguf_loss(llm, tokenized) -> float | None:
    """Mean negative log-likelihood of the trained tokens under a llama.cpp model (``logits_all``)."""
    total, count = 0.0, 0
    for item in tokenized:
        llm.reset()
        llm.eval(item.input_ids)
        logits = np.asarray(llm.scores[: len(item.input_ids) - 1], dtype=np.float64)
        labels = np.asarray(item.labels[1:])
        keep = labels != IGNORE
        if keep.any():
            rows = logits[keep]
            top = rows.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
            total += float((log_norm - rows[np.arange(len(rows)), labels[keep]]).sum())
            count += int(keep.sum())
    return round(total / count, 5) if count else None


# --- the comparison ------------------------------------------------------------------------------


@dataclass
class EvalReport:
    run_dir: Path
    eval_set: EvalSet
    metric: str
    subjects: list[SubjectResult]
    created: str = ""
    against: str | None = None  # "base", "fewshot:K", another run's label (recipe/vN), or None: the run alone
    gguf: str | None = None  # the quantization scored through llama.cpp, if any
    fewshot: dict[str, Any] | None = None  # K, the examples' origins, the system prompt (evaluate/fewshot.py)
    judge: dict[str, Any] | None = None  # the judged comparison (evaluate/judge.py)
    served: dict[str, Any] | None = None  # the served model and its agreement with the GGUF (evaluate/served.py)
    typed: dict[str, Any] | None = None  # the run asked as a user sends the rows (``typed_set``), when that differs
    threshold: float = DEFAULT_THRESHOLD  # a metric that fell by more than this (points) is a regression

    @property
    def run_label(self) -> str:
        return run_label(self.run_dir)

    def run_subject(self) -> SubjectResult:
        return next(s for s in self.subjects if s.label == self.run_label and s.kind == "hf")

    def comparators(self) -> list[SubjectResult]:
        """What the run is compared with: every subject before it (base, few-shot base, another run)."""
        subjects = [s for s in self.subjects if s.kind == "hf"]
        return subjects[: subjects.index(self.run_subject())]

    def regressions(self) -> dict[str, list[str]]:
        """For each comparator, the run's metrics that fell by more than the threshold."""
        run = self.run_subject()
        return {
            other.label: find_regressions(other.metrics, run.metrics, other.loss, run.loss, self.threshold)
            for other in self.comparators()
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "against": self.against,
            "gguf": self.gguf,
            "metric": self.metric,
            "metrics": METRICS,
            "data": {"source": self.eval_set.source, "rows": len(self.eval_set.examples),
                     "sha256": self.eval_set.sha256},
            "prompts": [p[-1]["content"] for p in self.eval_set.prompts],
            "references": self.eval_set.references,
            "subjects": [s.to_json() for s in self.subjects],
            "fewshot": self.fewshot,
            "judge": self.judge,
            "served": self.served,
            "typed": self.typed,
            "regressions": {"threshold_points": self.threshold, "run": self.run_label, "fell": self.regressions()},
        }


@dataclass
class _Evaluation:
    """What the steps of ``evaluate_run`` share: the run, its questions, how long an answer may be, and
    the subjects asked so far (comparators first, then the run, then its GGUF)."""

    run: TrainedRun
    eval_set: EvalSet
    tokenizer: ChatTokenizer
    budget: int
    progress: Callable[[str], None]
    subjects: list[SubjectResult] = field(default_factory=list)
    against: str | None = None  # the comparator's label in the report
    fewshot: dict[str, Any] | None = None  # the few-shot comparison's details, for the report
    served: tuple[SubjectResult, list, int] | None = None  # the served subject, what was sent, rows left without system
    cache: str = answer_cache.USE  # answers kept by an earlier eval: reused (USE), or computed again (REFRESH)


def evaluate_run(
    run_dir: Path,
    *,
    against: str | None = "base",
    data_files: list[str] = (),
    limit: int | None = None,
    gguf: str | None = None,
    max_new_tokens: int | None = None,
    runs_root: Path = Path("runs"),
    judge: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    endpoints: EndpointOptions | None = None,
    progress=lambda message: None,
    cache: str = answer_cache.USE,
) -> EvalReport:
    """A finished run against ``against`` (``base``, ``fewshot[:K]``, another run, or None: the run alone)
    on its held-out set (or ``data_files``), with its exported GGUF (``gguf``) and a judge (``judge``).

    ``endpoints`` adds the model as a server serves it (its GGUF comes too, to compare answers with)
    and a judge behind a server; the servers are asked for their models before anything loads, and the
    served model answers first, so a server that fails does so before the models load. ``cache``: answers
    kept by an earlier eval are reused (answer_cache.USE) or computed again (REFRESH, ``--no-cache``)."""
    endpoints = endpoints or EndpointOptions()
    shots_k, judge_path = _check_options(against, judge, endpoints)
    run = open_run(run_dir)
    run.require_finished()
    if endpoints.endpoint is not None:
        gguf = _served_quantization(run, gguf)
    endpoints.check()
    ev = _ask_questions(run, data_files, limit, max_new_tokens, progress)
    ev.cache = cache
    if endpoints.endpoint is not None:
        _ask_server(ev, endpoints)
    if against == "base":
        _against_base(ev)
    elif shots_k is not None:
        _against_fewshot(ev, shots_k)
    elif against:
        _against_run(ev, against, runs_root)
    typed = typed_set(run, ev.eval_set)
    progress(run_label(run_dir) + (f", and as a user sends the rows {TYPED}" if typed else ""))
    ev.subjects += run_subjects(run, ev.eval_set, ev.tokenizer, ev.budget, typed[0] if typed else None, ev.cache)
    quant = _gguf_subject(ev, gguf or None) if gguf is not None else None
    served = _add_served(ev, endpoints) if endpoints.endpoint is not None else None
    if run.recipe.method == "grpo":
        _score_rewards(ev, run.recipe)
    report = EvalReport(
        run_dir, ev.eval_set, run.recipe.eval.metric, ev.subjects, created=now(), against=ev.against, gguf=quant,
        fewshot=ev.fewshot, threshold=threshold, served=served, typed=typed[1] if typed else None,
    )
    _judge(report, judge_path, endpoints, progress)
    return report


def _score_rewards(ev: _Evaluation, recipe) -> None:
    """grpo: each reward's mean over every subject's answers (greedy), beside the metrics."""
    rewards = resolve(recipe.grpo.rewards, None)
    prompts = [ev.tokenizer.render(p, add_generation_prompt=True) for p in ev.eval_set.prompts]
    origins = [e.origin for e in ev.eval_set.examples]
    for subject in ev.subjects:
        subject.metrics.update(means(rewards, prompts, [a.text for a in subject.answers],
                                     list(ev.eval_set.references), origins))


def _check_options(against: str | None, judge: str | None,
                   endpoints: EndpointOptions) -> tuple[int | None, Path | None]:
    """Reads ``--against``, ``--judge`` and ``--judge-endpoint`` before anything loads: the few-shot K (None:
    not few-shot) and the judge's GGUF (None: no GGUF judge); raises on a K that is not a number, two
    judges, or a judge with nothing to judge."""
    shots_k = fewshot.parse_against(against)
    if judge is not None and endpoints.judge is not None:
        raise QuicktuneError("--judge and --judge-endpoint both name a judge: give one",
                             hint="--judge MODEL.gguf runs a local GGUF; --judge-endpoint URL --judge-model NAME asks "
                             "a model behind an OpenAI-compatible server.")
    for option, given in (("--judge", judge is not None), ("--judge-endpoint", endpoints.judge is not None)):
        if given and not against:
            raise QuicktuneError(f"{option} compares two answers per row: it needs --against (base, fewshot or a run)")
    return shots_k, _judge_file(judge) if judge is not None else None


def _served_quantization(run: TrainedRun, gguf: str | None) -> str:
    """The exported GGUF the served model's answers are compared with (``gguf``, or the one
    ``pick_quantization`` picks), checked before anything loads; a run not exported is an error."""
    try:
        quant = pick_quantization(run.run_dir, run.manifest, gguf or None)
        exported_gguf(run.run_dir, run.manifest, quant)
    except QuicktuneError as exc:
        raise QuicktuneError(f"--endpoint compares the served model's answers with the run's exported GGUF's: "
                             f"{exc.message}", hint=exc.hint) from None
    return quant


def _judge(report: EvalReport, judge_path: Path | None, endpoints: EndpointOptions, progress) -> None:
    """Adds the judged comparison of the run with its last comparator: a GGUF judge (``judge_path``) or
    one behind a server (``endpoints.judge``), when either was given."""
    if judge_path is None and endpoints.judge is None:
        return
    run, other = report.run_subject(), report.comparators()[-1]
    if judge_path is not None:
        progress(f"the judge ({judge_path.name}): {run.label} vs {other.label}, both orders")
        report.judge = judge_pair(judge_path, report.eval_set, other, run, progress)
    else:
        progress(f"the judge ({endpoints.judge.model}): {run.label} vs {other.label}, both orders")
        report.judge = judge_pair_endpoint(endpoints.judge, report.eval_set, other, run,
                                           concurrency=endpoints.concurrency, progress=progress)


def _judge_file(judge: str) -> Path:
    """The judge's GGUF: a path, or ``pkg://`` like model.base."""
    path = resolve_model(judge).path if judge.startswith(PACKAGE_SCHEME) else Path(judge).expanduser()
    if path is None or not path.is_file() or path.suffix != ".gguf":
        raise QuicktuneError(
            f"--judge {judge}: {'not a .gguf file' if path is not None and path.is_file() else 'no such file'}",
            hint="Give a local GGUF chat model (any one llama.cpp runs), "
            "e.g. --judge ~/models/qwen2.5-7b-instruct-q4_k_m.gguf",
        )
    return path.resolve()


def _ask_questions(run: TrainedRun, data_files, limit: int | None, max_new_tokens: int | None,
                   progress) -> _Evaluation:
    """Reads the run's recipe, its held-out set (or ``data_files``, ``limit`` rows) and its trained chat
    tokenizer; the answer budget is ``max_new_tokens``, else the longest reference + 32 tokens."""
    eval_set = load_eval_set(_served_recipe(run) if data_files else run.recipe, list(data_files), limit)
    if data_files:
        eval_set = moved_as_trained(run, eval_set)
    tokenizer = run.chat_tokenizer()
    budget = max_new_tokens or answer_budget(tokenizer, eval_set.references)
    return _Evaluation(run, eval_set, tokenizer, budget, progress)


def _served_recipe(run: TrainedRun):
    """The run's recipe with data.system_prompt set to the system prompt serving sends (export.system, else what
    training used): rows of ``--data`` files without a system turn are asked as the exported model is asked.
    (The held-out split keeps what training inserted: those rows were split off the training data.)"""
    recipe = run.recipe.model_copy(deep=True)
    recipe.data.system_prompt = served_prompt(run.recipe, run.manifest)
    return recipe


def _against_base(ev: _Evaluation) -> None:
    """Adds the base model's subject (from the cache when its answers were computed before)."""
    ev.against = "base"
    ev.progress("the base model")
    ev.subjects.append(base_subject(ev.run, ev.tokenizer, ev.eval_set, ev.budget, ev.progress, ev.cache))


def _against_fewshot(ev: _Evaluation, shots_k: int) -> None:
    """Adds the base model twice, loaded once: alone, and with ``shots_k`` training conversations before
    each held-out prompt (evaluate/fewshot.py); records which conversations and the prompts' lengths."""
    recipe = ev.run.recipe
    ev.against = f"{fewshot.NAME}:{shots_k}"
    served = ((ev.run.manifest.get("data") or {}).get("system_prompt") or {}).get("served")
    train = prepare_for_recipe(recipe, tokenize=False).train
    shots = fewshot.pick_shots(train, ev.eval_set, shots_k, recipe.training.seed)
    shot_set = fewshot.with_shots(ev.eval_set, shots, served)
    views = [
        View.plain("base", ev.tokenizer, ev.eval_set, recipe),
        View(
            fewshot.label(shots_k),
            [ev.tokenizer.encode_prompt(p) for p in shot_set.prompts],
            fewshot.held_out_answer_tokens(ev.tokenizer, shot_set.examples, shots),
        ),
    ]
    ev.progress(f"the base model, alone and with {shots_k} examples in the prompt")
    alone, with_shots = evaluate_hf_views(ev.run.base_folder(), None, recipe, ev.tokenizer, ev.eval_set, ev.budget,
                                          views, answer_cache.for_base(ev.run.manifest, ev.cache))
    ev.subjects += [alone, with_shots]
    ev.fewshot = {
        "k": shots_k,
        "examples": [shot.origin for shot in shots],
        "chosen_by": f"training rows ranked by sha256(seed {recipe.training.seed} + row), none like a held-out prompt",
        "system_prompt": served,
        "prompt_tokens": {"without": alone.prompt_tokens, "with": with_shots.prompt_tokens},
    }


def _against_run(ev: _Evaluation, against: str, runs_root: Path) -> None:
    """Adds another run's subject (``against``: a run reference, resolved beside this run's recipe)."""
    other = resolve_run(against, runs_root, ev.run.run_dir.parent.name)
    ev.against = run_label(other)
    ev.progress(ev.against)
    ev.subjects += run_subjects(open_run(other), ev.eval_set, ev.tokenizer, ev.budget, cache=ev.cache)


def _gguf_subject(ev: _Evaluation, quant: str | None) -> str:
    """Adds the run's exported GGUF (``quant``, or the one ``pick_quantization`` picks) through llama.cpp;
    returns the quantization scored."""
    run = ev.run
    quant = pick_quantization(run.run_dir, run.manifest, quant)
    label = f"{run_label(run.run_dir)} {quant}"
    ev.progress(f"{label} (GGUF)")
    gguf_file = exported_gguf(run.run_dir, run.manifest, quant)
    kept = answer_cache.for_file(run.run_dir, gguf_file, ev.cache)
    ev.subjects.append(evaluate_gguf(label, gguf_file, run.recipe, ev.tokenizer, ev.eval_set, ev.budget, kept))
    return quant


def _ask_server(ev: _Evaluation, endpoints: EndpointOptions) -> None:
    """The served model answers every held-out prompt greedily (without the run's served system prompt
    unless ``with_system``); kept in ``ev.served`` until the GGUF's answers are there to compare with."""
    endpoint = endpoints.endpoint
    label = served_label(endpoint)
    system = served_prompt(ev.run.recipe, ev.run.manifest)
    sent = [served_messages(prompt, system, endpoints.with_system) for prompt in ev.eval_set.prompts]
    start = time.perf_counter()
    replies = ask_all(endpoint, sent, max_tokens=ev.budget, concurrency=endpoints.concurrency,
                      progress=lambda done, total: ev.progress(f"{label} at {endpoint.url}: {done} of {total}"))
    answers = served_answers(replies)
    subject = SubjectResult(label, SERVED_KIND, score_all(answers, ev.eval_set.references), None, answers,
                            round(time.perf_counter() - start, 1))
    ev.served = (subject, sent, sum(len(s) < len(p) for s, p in zip(sent, ev.eval_set.prompts)))


def _add_served(ev: _Evaluation, endpoints: EndpointOptions) -> dict[str, Any]:
    """Adds the served subject after the GGUF's (the last subject) and returns the report's ``served``
    section: the server, what was sent, and how often its answers equal the GGUF's."""
    subject, sent, left_out = ev.served
    gguf = ev.subjects[-1]
    ev.subjects.append(subject)
    system = served_prompt(ev.run.recipe, ev.run.manifest)
    return served_record(endpoints, subject.label, system, left_out, gguf.label,
                         agreement(sent, subject.answers, gguf.answers))
