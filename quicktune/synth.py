"""``quicktune data synth``: new examples in the seed file's format, written by a stronger model behind an
OpenAI-compatible endpoint, each checked like ``data check`` checks a row before it is kept.

For row number ``r`` (counted over every run into the same output, so a resumed run asks new questions)
a prompt shows ``SEEDS_PER_PROMPT`` seed rows, picked by ``random.Random(seed, r)``, and asks for ONE new,
different row as a JSON object; the request carries ``temperature`` and the per-row seed ``seed·1000003+r``.
The seeds' system prompt is kept out of the prompt and put back into the new row. Up to ``concurrency``
requests are in flight (worker threads sharing one client); every reply is judged in the main thread
(``quicktune.data.synth_check``), so two concurrent rows that repeat each other are caught, and a kept row
is appended and fsync'd at once (``quicktune.data.synth_files``). The files it writes, and how a run
resumes from them, are described there.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.console import console, print_synth_summary, synth_progress
from quicktune.data.check import load_examples
from quicktune.data.pipeline import recipe_tokenizer
from quicktune.data.synth_check import (
    LengthLimit,
    Rejection,
    RowCheck,
    Seeds,
    SynthSummary,
    extract_json,
    read_rows,
    read_seeds,
    with_system,
    without_system,
)
from quicktune.data.synth_files import (
    SynthFiles,
    append_line,
    read_lineage,
    read_rejections,
    repair_tail,
    write_lineage,
)
from quicktune.endpoints import READ_TIMEOUT, Endpoint, EndpointError, Reply
from quicktune.errors import DataError, QuicktuneError
from quicktune.recipe import load_recipe
from quicktune.runs import now, sha256_file

SEEDS_PER_PROMPT = 3
TEMPERATURE = 0.9
MAX_TOKENS = 1024
TRIES_PER_ROW = 3  # default --max-tries: this many requests per row still wanted
_SEED_STRIDE = 1_000_003
_INSTRUCTIONS = ("You write new training examples for fine-tuning a chat model. "
                 "You answer with one JSON object and nothing else.")


@dataclass(frozen=True)
class SynthRequest:
    """What ``data synth`` is asked to do: ``count`` rows in ``output`` in all, from ``seeds``, by ``endpoint``."""

    seeds: Path
    output: Path
    endpoint: Endpoint
    count: int
    concurrency: int = 4
    eval_paths: tuple[str, ...] = ()
    recipe_ref: str | None = None
    seed: int = 0
    temperature: float = TEMPERATURE
    max_tokens: int = MAX_TOKENS
    max_tries: int | None = None  # requests this run; None: TRIES_PER_ROW per row still wanted

    def params(self) -> dict[str, Any]:
        """The settings the lineage records (never the key)."""
        return {"n": self.count, "concurrency": self.concurrency, "seed": self.seed,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "max_tries": self.max_tries,
                "seeds_per_prompt": SEEDS_PER_PROMPT, "timeout_s": self.endpoint.timeout,
                "key_env": self.endpoint.key_env}


# --- the prompt -------------------------------------------------------------------------------------------


def sample_seeds(total: int, seed: int, row: int, k: int = SEEDS_PER_PROMPT) -> list[int]:
    """The seed rows (indices) shown for row ``row``: the same for the same ``seed`` and row."""
    return random.Random(seed * _SEED_STRIDE + row).sample(range(total), min(k, total))


def request_seed(seed: int, row: int) -> int:
    """The sampling seed sent with row ``row``'s request (servers that take one make rows reproducible)."""
    return (seed * _SEED_STRIDE + row) % 2**31


def build_prompt(seeds: Seeds, picked: list[int]) -> list[dict[str, str]]:
    """The chat messages asking for one new row like the seed rows ``picked``."""
    lines = "\n".join(json.dumps(without_system(seeds.records[i], seeds.fmt), ensure_ascii=False) for i in picked)
    system = seeds.system(picked[0])
    note = (f"\n\nIn these examples the assistant follows this system prompt (left out above):\n{system}"
            if system else "")
    ask = (f"Here are {len(picked)} examples from a dataset, one JSON object per line:\n\n{lines}{note}\n\n"
           "Write ONE new example for this dataset: the same JSON keys and structure, the same style, tone and "
           "length, but a different request that none of the examples above makes (not a copy, not a rewording). "
           "Answer with the JSON object only.")
    return [{"role": "system", "content": _INSTRUCTIONS}, {"role": "user", "content": ask}]


# --- inputs and the output so far -------------------------------------------------------------------------


@dataclass
class Inputs:
    """The seeds, the check every new row passes, and what the lineage says about where they came from."""

    seeds: Seeds
    check: RowCheck
    sources: dict[str, Any]


def load_inputs(request: SynthRequest, files: SynthFiles) -> Inputs:
    """Reads and checks the seeds, the recipe's training rows and the eval rows (``DataError`` on a broken
    line); the length limit is the recipe's tokens or ``MAX_CHARS``. Refuses an output that is an input."""
    recipe = load_recipe(request.recipe_ref) if request.recipe_ref else None
    fmt = recipe.data.format if recipe else "auto"
    system_prompt = recipe.data.system_prompt if recipe else None
    seeds = read_seeds(request.seeds, fmt)
    train_paths = [p for p in (recipe.data.train if recipe else []) if not _same(p, request.seeds)]
    eval_paths = list(request.eval_paths or (recipe.data.eval if recipe else []))
    for path in [request.seeds, *train_paths, *eval_paths]:
        if _same(path, files.output):
            raise DataError(f"-o {files.output} is one of the inputs ({path}): data synth writes a new file",
                            hint="Name another output; merge it into your data after reading it.")
    pool = list(seeds.examples)
    if train_paths:
        pool += load_examples(train_paths, fmt=fmt, system_prompt=system_prompt)[0]
    evaluation = load_examples(eval_paths, fmt=fmt, system_prompt=system_prompt, split="eval")[0] if eval_paths else []
    length = LengthLimit()
    if recipe is not None:
        length = LengthLimit(recipe_tokenizer(recipe), recipe.model.max_seq_length, recipe.data.train_on_responses_only)
    check = RowCheck(seeds.fmt, length, evaluation, system_prompt, pool)
    sources = {
        "seeds": {"path": str(request.seeds), "sha256": sha256_file(request.seeds), "rows": len(seeds.examples)},
        "train": [{"path": str(p), "sha256": sha256_file(p)} for p in train_paths],
        "eval": [{"path": str(p), "sha256": sha256_file(p)} for p in eval_paths],
        "recipe": request.recipe_ref, "format": seeds.fmt, "length_limit": length.describe(),
    }
    return Inputs(seeds, check, sources)


def _same(one: str | Path, two: str | Path) -> bool:
    return Path(one).resolve() == Path(two).resolve()


@dataclass
class Resumed:
    """What an output holds already: its lineage (a fresh one for a new output), and the next row number."""

    lineage: dict[str, Any]
    rows: int
    rejected: int
    next_row: int
    notes: list[str]


def open_output(request: SynthRequest, inputs: Inputs, files: SynthFiles) -> Resumed:
    """Readies the output to be appended to: repairs a last line cut off by a crash, reads the rows kept
    earlier into the duplicate check, and finds the next row number (after every row tried before).
    Refuses a non-empty output that data synth did not write (it has no lineage beside it)."""
    lineage = read_lineage(files.lineage)
    if lineage is None and files.output.is_file() and files.output.stat().st_size:
        raise DataError(f"-o {files.output} exists and has no {files.lineage.name} beside it: data synth did not "
                        "write it, and will not append to it", hint="Name a new output file.")
    notes = [note for note in (repair_tail(files.output), repair_tail(files.rejected)) if note]
    kept = read_rows(files.output, inputs.seeds.fmt) if files.output.is_file() else []
    inputs.check.add(kept)
    rejections = read_rejections(files.rejected)
    lineage = lineage or {"command": "quicktune data synth", "output": str(files.output), "created": now(),
                          "runs": []}
    if lineage.get("seeds", {}).get("sha256") not in (None, inputs.sources["seeds"]["sha256"]):
        notes.append(f"{request.seeds} changed since the earlier run into this output (its sha256 differs)")
    last = max((r.get("row", -1) for r in rejections if isinstance(r.get("row"), int)), default=-1)
    next_row = max(int(lineage.get("next_row", 0)), last + 1, len(kept) + len(rejections))
    return Resumed(lineage, len(kept), len(rejections), next_row, notes)


# --- the run ---------------------------------------------------------------------------------------------


class _Workers:
    """``count`` daemon threads that ask the endpoint for row numbers put in ``jobs`` and put
    ``(row, Reply or exception)`` in ``results``. Daemons: Ctrl-C does not wait for a request in flight."""

    def __init__(self, count: int, ask: Callable[[int], Reply]) -> None:
        self.ask = ask
        self.jobs: queue.Queue[int | None] = queue.Queue()
        self.results: queue.Queue[tuple[int, Reply | BaseException]] = queue.Queue()
        self.threads = [threading.Thread(target=self._work, name=f"quicktune-synth-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (row := self.jobs.get()) is not None:
            try:
                outcome: Reply | BaseException = self.ask(row)
            except BaseException as exc:  # handed to the main thread, which raises it
                outcome = exc
            self.results.put((row, outcome))

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class Synthesis:
    """One ``data synth`` run: ``run()`` checks the inputs and the endpoint, then generates until the output
    holds ``count`` rows or the tries run out. ``summary`` says what happened, also after Ctrl-C or an
    endpoint failure (both re-raised once the lineage is saved)."""

    def __init__(self, request: SynthRequest) -> None:
        self.request = request
        self.files = SynthFiles.beside(request.output)
        self.summary = SynthSummary(self.files.output, self.files.rejected, self.files.lineage, request.count)
        self.session: dict[str, Any] = {}
        self.in_flight = 0
        self.tries_left = 0

    def run(self, *, show_progress: bool = True) -> SynthSummary:
        """Reads the inputs, checks the endpoint, resumes the output and generates; returns the summary."""
        request = self.request
        self.inputs = load_inputs(request, self.files)
        client = request.endpoint.client()
        request.endpoint.check(client)  # an unreachable server, a wrong model or a refused key: before any row
        self.resumed = open_output(request, self.inputs, self.files)
        self.summary.notes += self.resumed.notes
        self.summary.total_rows, self.summary.total_rejected = self.resumed.rows, self.resumed.rejected
        still = max(0, request.count - self.resumed.rows)
        if not still:  # done already: nothing to ask, nothing to record
            self.summary.status = "finished"
            return self.summary
        self.tries_left = request.max_tries or TRIES_PER_ROW * still
        self._start_session()
        started = time.monotonic()
        workers = _Workers(request.concurrency, lambda row: self._ask(client, row))
        try:
            with synth_progress(self.summary, show=show_progress) as update:
                self._generate(workers, lambda: self._tick(started, update))
            self.summary.status = "finished" if self.summary.total_rows >= request.count else "out of tries"
        except KeyboardInterrupt:
            self.summary.status = "interrupted"
            raise
        except EndpointError as exc:
            self.summary.status = "failed"
            raise EndpointError(exc.message, hint=" ".join(filter(None, [exc.hint, self.kept_note()]))) from None
        except Exception:
            self.summary.status = "failed"
            raise
        finally:
            workers.close()
            self.summary.seconds = time.monotonic() - started
            self._save()
        return self.summary

    def kept_note(self) -> str:
        """Where the rows kept so far are, and how to go on."""
        return (f"The {self.summary.total_rows} row(s) kept so far are in {self.files.output}; "
                "the same command again continues.")

    def _ask(self, client: Any, row: int) -> Reply:
        request, seeds = self.request, self.inputs.seeds
        picked = sample_seeds(len(seeds.records), request.seed, row)
        return request.endpoint.chat(build_prompt(seeds, picked), max_tokens=request.max_tokens,
                                     temperature=request.temperature, seed=request_seed(request.seed, row),
                                     client=client)

    def _generate(self, workers: _Workers, tick: Callable[[], None]) -> None:
        """Keeps up to ``concurrency`` requests in flight, never more than the rows still wanted; judges each
        reply as it comes, saving the lineage (with the next row number) after each."""
        self._dispatch(workers)
        self._save()
        while self.in_flight:
            try:
                row, outcome = workers.results.get(timeout=0.25)
            except queue.Empty:
                tick()
                continue
            self.in_flight -= 1
            if isinstance(outcome, BaseException):
                raise outcome
            self._judge(row, outcome)
            self._dispatch(workers)
            self._save()
            tick()

    def _dispatch(self, workers: _Workers) -> None:
        while (self.in_flight < self.request.concurrency and self.tries_left > 0
               and self.summary.total_rows + self.in_flight < self.request.count):
            workers.jobs.put(self.resumed.next_row)
            self.resumed.next_row += 1
            self.in_flight += 1
            self.tries_left -= 1

    def _judge(self, row: int, reply: Reply) -> None:
        """Checks one reply; appends it to the output or to the rejected rows."""
        seeds, summary = self.inputs.seeds, self.summary
        like = sample_seeds(len(seeds.records), self.request.seed, row)[0]
        found = extract_json(reply.text)
        candidate = None if found is None else with_system(found, seeds.fmt, seeds.system(like), seeds.records[like])
        verdict = self.inputs.check.check(reply.text, candidate, f"{self.files.output}:{summary.total_rows + 1}")
        if verdict.accepted:
            append_line(self.files.output, candidate)
            self.inputs.check.add([verdict.example])
            summary.accepted += 1
            summary.total_rows += 1
            return
        detail = verdict.detail
        if reply.finish_reason == "length" and verdict.reason in ("not parseable", "format"):
            detail += f" (the reply was cut off at --max-tokens {self.request.max_tokens})"
        append_line(self.files.rejected, {"row": row, "reason": verdict.reason, "detail": detail,
                                          "reply": reply.text})
        summary.rejections.append(Rejection(row, verdict.reason, detail))
        summary.total_rejected += 1

    def _tick(self, started: float, update: Callable[[], None]) -> None:
        self.summary.seconds = time.monotonic() - started
        update()

    def _start_session(self) -> None:
        self.session = {"started": now(), "ended": None, "status": "running",
                        "endpoint": self.request.endpoint.describe(),
                        "params": {**self.request.params(), "max_tries": self.tries_left},
                        "first_row": self.resumed.next_row, "accepted": 0, "rejected": 0}
        self.resumed.lineage["runs"].append(self.session)

    def _save(self) -> None:
        """Rewrites the lineage (atomically): sources, totals, the next row number and this run's counts."""
        summary, session = self.summary, self.session
        session.update(status=summary.status, ended=now() if summary.status != "running" else None,
                       accepted=summary.accepted, rejected=len(summary.rejections),
                       seconds=round(summary.seconds, 1))
        lineage = self.resumed.lineage
        lineage.update(self.inputs.sources)
        lineage.update(endpoint=self.request.endpoint.describe(), wanted=self.request.count,
                       rows=summary.total_rows, rejected=summary.total_rejected,
                       next_row=self.resumed.next_row, updated=now())
        write_lineage(self.files.lineage, lineage)


def synthesize(request: SynthRequest, *, show_progress: bool = False) -> SynthSummary:
    """Runs ``data synth`` (see ``Synthesis``) and returns its summary."""
    return Synthesis(request).run(show_progress=show_progress)


# --- the command -----------------------------------------------------------------------------------------


def synth_command(seeds: str, output: str, *, url: str, model: str, count: int, concurrency: int = 4,
                  eval_paths: tuple[str, ...] = (), recipe_ref: str | None = None, key_env: str | None = None,
                  seed: int = 0, temperature: float = TEMPERATURE, max_tokens: int = MAX_TOKENS,
                  max_tries: int | None = None, timeout: float = READ_TIMEOUT) -> SynthSummary:
    """What ``quicktune data synth`` does: runs, prints the summary (also after Ctrl-C or a failure), and
    raises a ``QuicktuneError`` when the tries ran out before ``count`` rows were kept."""
    endpoint = Endpoint(url, model, **({"key_env": key_env} if key_env else {}), timeout=timeout)
    request = SynthRequest(Path(seeds), Path(output), endpoint, count, concurrency, tuple(eval_paths), recipe_ref,
                           seed, temperature, max_tokens, max_tries)
    synthesis = Synthesis(request)
    try:
        summary = synthesis.run(show_progress=True)
    except (KeyboardInterrupt, EndpointError):
        if synthesis.summary.status in ("interrupted", "failed"):
            print_synth_summary(synthesis.summary)
        if synthesis.summary.status == "interrupted":
            console.print(synthesis.kept_note(), highlight=False)
        raise
    print_synth_summary(summary)
    if summary.status == "out of tries":
        raise QuicktuneError(
            f"{summary.total_rows} of {count} rows after {summary.tried} tries this run: the rest were rejected",
            hint=f"Why each was rejected: {summary.rejected_file}. Run the same command again to try more "
            "(or raise --max-tries), or use a stronger --model.",
        )
    console.print(f"[green]✓[/] {summary.total_rows} rows in {summary.output}", highlight=False)
    return summary
