"""``quicktune eval``: a run against the base model (or another run) on the same held-out set.

Every subject answers the same prompts, rendered with the run's trained chat template
and decoded greedily; its answers are scored with ``metrics`` and its loss on the
reference answers (the trained tokens, as in training) gives the perplexity. A subject
is a Hugging Face model (the base, or base + a run's adapter, loaded through the
training backend) or an exported GGUF through llama.cpp (``--gguf``), so the cost of
quantization shows in the same table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune.data.heldout import EvalSet, load_eval_set
from quicktune.data.tokenizer import stop_token_ids
from quicktune.errors import QuicktuneError
from quicktune.evaluate import fewshot
from quicktune.evaluate.metrics import METRICS, Answer, score_all
from quicktune.evaluate.preference import pair_metrics
from quicktune.evaluate.regression import DEFAULT_THRESHOLD, find_regressions
from quicktune.inference import LOSS_BATCH_TOKENS, cut_at_stop, generate_batch_size, greedy_answers, reference_loss

MAX_NEW_TOKENS_CAP = 512


@dataclass
class SubjectResult:
    label: str
    kind: str  # "hf" or "gguf"
    metrics: dict[str, float | None]
    loss: float | None
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0
    prompt_tokens: float | None = None  # mean prompt length in tokens: what each question costs
    reused: str | None = None  # when these answers were computed, if they came from the cache (the base's)

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
    return evaluate_hf_views(model_dir, adapter_dir, recipe, tokenizer, eval_set, max_new_tokens, [View.plain(label, tokenizer, eval_set, recipe)])[0]


@dataclass
class View:
    """One way of asking the held-out questions of a model: the prompts' token ids, and the
    token ids with labels on the reference answers (the loss)."""

    label: str
    prompts: list[list[int]]
    tokenized: list  # items with .input_ids and .labels

    @classmethod
    def plain(cls, label: str, tokenizer, eval_set: EvalSet, recipe) -> View:
        return cls(label, [tokenizer.encode_prompt(p) for p in eval_set.prompts], _tokenized(tokenizer, eval_set, recipe))


def evaluate_hf_views(
    model_dir: str, adapter_dir: str | None, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int, views: list[View]
) -> list[SubjectResult]:
    """Load one model (base, or base + adapter) once and answer every view's prompts with it."""
    from quicktune.backend import load_backend

    backend = load_backend()
    start = time.perf_counter()
    model, _ = backend.load_model(
        model_dir,
        max_seq_length=recipe.model.max_seq_length,
        load_in_4bit=recipe.model.load_in_4bit,
        dtype=recipe.model.dtype,
        full=False,
    )
    model = backend.for_inference(model, adapter_dir)
    stops = stop_token_ids(tokenizer)
    results = []
    pair_scores = pair_metrics(model, tokenizer, eval_set)  # held-out preference pairs, when there are any
    for view in views:
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
        start = time.perf_counter()
    del model
    return results


def _mean_length(prompts: list[list[int]]) -> float | None:
    return round(sum(map(len, prompts)) / len(prompts), 1) if prompts else None


def _tokenized(tokenizer, eval_set: EvalSet, recipe):
    from quicktune.data.masking import tokenize_examples

    return tokenize_examples(
        tokenizer, eval_set.examples, max_length=recipe.model.max_seq_length, responses_only=recipe.data.train_on_responses_only
    )


# --- the base model's answers, computed once ----------------------------------------------------
#
# Every run of a recipe is compared with the same base model on the same held-out rows, so the base's
# answers are kept in the cache (QUICKTUNE_CACHE/eval/) under a key of everything they depend on: the
# base weights' fingerprint, how they are loaded, the exact prompt and answer tokens, the pairs, the
# answer budget and batching, and the versions of the libraries that compute them. Anything else: computed again.


def base_cache_key(manifest: dict, recipe, view: View, eval_set: EvalSet, budget: int) -> str | None:
    """The key of the base's answers to ``view``; the pairs are keyed by their text (the tokenizer that
    turns them into tokens is the one ``view``'s prompt tokens already pin down)."""
    import hashlib
    import json

    from quicktune.backend import load_backend
    from quicktune.train.trainer import package_versions

    fingerprint = (manifest.get("base_model") or {}).get("fingerprint")
    if not fingerprint:
        return None
    pairs = getattr(eval_set, "pairs", None) or []
    backend = load_backend()
    parts = {
        "fingerprint": fingerprint,
        "revision": recipe.model.revision,
        "loading": [recipe.model.dtype, recipe.model.load_in_4bit, recipe.model.max_seq_length],
        "backend": [backend.name, backend.device],
        "prompts": view.prompts,
        "answers": [[t.input_ids, t.labels] for t in view.tokenized],
        "references": eval_set.references,
        "pairs": [[p.conversation(p.chosen), p.rejected] for p in pairs],
        "budget": budget,
        "batch": generate_batch_size(view.prompts, budget),  # which rows share a padded batch
        "loss_batch_tokens": LOSS_BATCH_TOKENS,  # and which share one for the loss
        "packages": package_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def base_subject(manifest: dict, recipe, tokenizer, eval_set: EvalSet, budget: int, progress=lambda m: None) -> SubjectResult:
    """The base model's subject: from the cache when the same answers were computed before."""
    import json

    from quicktune.base_model import base_folder
    from quicktune.data.tokenizer import cache_dir
    from quicktune.runs import now, write_atomic

    view = View.plain("base", tokenizer, eval_set, recipe)  # the prompts and answer tokens: keyed, then asked
    key = base_cache_key(manifest, recipe, view, eval_set, budget)
    path = cache_dir() / "eval" / f"base-{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
            answers = [Answer(a["text"], a["stopped"]) for a in kept["answers"]]
            progress(f"the base model (its answers from {kept['computed']}, kept in {path.parent})")
            return SubjectResult("base", "hf", kept["metrics"], kept["loss"], answers, kept["seconds"],
                                 kept["prompt_tokens"], reused=kept["computed"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable entry is computed again and replaced
    [result] = evaluate_hf_views(base_folder(manifest, recipe), None, recipe, tokenizer, eval_set, budget, [view])
    if path is not None:
        entry = {**result.to_json(), "computed": now()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(entry, ensure_ascii=False))
        except OSError:
            pass  # a cache that cannot be written costs time next run, nothing else
    return result


# --- GGUF subjects -------------------------------------------------------------------------------


def evaluate_gguf(label: str, gguf: Path, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int) -> SubjectResult:
    import numpy as np

    from quicktune import llamacpp

    start = time.perf_counter()
    stops = stop_token_ids(tokenizer)
    prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
    tokenized = _tokenized(tokenizer, eval_set, recipe)
    context = max(max(len(p) for p in prompts) + max_new_tokens, max(len(t.input_ids) for t in tokenized)) + 8
    llm = llamacpp.load(gguf, n_ctx=context, logits_all=True)
    answers = []
    for prompt in prompts:
        ids, stopped = cut_at_stop(llamacpp.greedy(llm, prompt, stops, max_new_tokens), stops)
        answers.append(Answer(llm.detokenize(ids).decode("utf-8", errors="replace"), stopped))
    total, count = 0.0, 0
    for item in tokenized:
        llm.reset()
        llm.eval(item.input_ids)
        logits = np.asarray(llm.scores[: len(item.input_ids) - 1], dtype=np.float64)
        labels = np.asarray(item.labels[1:])
        keep = labels != -100
        if keep.any():
            rows = logits[keep]
            top = rows.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
            total += float((log_norm - rows[np.arange(len(rows)), labels[keep]]).sum())
            count += int(keep.sum())
    del llm
    loss = round(total / count, 5) if count else None
    return SubjectResult(
        label, "gguf", score_all(answers, eval_set.references), loss, answers, round(time.perf_counter() - start, 1),
        _mean_length(prompts),
    )


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
    threshold: float = DEFAULT_THRESHOLD  # a metric that fell by more than this (points) is a regression

    @property
    def run_label(self) -> str:
        from quicktune.runs import run_label

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
            "data": {"source": self.eval_set.source, "rows": len(self.eval_set.examples), "sha256": self.eval_set.sha256},
            "prompts": [p[-1]["content"] for p in self.eval_set.prompts],
            "references": self.eval_set.references,
            "subjects": [s.to_json() for s in self.subjects],
            "fewshot": self.fewshot,
            "judge": self.judge,
            "regressions": {"threshold_points": self.threshold, "run": self.run_label, "fell": self.regressions()},
        }


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
    progress=lambda message: None,
) -> EvalReport:
    from quicktune.base_model import base_folder
    from quicktune.data.tokenizer import load_chat_tokenizer
    from quicktune.recipe import load_recipe
    from quicktune.runs import now, pick_quantization, read_manifest, resolve_run, run_label, trained_dir

    shots_k = fewshot.parse_against(against)
    if judge is not None and not against:
        raise QuicktuneError("--judge compares two answers per row: it needs --against (base, fewshot or a run)")
    judge_path = _judge_file(judge) if judge is not None else None
    manifest = read_manifest(run_dir)
    if manifest.get("status") != "finished":
        raise QuicktuneError(f"{run_dir} is not finished (status: {manifest.get('status')})")
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    eval_set = load_eval_set(recipe, list(data_files), limit)
    tokenizer = load_chat_tokenizer(str(trained_dir(run_dir, manifest)))
    budget = max_new_tokens or answer_budget(tokenizer, eval_set.references)
    label = run_label(run_dir)
    subjects = []
    against_label = None
    fewshot_info = None

    if against == "base":
        against_label = "base"
        progress("the base model")
        subjects.append(base_subject(manifest, recipe, tokenizer, eval_set, budget, progress))
    elif shots_k is not None:
        from quicktune.data.check import prepare_for_recipe

        against_label = f"{fewshot.NAME}:{shots_k}"
        served = ((manifest.get("data") or {}).get("system_prompt") or {}).get("served")
        shots = fewshot.pick_shots(prepare_for_recipe(recipe, tokenize=False).train, eval_set, shots_k, recipe.training.seed)
        shot_set = fewshot.with_shots(eval_set, shots, served)
        views = [
            View.plain("base", tokenizer, eval_set, recipe),
            View(
                fewshot.label(shots_k),
                [tokenizer.encode_prompt(p) for p in shot_set.prompts],
                fewshot.held_out_answer_tokens(tokenizer, shot_set.examples, shots),
            ),
        ]
        progress(f"the base model, alone and with {shots_k} examples in the prompt")
        subjects += evaluate_hf_views(base_folder(manifest, recipe), None, recipe, tokenizer, eval_set, budget, views)
        fewshot_info = {
            "k": shots_k,
            "examples": [shot.origin for shot in shots],
            "chosen_by": f"training rows ranked by sha256(seed {recipe.training.seed} + row), none like a held-out prompt",
            "system_prompt": served,
            "prompt_tokens": {"without": subjects[0].prompt_tokens, "with": subjects[1].prompt_tokens},
        }
    elif against:
        other = resolve_run(against, runs_root, run_dir.parent.name)
        against_label = run_label(other)
        progress(against_label)
        subjects.append(run_subject(other, eval_set, tokenizer, budget))
    progress(label)
    subjects.append(run_subject(run_dir, eval_set, tokenizer, budget))
    quant = None
    if gguf is not None:
        quant = pick_quantization(run_dir, manifest, gguf or None)
        progress(f"{label} {quant} (GGUF)")
        from quicktune.runs import exported_gguf

        gguf_file = exported_gguf(run_dir, manifest, quant)
        subjects.append(evaluate_gguf(f"{label} {quant}", gguf_file, recipe, tokenizer, eval_set, budget))
    report = EvalReport(
        run_dir, eval_set, recipe.eval.metric, subjects, created=now(), against=against_label, gguf=quant,
        fewshot=fewshot_info, threshold=threshold,
    )
    if judge_path is not None:
        from quicktune.evaluate.judge import judge_pair

        other = report.comparators()[-1]
        progress(f"the judge ({judge_path.name}): {label} vs {other.label}, both orders")
        report.judge = judge_pair(judge_path, eval_set, other, report.run_subject())
    return report


def _judge_file(judge: str) -> Path:
    """The judge's GGUF: a path, or ``pkg://`` like model.base."""
    from quicktune.models import PACKAGE_SCHEME, resolve_model

    path = resolve_model(judge).path if judge.startswith(PACKAGE_SCHEME) else Path(judge).expanduser()
    if path is None or not path.is_file() or path.suffix != ".gguf":
        raise QuicktuneError(
            f"--judge {judge}: {'not a .gguf file' if path is not None and path.is_file() else 'no such file'}",
            hint="Give a local GGUF chat model (any one llama.cpp runs), e.g. --judge ~/models/qwen2.5-7b-instruct-q4_k_m.gguf",
        )
    return path.resolve()


def run_subject(run_dir: Path, eval_set: EvalSet, tokenizer, budget: int) -> SubjectResult:
    from quicktune.base_model import base_folder
    from quicktune.recipe import load_recipe
    from quicktune.runs import read_manifest, run_label, trained_dir

    manifest = read_manifest(run_dir)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    if manifest.get("method") == "full":
        return evaluate_hf(run_label(run_dir), str(trained_dir(run_dir, manifest)), None, recipe, tokenizer, eval_set, budget)
    adapter = str(trained_dir(run_dir, manifest))
    base = base_folder(manifest, recipe)
    from quicktune.adapters import check_adapter_base

    check_adapter_base(Path(adapter), Path(base))  # an adapter of another model: an error, not a traceback
    return evaluate_hf(run_label(run_dir), base, adapter, recipe, tokenizer, eval_set, budget)
