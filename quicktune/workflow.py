"""What ``quicktune train`` and ``quicktune run`` do, step by step, with output for a person."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from quicktune.chat import interactive, open_session, resolve_target
from quicktune.console import (
    console,
    print_data_report,
    print_fidelity,
    print_review_written,
    shell_path,
    stdout_to_stderr,
)
from quicktune.errors import QuicktuneError
from quicktune.evaluate import answer_cache
from quicktune.evaluate.compare import compare_runs
from quicktune.evaluate.fewshot import parse_against
from quicktune.evaluate.probes import evaluate_probes, write_probe_report
from quicktune.evaluate.regression import DEFAULT_THRESHOLD
from quicktune.evaluate.report import print_probe_report, print_report, write_report
from quicktune.evaluate.review import check_review_target, review_rows, write_review
from quicktune.evaluate.runner import evaluate_run
from quicktune.evaluate.served import EndpointOptions
from quicktune.export.exporter import export_run, ollama_tag
from quicktune.export.gate import FidelityFailed
from quicktune.library_log import library_output_to_log
from quicktune.plan import GIB, detect_vram_gib, make_plan
from quicktune.promote import history, promote, rollback
from quicktune.recipe import PREFERENCE_METHODS, Recipe, load_recipe, split_batch
from quicktune.runs import (
    RecipeChange,
    adopt_recipe,
    find_resumable,
    holder,
    next_run_dir,
    read_manifest,
    recipe_change,
    resolve_run,
    resume_refusal,
)
from quicktune.serve import serve, served_model
from quicktune.train.config import planned_steps
from quicktune.train.continued import check_parent_lora
from quicktune.train.distributed import describe_processes, launch
from quicktune.train.trainer import check_reporters, load_parent, prepare_data, recipe_sha256, train


def _dry_run(recipe: Recipe, runs_root: Path, parent: str | None, new_run: bool = False,
             changed: RecipeChange | None = None) -> None:
    check_reporters(recipe)  # a dry run refuses what the real one would
    report = prepare_data(recipe).report
    print_data_report(report)
    parent_dir = load_parent(parent, runs_root, recipe)
    resumable = None if new_run else find_resumable(
        runs_root, recipe.name, recipe_sha256(recipe), str(parent_dir) if parent_dir else None)
    resumable = resumable or (changed.run_dir if changed is not None and changed.checkpoint else None)
    target = resumable or next_run_dir(runs_root, recipe.name)
    t = recipe.training
    console.print(f"[bold]plan[/]: {recipe.method} on {recipe.model.base}")
    console.print(
        f"  {planned_steps(recipe, report.train_rows)} steps of {t.batch_size} x {t.grad_accumulation} rows, "
        f"lr {t.learning_rate}, max_seq_length {recipe.model.max_seq_length}, seed {t.seed}"
    )
    if recipe.method == "grpo":
        g = recipe.grpo
        rewards = ", ".join(f"{r.name} x{r.weight:g}" for r in g.rewards)
        console.print(f"  each row a prompt: {g.num_generations} answers of up to {g.max_completion_length} tokens "
                      f"sampled at temperature {g.temperature:g}, scored by {escape(rewards)}; beta {g.beta:g}")
    if (t.gpus or 1) > 1:
        on_gpus = detect_vram_gib() is not None  # without torch; the launch itself counts the GPUs
        batch, accumulation = split_batch(t.batch_size, t.grad_accumulation, t.gpus)
        console.print(f"  on {describe_processes(t.gpus, int(on_gpus))}: {batch} x {accumulation} rows per process")
    console.print(f"  run folder: {target}{' (resumes its last checkpoint)' if resumable else ''}")
    in_use = holder(resumable) if resumable else None
    if in_use:
        console.print(f"  [yellow]{target} is in use[/] ({in_use}): training now would be refused until it ends")
    if parent_dir:
        what = "weights" if (parent_dir / "model").is_dir() else "adapter"
        console.print(f"  starts from the {what} of {parent_dir}")
    console.print("[dim]dry run: no model was loaded[/]")


def _same_command(command: str, recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None,
                  allow_data_change: bool = False) -> str:
    words = ["quicktune", command, recipe_ref, *(f"--set={o}" for o in overrides)]
    if runs_dir != "runs":
        words.append(f"--runs-dir={runs_dir}")
    if parent:
        words.append(f"--from={parent}")
    if allow_data_change:
        words.append("--allow-data-change")
    return shlex.join(words)


def train_command(
    recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, dry_run: bool, command: str = "train",
    *, allow_data_change: bool = False, new_run: bool = False,
):
    recipe = load_recipe(recipe_ref, overrides)
    for note in recipe.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    runs_root = Path(runs_dir)
    parent_dir = load_parent(parent, runs_root, recipe)
    check_parent_lora(recipe, parent, parent_dir)  # --from continues the adapter as it is: no other lora keys
    changed = None if new_run else _changed_recipe(
        recipe, runs_root, parent_dir, adopt=not dry_run,
        continue_with=lambda run_dir: _same_command(command, str(run_dir / "recipe.yaml"), [], runs_dir, parent,
                                                    allow_data_change),
        fresh=_same_command(command, recipe_ref, overrides, runs_dir, parent, allow_data_change) + " --new-run",
    )
    if dry_run:
        _dry_run(recipe, runs_root, parent, new_run, changed)
        return None

    # Resuming is what this command does again: without --new-run, which would start yet another run.
    again = _same_command(command, recipe_ref, overrides, runs_dir, parent, allow_data_change)

    try:
        if (recipe.training.gpus or 1) > 1:  # one process per GPU (CPU processes without CUDA): accelerate launch
            result = launch(recipe_ref, overrides, runs_dir, parent, recipe.training.gpus, console,
                            allow_data_change=allow_data_change, new_run=new_run)
        else:
            with library_output_to_log(runs_root) as log:  # other libraries' output: into the run folder
                log.four_bit = bool(recipe.model.load_in_4bit)  # what the libraries' notes are about
                result = train(recipe, runs_root=runs_root, parent_ref=parent, console=console,
                               allow_data_change=allow_data_change, new_run=new_run)
                log.move_into(result.run_dir)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began: no new checkpoint
        console.print(
            f"[yellow]stopped[/] without a new checkpoint. Run again (resumes the last checkpoint, if any): {again}",
        )
        raise
    if result.status == "interrupted":
        console.print(
            f"[yellow]interrupted[/] at step {result.metrics.get('steps')}; checkpoint saved in {result.run_dir}. "
            f"Resume with: {again}"
        )
        return result
    m = result.metrics
    console.print(f"[green]✓ trained[/] {result.run_dir}: {m['steps']} steps in {m['seconds']} s, " + _losses(m))
    what = "model" if recipe.method == "full" else "adapter"
    console.print(f"  {what}: {result.trained_dir}   loss curve: {result.run_dir / 'loss.png'}")
    if command == "train":
        run = shell_path(result.run_dir)
        console.print("[bold]next[/]:", soft_wrap=True)
        console.print(f"  quicktune export {run}      GGUF files and Ollama Modelfiles", highlight=False)
        if _has_eval_data(result.run_dir):
            console.print(f"  quicktune eval {run}        the run against its base model", highlight=False)
        console.print(f"  quicktune chat {run}        after the export: talk to it here", highlight=False)
    return result


def _changed_recipe(recipe: Recipe, runs_root: Path, parent_dir: Path | None, *, adopt: bool,
                    continue_with, fresh: str) -> RecipeChange | None:
    """The newest unfinished run of this recipe when it started with other keys: resumed (``adopt``: it takes
    this recipe) when none of them changes the steps it trained, said here; else refused, naming the keys and
    how to continue it (``continue_with(run_dir)``) or start anew (``fresh``)."""
    text, sha = recipe.to_yaml(), recipe_sha256(recipe)
    change = recipe_change(runs_root, recipe.name, text, sha, str(parent_dir) if parent_dir else None)
    if change is None or (change.blocking and change.checkpoint is None):  # nothing trained to lose: a new run
        return None
    if change.blocking:
        raise resume_refusal(change, continue_with(change.run_dir), fresh)
    if adopt:
        adopt_recipe(change, text, sha)
    console.print(f"{'resumes' if change.checkpoint else 'restarts'} {escape(str(change.run_dir))} with the recipe "
                  f"changed: {escape('; '.join(change.describe()))}", highlight=False)
    return change


def _losses(m: dict) -> str:
    """The training summary's loss part; a run too short to log a loss says so."""
    def number(key):
        return "-" if m.get(key) is None else f"{m[key]:.3f}"

    if m.get("first_loss") is None and m.get("train_loss") is None:
        text = "no loss logged (fewer steps than training.logging_every)"
        if m.get("mean_train_loss") is not None:
            text += f", mean loss {m['mean_train_loss']:.3f}"
    else:
        text = f"loss {number('first_loss')} → {number('train_loss')}"
    if m.get("best_eval_loss") is not None:
        text += f", best eval loss {m['best_eval_loss']:.3f}"
    return text


def check_plan(recipe_ref: str, overrides: list[str], force: bool) -> None:
    """Before anything loads: refuse a recipe that cannot fit this machine's GPU (``--force`` to try)."""

    vram = detect_vram_gib()
    if vram is None:
        return  # no NVIDIA GPU: a CPU run (the demo), nothing to plan against
    recipe = load_recipe(recipe_ref, overrides)
    plan = make_plan(recipe, vram=vram)
    if plan.fits:
        console.print(f"[dim]plan: about {plan.estimate.total / GIB:.1f} of {vram:.0f} GiB of GPU memory[/]")
        return
    fixes = [" ".join(f"--set {s}" for s in fix.sets) + f"  ({fix.note})" for fix in plan.fixes]
    if force:
        console.print(
            f"[yellow]plan: needs about {plan.estimate.total / GIB:.1f} GiB of {vram:.0f}; --force: trying anyway[/]",
        )
        return
    raise QuicktuneError(
        f"the plan needs about {plan.estimate.total / GIB:.1f} GiB of GPU memory; this GPU has {vram:.0f} GiB",
        problems=fixes or ["no single change fits: try a smaller model"],
        hint=f"See `quicktune plan {recipe_ref}`; add --force to try anyway.",
    )


def run_command(recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, dry_run: bool,
                force: bool = False, *, allow_data_change: bool = False, new_run: bool = False):
    if not dry_run:
        check_plan(recipe_ref, overrides, force)
    phases = Phases()
    # train, export and eval share one log of the libraries' output, named at the end
    with contextlib.nullcontext() if dry_run else library_output_to_log(Path(runs_dir)):
        result = train_command(recipe_ref, overrides, runs_dir, parent, dry_run, command="run",
                               allow_data_change=allow_data_change, new_run=new_run)
        if result is not None and result.status == "finished":
            trained = float(result.metrics.get("seconds") or 0.0)
            phases.split(("data check and loading", None), ("training", trained))
            exported = _export(result.run_dir, [], verify=True, prompts=8, next_steps=False)
            phases.split(("export and fidelity check", None))
            if _has_eval_data(result.run_dir):
                _evaluate(
                    result.run_dir, _run_against(result.run_dir), [], None, None, None, Path(runs_dir), examples=0,
                )
                phases.split(("eval", None))
            probes = load_recipe(str(result.run_dir / "recipe.yaml")).eval.probes
            for probe_set in probes:  # the forgetting check
                _probe(result.run_dir, probe_set, "base", Path(runs_dir), None)
            if probes:
                phases.split(("probes", None))
            _print_next_steps(exported)
            console.print(phases.line(), highlight=False)
    return result


class Phases:
    """Where the wall time of `quicktune run` went, phase by phase, for the closing line."""

    def __init__(self, clock=None):
        self._clock = clock or time.perf_counter
        self._start = self._mark = self._clock()
        self.parts: list[tuple[str, float]] = []

    def split(self, *named: tuple[str, float | None]) -> None:
        """Close the phases since the last split; a phase given as None takes what is left of the interval."""
        now = self._clock()
        left = now - self._mark - sum(seconds for _, seconds in named if seconds is not None)
        self.parts += [(name, max(left, 0.0) if seconds is None else seconds) for name, seconds in named]
        self._mark = now

    def line(self) -> str:
        total = self._clock() - self._start
        parts = ", ".join(f"{name} {_clock(seconds)}" for name, seconds in self.parts)
        return f"time: {_clock(total)} in all — {parts}"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}" if minutes else f"{rest} s"


def _run_against(run_dir: Path) -> str:
    """What `run` scores a finished run against: a DPO/ORPO/GRPO run against the run it started from
    (what it set out to correct), every other run against its base model."""

    manifest = read_manifest(run_dir)
    parent = manifest.get("parent")
    if parent and manifest.get("method") in (*PREFERENCE_METHODS, "grpo") and Path(parent).is_dir():
        return parent
    return "base"


def _has_eval_data(run_dir: Path) -> bool:
    return bool((read_manifest(run_dir).get("data") or {}).get("eval_rows"))


def eval_command(
    run_ref, against, data_files, limit, gguf, max_new_tokens, runs_dir, *, judge=None, probe=None, threshold=None,
    as_json=False, endpoints=None, review=None, review_all=False, force=False, fresh=False,
):
    """The report (an EvalReport, or a ProbeReport with ``probe``); with ``as_json`` nothing is printed on stdout.
    ``endpoints``: the model servers' options as given (``EndpointOptions.read``'s keywords). ``review``: a
    file the rows the run got wrong (every row with ``review_all``) are written to (evaluate/review.py),
    refused before anything loads when it exists (unless ``force``). ``fresh``: every model is asked again
    (``--no-cache``), its new answers kept in place of the old."""
    served = EndpointOptions.read(**(endpoints or {}))
    review_path = _review_target(review, review_all, force, probe)


    run_dir = resolve_run(run_ref, Path(runs_dir))
    against = None if against == "none" else against
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold

    # --json: stdout holds the JSON alone; the libraries' output goes to RUN/library.log either way
    with stdout_to_stderr() if as_json else nullcontext(), library_output_to_log(run_dir) as log:
        log.move_into(run_dir)
        log.four_bit = _loads_4bit(run_dir)
        if probe:
            _refuse_with_probe(against, data_files, limit, gguf, max_new_tokens, judge, served)
            return _probe(run_dir, probe, against, Path(runs_dir), threshold, quiet=as_json)
        report = _evaluate(run_dir, against, data_files, limit, gguf, max_new_tokens, Path(runs_dir), judge=judge,
                           threshold=threshold, examples=0 if as_json else 3, quiet=as_json, endpoints=served,
                           fresh=fresh)
        if review_path is not None:
            _write_review(report, review_path, review_all)
        return report


def _review_target(review, review_all: bool, force: bool, probe) -> Path | None:
    """``--review OUT``, checked before anything loads; None without it (``--review-all`` alone is refused)."""
    if review is None:
        if review_all or force:
            raise QuicktuneError(f"{'--review-all' if review_all else '--force'} goes with --review OUT.jsonl")
        return None
    if probe:
        raise QuicktuneError("--review writes the held-out rows the run got wrong; --probe asks probes instead",
                             hint="Run the probes and the review as two commands.")
    path = Path(review)
    check_review_target(path, force)
    return path


def _write_review(report, path: Path, review_all: bool) -> None:
    """Writes the review file of ``report`` (evaluate/review.py) and says how to use it."""
    system_prompt = load_recipe(str(report.run_dir / "recipe.yaml")).data.system_prompt
    rows = review_rows(report, every_row=review_all, system_prompt=system_prompt)
    write_review(path, rows)
    print_review_written(path, rows, len(report.eval_set.examples), report.metric, review_all)


def _refuse_with_probe(against, data_files, limit, gguf, max_new_tokens, judge, endpoints=None) -> None:
    given = [flag for flag, value in (("--data", data_files), ("--limit", limit), ("--gguf", gguf is not None),
                                      ("--max-new-tokens", max_new_tokens), ("--judge", judge)) if value]
    given += endpoints.given() if endpoints is not None else []
    if against is None or parse_against(against) is not None:
        given.append(f"--against {against or 'none'}")
    if given:
        raise QuicktuneError(
            f"--probe asks the whole probe set of the run and of the base model (or --against another run); "
            f"it does not take {', '.join(given)}",
            hint="Run the probes and the held-out eval as two commands.",
        )


def _probe(run_dir, probe_set, against, runs_root, threshold, *, quiet=False):
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    with console.status("probing") as status:
        report = evaluate_probes(run_dir, probe_set, against=against or "base", runs_root=runs_root,
                                 threshold=threshold, progress=lambda m: status.update(f"probing: {m}"))
    if not quiet:
        print_probe_report(report, console)
    path, replaced = write_probe_report(report)
    console.print(
        f"report: {shell_path(path)}" + (" [dim](replaces the earlier report of these probes)[/]" if replaced else ""),
    )
    return report


def _evaluate(run_dir, against, data_files, limit, gguf, max_new_tokens, runs_root, examples: int = 3, *, judge=None,
              threshold=None, quiet=False, endpoints=None, fresh=False):
    with console.status("evaluating") as status:
        report = evaluate_run(
            run_dir,
            against=against,
            data_files=data_files,
            limit=limit,
            gguf=gguf,
            max_new_tokens=max_new_tokens,
            runs_root=runs_root,
            judge=judge,
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            endpoints=endpoints,
            progress=lambda m: status.update(f"evaluating: {m} ({limit or 'all'} held-out prompts)"),
            cache=answer_cache.REFRESH if fresh else answer_cache.USE,
        )
    if not quiet:
        print_report(report, console, examples=examples)
    json_path, png_path, replaced = write_report(report)
    console.print(
        f"report: {shell_path(json_path)}" + (f"  chart: {shell_path(png_path)}" if png_path else "")
        + (" [dim](replaces the earlier report of this same comparison on these rows)[/]" if replaced else "")
    )
    return report


def compare_command(first: str, second: str, runs_dir: str, threshold: float | None = None):
    root = Path(runs_dir)
    a = resolve_run(first, root)
    b = resolve_run(second, root, a.parent.name)

    comparison = compare_runs(a, b, DEFAULT_THRESHOLD if threshold is None else threshold)
    table = Table(title=f"{comparison.names[0]} vs {comparison.names[1]}", title_justify="left")
    for column in ("", "key", *comparison.names):
        table.add_column(column)
    for section, key, left, right in comparison.rows:
        style = "bold" if left != right else "dim"
        worse = section == "eval" and key in comparison.regressions
        right_cell = f"[red]{right} ▼[/]" if worse else f"[{style}]{right}[/]"
        table.add_row(section, key, f"[{style}]{left}[/]", right_cell)
    console.print(table)
    if comparison.regressions:
        console.print(
            f"[red]{comparison.names[1]} is worse than {comparison.names[0]}[/] on {', '.join(comparison.regressions)} "
            f"(a share down by more than {comparison.threshold:g} points, "
            f"the loss up by more than {comparison.threshold:g}%)"
        )
    for note in comparison.notes:
        console.print(f"[dim]{note}[/]")
    return comparison


def promote_command(run_ref: str, runs_dir: str, name: str | None, force: bool, reason: str | None, no_ollama: bool):
    """``quicktune runs promote``: see quicktune/promote.py. Returns the history line written."""
    return promote(run_ref, Path(runs_dir), name=name, force=force, reason=reason, use_ollama=not no_ollama)


def rollback_command(recipe: str | None, runs_dir: str, no_ollama: bool, reason: str | None = None):
    """``quicktune runs rollback``: back to the version promoted before the current one."""
    return rollback(recipe, Path(runs_dir), use_ollama=not no_ollama, reason=reason)


def history_command(recipe: str | None, runs_dir: str):
    """``quicktune runs history``: every promotion and rollback, oldest first."""
    return history(recipe, Path(runs_dir))


def export_command(run_ref: str, quants: list[str], runs_dir: str, *, verify: bool, prompts: int):
    run_dir = resolve_run(run_ref, Path(runs_dir))
    with library_output_to_log(run_dir) as log:  # llama.cpp's and the converter's output: RUN/library.log
        log.move_into(run_dir)
        log.four_bit = _loads_4bit(run_dir)
        return _export(run_dir, quants, verify=verify, prompts=prompts)


def _loads_4bit(run_dir: Path) -> bool | None:
    """Whether a run's model loads in 4 bits (its recipe.yaml's model.load_in_4bit); None when unreadable."""
    try:
        return bool(load_recipe(str(run_dir / "recipe.yaml")).model.load_in_4bit)
    except QuicktuneError:
        return None


def _export(run_dir: Path, quants: list[str], *, verify: bool, prompts: int, next_steps: bool = True):
    try:
        result = export_run(run_dir, quants, verify=verify, prompts=prompts, console=console)
    except FidelityFailed as failed:  # the table, where the files are (not verified), then the error
        print_fidelity(failed.result.fidelity)
        _print_next_steps(failed.result, verified=False)
        raise
    for quant in result.reused:
        console.print(f"[dim]kept {quant}: already exported[/]")
    if result.fidelity is not None:
        print_fidelity(result.fidelity)
    meta = result.metadata
    console.print(
        f"[bold]GGUF[/]: {meta['architecture']}, pre-tokenizer {meta['pre_tokenizer']}, eos {meta['eos_token']!r}, "
        f"chat template as trained ({meta['template_family']})"
    )
    if next_steps:
        _print_next_steps(result)
    return result


def _print_next_steps(result, verified: bool = True) -> None:
    if not verified:  # the export is written, but its GGUFs failed the fidelity check: say so on every line
        console.print(f"[bold]files[/] [red](not verified)[/]: {shell_path(result.export_dir)}",
                      soft_wrap=True, highlight=False)
        for quant, gguf in result.ggufs.items():
            console.print(f"  {quant}: {shell_path(gguf)}", soft_wrap=True, highlight=False)
    console.print("[bold]Ollama[/]:" if verified else
                  "[bold]Ollama[/] [red](not verified: the fidelity check failed, see below)[/]:")
    for quant, modelfile in result.modelfiles.items():
        tag = ollama_tag(result.name, quant)
        console.print(f"  ollama create {tag} -f {shell_path(modelfile)}", soft_wrap=True, highlight=False)
        console.print(f"  ollama run {tag}", soft_wrap=True, highlight=False)
    console.print(f"[bold]here[/]: quicktune chat {shell_path(result.run_dir)}", soft_wrap=True, highlight=False)




def chat_command(
    target: str, quant: str | None, prompt: str | None, system: str | None, max_tokens: int, runs_dir: str,
    num_ctx: int | None = None,
):
    chat_target = resolve_target(target, Path(runs_dir), quant, num_ctx)
    session = open_session(chat_target, system=system, max_tokens=max_tokens)
    if prompt is not None:
        for piece in session.reply(prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    interactive(session, console, chat_target.label)


def serve_command(
    target: str, quant: str | None, host: str, port: int, name: str | None, num_ctx: int | None, runs_dir: str,
) -> None:
    """Resolves RUN|GGUF as chat does, then serves it until Ctrl-C."""
    chat_target = resolve_target(target, Path(runs_dir), quant, num_ctx)
    serve(served_model(chat_target, Path(runs_dir), name), host, port)
