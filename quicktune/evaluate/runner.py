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

from quicktune.data.check import stop_token_ids
from quicktune.data.heldout import EvalSet, load_eval_set
from quicktune.errors import QuicktuneError
from quicktune.evaluate.metrics import METRICS, Answer, score_all

MAX_NEW_TOKENS_CAP = 512


@dataclass
class SubjectResult:
    label: str
    kind: str  # "hf" or "gguf"
    metrics: dict[str, float | None]
    loss: float | None
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

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
            "answers": [{"text": a.text, "stopped": a.stopped} for a in self.answers],
        }


# --- Hugging Face subjects -----------------------------------------------------------------------


def _answer_budget(tokenizer, references: list[str]) -> int:
    longest = max(len(enc.ids) for enc in tokenizer.encode_batch(references))
    return min(longest + 32, MAX_NEW_TOKENS_CAP)


def evaluate_hf(
    label: str, model_dir: str, adapter_dir: str | None, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int
) -> SubjectResult:
    from quicktune.train.backend import greedy_answers, load_backend

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
    prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
    generated = greedy_answers(model, prompts, stops, tokenizer.pad_id, max_new_tokens)
    answers = []
    for tokens in generated:
        ids, stopped = _cut(tokens, stops)
        answers.append(Answer(tokenizer.backend.decode(ids, skip_special_tokens=False), stopped))
    loss = _loss_hf(model, _tokenized(tokenizer, eval_set, recipe))
    del model
    return SubjectResult(label, "hf", score_all(answers, eval_set.references), loss, answers, round(time.perf_counter() - start, 1))


def _tokenized(tokenizer, eval_set: EvalSet, recipe):
    from quicktune.data.masking import tokenize_examples

    return tokenize_examples(
        tokenizer, eval_set.examples, max_length=recipe.model.max_seq_length, responses_only=recipe.data.train_on_responses_only
    )


def _cut(tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """An answer without its stop token, and whether it had one."""
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[:index], True
    return tokens, False


def _loss_hf(model, tokenized) -> float | None:
    """Mean negative log-likelihood of the trained tokens (the reference answers)."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for item in tokenized:
            ids = torch.tensor([item.input_ids], device=device)
            labels = torch.tensor(item.labels[1:], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            keep = labels != -100
            if keep.any():
                total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
                count += int(keep.sum())
    return round(total / count, 5) if count else None


# --- GGUF subjects -------------------------------------------------------------------------------


def evaluate_gguf(label: str, gguf: Path, recipe, tokenizer, eval_set: EvalSet, max_new_tokens: int) -> SubjectResult:
    import numpy as np

    from quicktune.export import llamacpp

    start = time.perf_counter()
    stops = stop_token_ids(tokenizer)
    prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
    tokenized = _tokenized(tokenizer, eval_set, recipe)
    context = max(max(len(p) for p in prompts) + max_new_tokens, max(len(t.input_ids) for t in tokenized)) + 8
    llm = llamacpp.load(gguf, n_ctx=context, logits_all=True)
    answers = []
    for prompt in prompts:
        ids, stopped = _cut(llamacpp.greedy(llm, prompt, stops, max_new_tokens), stops)
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
    return SubjectResult(label, "gguf", score_all(answers, eval_set.references), loss, answers, round(time.perf_counter() - start, 1))


# --- the comparison ------------------------------------------------------------------------------


@dataclass
class EvalReport:
    run_dir: Path
    eval_set: EvalSet
    metric: str
    subjects: list[SubjectResult]
    created: str = ""
    against: str | None = None  # "base", another run's label (recipe/vN), or None: the run alone
    gguf: str | None = None  # the quantization scored through llama.cpp, if any

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
    progress=lambda message: None,
) -> EvalReport:
    from quicktune.data.tokenizer import load_chat_tokenizer
    from quicktune.recipe import load_recipe
    from quicktune.train.base_model import base_folder
    from quicktune.train.runs import now, pick_quantization, read_manifest, resolve_run, run_label, trained_dir

    manifest = read_manifest(run_dir)
    if manifest.get("status") != "finished":
        raise QuicktuneError(f"{run_dir} is not finished (status: {manifest.get('status')})")
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    eval_set = load_eval_set(recipe, list(data_files), limit)
    tokenizer = load_chat_tokenizer(str(trained_dir(run_dir, manifest)))
    budget = max_new_tokens or _answer_budget(tokenizer, eval_set.references)
    label = run_label(run_dir)
    subjects = []
    against_label = None

    if against == "base":
        against_label = "base"
        progress("the base model")
        subjects.append(evaluate_hf("base", base_folder(manifest, recipe), None, recipe, tokenizer, eval_set, budget))
    elif against:
        other = resolve_run(against, runs_root, run_dir.parent.name)
        against_label = run_label(other)
        progress(against_label)
        subjects.append(_run_subject(other, eval_set, tokenizer, budget))
    progress(label)
    subjects.append(_run_subject(run_dir, eval_set, tokenizer, budget))
    quant = None
    if gguf is not None:
        quant = pick_quantization(run_dir, manifest, gguf or None)
        progress(f"{label} {quant} (GGUF)")
        gguf_file = run_dir / manifest["export"]["ggufs"][quant]["file"]
        subjects.append(evaluate_gguf(f"{label} {quant}", gguf_file, recipe, tokenizer, eval_set, budget))
    return EvalReport(run_dir, eval_set, recipe.eval.metric, subjects, created=now(), against=against_label, gguf=quant)


def _run_subject(run_dir: Path, eval_set: EvalSet, tokenizer, budget: int) -> SubjectResult:
    from quicktune.recipe import load_recipe
    from quicktune.train.base_model import base_folder
    from quicktune.train.runs import read_manifest, run_label, trained_dir

    manifest = read_manifest(run_dir)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    if manifest.get("method") == "full":
        return evaluate_hf(run_label(run_dir), str(trained_dir(run_dir, manifest)), None, recipe, tokenizer, eval_set, budget)
    adapter = str(trained_dir(run_dir, manifest))
    return evaluate_hf(run_label(run_dir), base_folder(manifest, recipe), adapter, recipe, tokenizer, eval_set, budget)
