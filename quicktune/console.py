"""Terminal output with rich. Presentation only: no decisions are made here."""

from __future__ import annotations

import os
import shlex
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from quicktune.data.instruction import describe
from quicktune.plan import GIB

if TYPE_CHECKING:
    from quicktune.data.report import DataReport, RenderedExample, TokenStats
    from quicktune.data.synth_check import SynthSummary
    from quicktune.errors import QuicktuneError
    from quicktune.recipe import Recipe

# Output that is no terminal (a log, CI) sees no spinner: a line this often says what is still running.
PROGRESS_EVERY_S = 30.0  # QUICKTUNE_PROGRESS_EVERY (seconds) overrides it


class LineStatus:
    """``console.status`` where the output is no terminal: rich's spinner draws nothing there, so a
    long step (the export's fidelity check, eval) was minutes without a line. This prints the current
    message with the time elapsed every ``every`` seconds until the step ends; nothing for a short one."""

    def __init__(self, out: Console, message: str, every: float):
        import threading

        self._out, self._message, self._every = out, message, every
        self._start = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="quicktune-progress", daemon=True)

    def update(self, status=None, **_ignored) -> None:
        if status is not None:
            self._message = str(status)

    def _beat(self) -> None:
        while not self._done.wait(self._every):
            seconds = int(time.monotonic() - self._start)
            self._out.print(f"[dim]… {self._message} ({seconds // 60}:{seconds % 60:02d})[/]", highlight=False)

    def __enter__(self) -> LineStatus:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


class _Console(Console):
    """rich's Console whose ``status`` prints lines at intervals where the output is no terminal."""

    def status(self, status, **kwargs):
        if self.is_terminal:
            return super().status(status, **kwargs)
        try:
            every = float(os.environ.get("QUICKTUNE_PROGRESS_EVERY", PROGRESS_EVERY_S))
        except ValueError:
            every = PROGRESS_EVERY_S
        return LineStatus(self, str(status), every if every > 0 else PROGRESS_EVERY_S)


console = _Console(highlight=False, soft_wrap=True)  # paths and file:line stay on one line
err_console = _Console(stderr=True, highlight=False, soft_wrap=True)  # file:line must stay on one line


@contextmanager
def stdout_to_stderr():
    """Everything printed inside goes to stderr, Python's and C libraries' alike (a library's
    banner, llama.cpp's log), so a ``--json`` command's stdout holds its JSON and nothing else."""

    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's capture)
        fd = None
    saved = os.dup(fd) if fd is not None else None
    if saved is not None:
        os.dup2(sys.stderr.fileno(), fd)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)


def print_error(error: QuicktuneError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(error.message)}")
    for problem in error.problems:
        err_console.print(f"  {escape(problem)}")
    if error.hint:
        err_console.print(f"[yellow]hint:[/] {escape(error.hint)}")


def print_library_log(path, notices: list[str]) -> None:
    """The end of a command whose libraries' output went to a log (quicktune/library_log.py)."""
    for notice in notices:
        console.print(f"[yellow]note:[/] {escape(notice)}")
    console.print(f"[dim]other libraries' output (warnings, progress bars): {escape(str(path))}[/]")


def print_recipe_table(recipes: list[Recipe]) -> None:
    table = Table(title="Built-in recipes", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("base model")
    table.add_column("method")
    table.add_column("hardware")
    table.add_column("what it does")
    for recipe in recipes:
        table.add_row(recipe.name, recipe.model.base, recipe.method, recipe.hardware, recipe.description)
    console.print(table)
    console.print("Show one with [bold]quicktune recipes show NAME[/].")


def _stats_rows(table: Table, label: str, stats: TokenStats | None) -> None:
    if stats is None:
        return
    truncated = f"[red]{stats.truncated_rows}[/]" if stats.truncated_rows else "0"
    table.add_row(
        label,
        str(stats.rows),
        f"{stats.min} / {stats.p50} / {stats.mean} / {stats.p95} / {stats.max}",
        f"{stats.trained_tokens:,} of {stats.total_tokens:,}",
        f"{truncated} (> {stats.max_seq_length})",
    )


def print_data_report(report: DataReport) -> None:
    """What ``data check`` found: the files, duplicates and leakage, token lengths, the system prompt,
    the stop token, the rendered example(s) with trained tokens marked, and the warnings."""
    _print_files(report)
    _print_duplicates(report)
    _print_semantic(report)
    if report.train_tokens is not None:
        tokens = Table(title="Tokens per row", title_justify="left")
        for column in ("split", "rows", "min / p50 / mean / p95 / max", "trained tokens", "truncated"):
            tokens.add_column(column, justify="right" if column != "split" else "left")
        _stats_rows(tokens, "train", report.train_tokens)
        _stats_rows(tokens, "eval", report.eval_tokens)
        console.print(tokens)
    else:
        console.print("[dim]Token lengths and the rendered example need a tokenizer: add --recipe.[/]")
    if report.system_prompt is not None:
        _print_system_prompt(report.system_prompt)
    if report.shared_instruction is not None and report.shared_instruction.mode != "keep":  # kept: a warning
        console.print(f"  [dim]{escape(describe(report.shared_instruction))}[/]")
    if report.stop is not None:
        stop = report.stop
        note = (" (pad token = eos: quicktune builds labels itself, so the stop token is still trained)"
                if stop.pad_equals_eos else "")
        console.print(f"stop token after each answer: [bold]{escape(stop.text)}[/] id {stop.id}{note}")
    if report.rewards is not None:  # grpo: each reward on the reference answers, as if the model wrote them
        means = ", ".join(f"{escape(name)} {'-' if mean is None else f'{mean:.2f}'}"
                          for name, mean in report.rewards.items())
        console.print(f"rewards on {report.reward_rows} reference answers (mean): {means}")
    if report.example is not None:
        _print_example(report.example, "bold green",
                       f"Rendered example ({escape(report.example.origin)}): [bold green]green[/] is trained, "
                       "dim is context")
    if report.example_rejected is not None:  # a preference pair: the answer training pushes down
        _print_example(report.example_rejected, "bold red",
                       f"The same prompt ({escape(report.example_rejected.origin)}): [bold red]red[/] is pushed down")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if not report.warnings:
        console.print("[green]✓ data looks good[/]")


def _print_files(report: DataReport) -> None:
    files = Table(title="Data", title_justify="left")
    files.add_column("file")
    files.add_column("split")
    files.add_column("format")
    files.add_column("rows", justify="right")
    for item in report.files:
        files.add_row(item.path, item.split, f"{item.format} ({item.format_from})", str(item.rows))
    console.print(files)
    console.print(
        f"train rows: [bold]{report.train_rows}[/]   eval rows: [bold]{report.eval_rows}[/] ({report.eval_source})"
    )


def _print_duplicates(report: DataReport) -> None:
    console.print(
        f"duplicates: {report.exact_duplicates} exact, {report.near_duplicates} near "
        f"(dedupe: {report.dedupe}, {report.removed_duplicates} removed)   "
        f"train/eval leakage: {report.leakage}"
    )
    for pair in report.duplicate_pairs:
        console.print(f"  [dim]duplicate[/] {escape(pair.first)} ≈ {escape(pair.second)} ({pair.similarity})")
    for pair in report.leakage_pairs:
        console.print(f"  [dim]leak[/] {escape(pair.first)} ≈ {escape(pair.second)} ({pair.similarity})")


def _print_semantic(report: DataReport) -> None:
    if report.semantic_threshold is None:
        console.print(
            "[dim]semantic duplicates (same question in other words): not checked; "
            "--semantic-threshold 0.85 or data.semantic_threshold turns it on[/]"
        )
        return
    console.print(
        f"semantic duplicates (embedding cosine ≥ {report.semantic_threshold}, besides the above): "
        f"{report.semantic_duplicates}   semantic leakage: {report.semantic_leakage}"
    )
    for pair in report.semantic_pairs:
        console.print(
            f"  [dim]paraphrase[/] {escape(pair.first)} ≈ {escape(pair.second)} (cosine {pair.similarity})",
        )
    for pair in report.semantic_leakage_pairs:
        console.print(
            f"  [dim]leak in other words[/] {escape(pair.first)} ≈ {escape(pair.second)} (cosine {pair.similarity})"
        )


def _print_example(example: RenderedExample, style: str, title: str) -> None:
    text = Text()
    for token, trained in example.tokens:
        text.append(token, style=style if trained else "dim")
    console.rule(title)
    console.print(text)
    console.rule()


def _print_system_prompt(system) -> None:
    rows = dict(system.common)
    if system.trained is not None:
        console.print(
            f"system prompt ({system.trained_from}; on {rows.get(system.trained, 0)} of {system.rows} training rows):"
        )
        console.print(f"  [cyan]{escape(system.trained)}[/]")
    else:
        default = f":\n  [cyan]{escape(system.template_default)}[/]" if system.template_default else " (if it has one)"
        console.print(
            f"system prompt: none set; {rows.get(None, 0)} of {system.rows} training rows have no system turn "
            f"and are trained with the chat template's default{default}"
        )
    if system.distinct > 1:
        console.print(f"  [dim]{system.distinct} different system prompts (or none) across the training rows[/]")
    if system.served != system.trained:
        console.print(f"the Modelfile and chat send instead ({system.served_from}):")
        console.print(f"  [cyan]{escape(system.served or '')}[/]")
    else:
        console.print("  [dim]the Modelfile's SYSTEM and `quicktune chat` send the same[/]")


def print_runs(runs, root) -> None:
    if not runs:
        console.print(f"No runs in {root} yet. Start one with [bold]quicktune run smollm2-demo[/].")
        return
    def number(value):
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    def cells(run):
        style = {"finished": "green", "interrupted": "yellow", "failed": "red"}.get(run.status, "")
        return (
            f"{run.recipe}/{run.version}" + (" [bold magenta]★ promoted[/]" if run.promoted else ""),
            f"[{style}]{run.status}[/]" if style else run.status,
            run.started.replace("T", " ")[:16],  # 2026-12-07 18:34 (UTC)
            number(run.steps),
            number(run.train_loss),
            number(run.eval_loss),
            escape(run.headline or ""),
            ", ".join(run.exported),
            escape(_parent_label(run.parent, root)),
        )

    columns = ("run", "status", "started", "steps", "train loss", "best eval loss", "eval", "exported", "parent")
    table = Table(title=f"Runs in {root}", title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    rows = [cells(run) for run in runs]
    for row in rows:
        table.add_row(*row)
    if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(table)
        return
    # Too narrow for the table (80 columns): one block a run, every value whole (no "star…", "exac…").
    console.print(f"Runs in {escape(str(root))}")
    for row in rows:
        console.print(f"[bold]{row[0]}[/]  {row[1]}  started {row[2]}  steps {row[3]}")
        extra = [f"{name} {value}" for name, value in zip(columns[4:], row[4:]) if value]
        console.print("  " + " · ".join(extra), highlight=False)


def _parent_label(parent: str | None, root) -> str:
    """A parent run as ``recipe/vN`` when it lies in the runs folder listed, else its path."""
    if not parent:
        return ""
    path = Path(parent)
    try:
        path.resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError):
        return parent
    return f"{path.parent.name}/{path.name}"


# --- promotion (quicktune/promote.py) ----------------------------------------------------------


def print_promotion_check(names, rows, regressions, source: str) -> None:
    """The eval metrics a promotion compared: ``names`` (promoted, candidate), ``rows`` (metric, promoted's
    value, candidate's value, formatted), ``regressions`` (metrics the candidate is worse on, marked ▼)."""
    table = Table(title=f"{names[0]} (promoted) vs {names[1]}", title_justify="left")
    for column in ("eval", names[0], names[1]):
        table.add_column(column)
    for key, before, after in rows:
        worse = key in regressions
        table.add_row(key, before, f"[red]{after} ▼[/]" if worse else after)
    console.print(table)
    console.print(f"[dim]eval scores from {escape(source)}[/]")


def print_ollama_commands(folder, commands: list[str], note: str | None = None) -> None:
    """What to run when ``ollama`` is not on PATH: ``cd folder`` (when given), then ``commands``."""
    console.print("[yellow]ollama is not on PATH[/]: to serve it with Ollama, run")
    if folder is not None:
        console.print(f"  cd {shell_path(folder)}", soft_wrap=True, highlight=False)
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, highlight=False)
    if note:
        console.print(f"[dim]({escape(note)})[/]", soft_wrap=True, highlight=False)


def print_ollama_ran(command: str) -> None:
    console.print(f"[green]✓[/] {escape(command)}", soft_wrap=True, highlight=False)


def print_promotion(entry) -> None:
    """One line for a promotion or rollback just recorded (a ``runs.Promotion``)."""
    verb = "promoted" if entry.action == "promote" else "rolled back to"
    tags = f"; Ollama: {', '.join(entry.tags)}" + ("" if entry.ollama == "done" else f" ({entry.ollama})")
    console.print(f"[bold green]{verb}[/] {entry.run}{tags if entry.tags else ''} [dim]({escape(entry.why)})[/]",
                  soft_wrap=True, highlight=False)


def print_history(histories, root) -> None:
    """``quicktune runs history``: [(recipe, [Promotion, ...] oldest first, the run promoted now or None)]."""
    if not histories:
        console.print(f"Nothing promoted in {root} yet. Promote a run with [bold]quicktune runs promote vN[/].")
        return
    for recipe, entries, current in histories:
        console.print(f"[bold]Promotions of {recipe}[/] (promoted now: [bold magenta]{current or 'none'}[/])")
        for entry in entries:
            what = entry.action + (" [red](forced)[/]" if entry.forced else "")
            compared = entry.compared or {}
            against = f"; checked against {compared['with']}" if compared.get("with") else ""
            worse = compared.get("regressions")
            console.print(
                f"  {entry.when}  {what} [bold]{entry.run}[/] by {escape(entry.who)}: {escape(entry.why)}{against}"
                + (f" ([red]worse on {escape(', '.join(worse))}[/])" if worse else "")
                + (f"; Ollama {', '.join(entry.tags)} ({entry.ollama})" if entry.tags else ""),
                soft_wrap=True, highlight=False,
            )


def print_fidelity(fidelity) -> None:
    """The export's fidelity check as a small table (see quicktune.export.verify)."""
    n = fidelity.prompts

    def share(value):
        return "-" if value is None else f"{value:.1%}"

    table = Table(
        title=f"Fidelity on {n} held-out prompts (greedy, up to {fidelity.max_new_tokens} tokens)",
        title_justify="left",
    )
    for column in ("GGUF", "same top token", "greedy agreement", "identical answers", "ends with EOS"):
        table.add_column(column, justify="left" if column == "GGUF" else "right")
    table.add_row("merged model (reference)", "", "", "", f"{fidelity.reference_stops}/{n}")
    trained = getattr(fidelity, "trained", None)
    if trained is not None:  # what the loss was measured on, against what is exported
        table.add_row(
            f"as trained: {trained.base} base + adapter",
            share(trained.same_top_token),
            share(trained.greedy_agreement),
            f"{trained.identical_answers}/{n}",
            f"{trained.stops}/{n}",
        )
    for row in fidelity.ggufs:
        table.add_row(
            row.name,
            share(row.same_top_token),
            share(row.greedy_agreement),
            "-" if row.identical_answers is None else f"{row.identical_answers}/{n}" + _ties(row),
            "-" if row.stops is None else f"{row.stops}/{n}",
        )
    console.print(table)
    jinja = fidelity.ollama_renderer.startswith("llama.cpp")
    if fidelity.ollama_renderer:
        console.print(f"Ollama renders with: {escape(fidelity.ollama_renderer)}")
    same = fidelity.prompt_tokens_equal == n
    if fidelity.prompt_tokens_equal is None:
        console.print("[dim]·[/] prompt as Ollama builds it == training tokens: not checked (see below)")
    else:
        console.print(
            f"{'[green]✓[/]' if same else '[red]✗[/]'} prompt as Ollama builds it == training tokens: "
            f"{fidelity.prompt_tokens_equal}/{n}"
            + ("" if same else " [red](Ollama's prompt tokenizes differently than training did)[/]")
        )
    parity = fidelity.template_parity
    done, _, total = parity.partition(" ")[0].partition("/")
    mark = "[dim]·[/]" if parity.startswith("skipped") else "[green]✓[/]" if done == total else "[red]✗[/]"
    what = (
        "chat template rendered by llama.cpp (as llama-server does) == training"
        if jinja
        else "TEMPLATE rendered by Go's text/template == chat template"
    )
    console.print(f"{mark} {what}: {escape(parity)}")


def _ties(row) -> str:
    """' (1 tie)': near-ties of the merged model the GGUF broke the other way (export/gate.py)."""
    ties = getattr(row, "ties", None)
    return f" ({ties} tie{'s' if ties != 1 else ''})" if ties else ""


def print_checks(checks) -> None:
    marks = {"ok": "[green]✓[/]", "fail": "[red]✗[/]", "info": "[dim]·[/]"}
    for check in checks:
        console.print(f"{marks[check.status]} [bold]{check.name}[/]: {escape(check.detail)}")
        if check.fix and check.status != "ok":
            console.print(f"    [dim]fix:[/] {escape(check.fix)}")


def print_plan(plan, recipe_name: str, hardware: str = "") -> None:
    s = plan.settings
    console.print(
        f"[bold]{recipe_name}[/]: {s.method} on {plan.arch.name} ({plan.arch.params / 1e9:.2f}B parameters, "
        f"shape from {plan.arch.source}); batch {s.batch} x {s.seq} tokens, LoRA r={s.rank}"
        f"{'' if s.last_layers is None else f' on the last {plan.arch.trained_layers(s.last_layers)} layers'}, "
        f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.optimizer}"
    )
    if plan.device == "cpu":
        console.print(
            "[green]✓ runs on the CPU[/]: no GPU memory to plan (for a GPU plan give --gpu NAME or --vram GIB)"
            + (f"; the recipe says: {escape(hardware)}" if hardware else "")
        )
    else:
        card = plan.gpu.name if plan.gpu else f"a {plan.vram_gib:g} GiB GPU"
        table = Table(title=f"Peak VRAM estimate on {card}", title_justify="left")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        for part, size in plan.estimate.parts.items():
            table.add_row(part, f"{size / GIB:.2f}")
        table.add_row("[bold]total[/]", f"[bold]{plan.estimate.total / GIB:.2f}[/]")
        console.print(table)
        usable = plan.vram_gib * 0.95
        if plan.fits:
            console.print(f"[green]✓ fits[/]: {plan.estimate.total / GIB:.1f} of {usable:.1f} usable GiB")
        else:
            console.print(f"[red]✗ does not fit[/]: {plan.estimate.total / GIB:.1f} GiB needed, {usable:.1f} usable")
            if plan.fixes:
                console.print("nearest settings that fit:")
                for fix in plan.fixes:
                    sets = " ".join(f"--set {item}" for item in fix.sets)
                    console.print(f"  {sets}   → {fix.estimate.total / GIB:.1f} GiB ({fix.note})", soft_wrap=True)
            else:
                console.print("no single change fits; try a smaller model or a bigger GPU")
    disk = sum(plan.disk.values())
    console.print(
        "disk: " + ", ".join(f"{k} {v / GIB:.1f}" for k, v in plan.disk.items()) + f" GiB; total {disk / GIB:.1f} GiB"
    )
    _print_plan_time(plan, recipe_name)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds >= 2 * 3600:
        return f"about {seconds / 3600:.1f} h"
    return f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"


def _print_plan_time(plan, recipe_name: str) -> None:
    """The time lines of ``quicktune plan``: per epoch, the run as configured (training.max_steps or its
    epochs), and where the numbers come from (a scaled reference, a card's throughput, or --measure)."""
    if plan.measured is not None:
        console.print(f"time: {escape(plan.time_note)}")
    elif plan.epoch_seconds is None:
        console.print(f"time: {plan.time_note if plan.data_tokens else 'unknown: the training data was not found'}")
        return
    else:
        console.print(
            f"time: ~{plan.data_tokens:,} tokens per epoch (4 characters per token) → {_duration(plan.epoch_seconds)} "
            f"per epoch (an estimate {plan.time_note})"
        )
    if plan.run_seconds is not None:
        epochs = ""
        if plan.steps_per_epoch and plan.steps_from == "training.max_steps":
            epochs = f"; {plan.steps / plan.steps_per_epoch:.3g} epochs of {plan.steps_per_epoch} steps"
        elif plan.steps_per_epoch:
            epochs = f" x {plan.steps_per_epoch} steps"
        each = f"{plan.step_seconds:.{1 if plan.step_seconds >= 1 else 2}f} s a step"
        console.print(f"  the run as configured: {plan.steps} steps ({plan.steps_from}{epochs}) → "
                      f"{_duration(plan.run_seconds)} of training steps ({each})")
        if plan.measured is not None and plan.epoch_seconds is not None:
            console.print(f"  one epoch ({plan.steps_per_epoch} steps): {_duration(plan.epoch_seconds)}")
    elif plan.measured is not None:
        console.print("  the run's steps are unknown: the training data could not be counted")
    if plan.measured is not None:
        console.print("  (steps only: eval passes, checkpoints and export come on top)")
    elif plan.device == "cpu":
        console.print(f"  not measured here: `quicktune plan {escape(recipe_name)} --measure` times a few steps "
                      "of it on this machine", highlight=False)


def print_axolotl_export(export, out) -> None:
    console.print(f"[green]✓ wrote[/] {escape(str(out))} (Axolotl config)")
    console.print("recipe keys with no exact Axolotl equivalent (kept under `quicktune:` for `recipes import`):")
    for note in export.no_equivalent:
        console.print(f"  {escape(note)}")
    console.print(f"train it with: accelerate launch -m axolotl.cli.train {escape(str(out))}", highlight=False)


def print_axolotl_import(imported, written) -> None:
    console.print(f"[green]✓ wrote[/] {escape(str(written))} (quicktune recipe {escape(imported.recipe.name)})")
    if imported.unmapped:
        console.print(f"[yellow]not imported[/] ({len(imported.unmapped)} key(s) with no quicktune equivalent):")
        for line in imported.unmapped:
            console.print(f"  {escape(line)}")
    if imported.defaults:
        console.print("read as Axolotl reads them (keys left out take its defaults): "
                      + escape(", ".join(imported.defaults)))
    console.print(f"check it with: quicktune train {escape(str(written))} --dry-run", highlight=False)


def shell_path(path) -> str:
    """A path as the user would type it in a shell started here: relative to the current folder
    when inside it, quoted for the shell."""

    try:
        text = str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(path)
    return shlex.quote(text)


# --- quicktune data synth ---------------------------------------------------------------------------------

SYNTH_ROWS_SHOWN = 15  # rejected rows listed by reason; the rest are in OUT.rejected.jsonl


@contextmanager
def synth_progress(summary: SynthSummary, *, show: bool = True):
    """A live bar while ``data synth`` runs: rows in the output of the rows wanted, rows rejected, and rows
    per minute (tried and kept). Yields the function that redraws it from ``summary``."""
    progress = Progress(
        TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rejected]} rejected  {task.fields[rate]}"), TimeElapsedColumn(),
        console=console, disable=not show,
    )

    def update() -> None:
        rate = (f"{summary.per_minute(summary.tried):.1f} rows/min, "
                f"{summary.per_minute(summary.accepted):.1f} kept/min") if summary.tried else ""
        progress.update(task, completed=summary.total_rows, rejected=len(summary.rejections), rate=rate)

    with progress:
        task = progress.add_task("synth", total=summary.wanted, completed=summary.total_rows, rejected=0, rate="")
        yield update
        update()


def print_synth_summary(summary: SynthSummary) -> None:
    """What a ``data synth`` run did: rows kept and rejected (by reason, then row by row), the rates, the
    files written, and notes (a torn last line repaired, changed seeds)."""
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(
        f"[bold]{summary.status}[/]: {summary.accepted} row(s) kept and {len(summary.rejections)} rejected this run "
        f"in {summary.seconds:.1f} s ({summary.per_minute(summary.tried):.1f} rows/min tried, "
        f"{summary.per_minute(summary.accepted):.1f} kept/min); {summary.total_rows} of {summary.wanted} rows in "
        f"{escape(str(summary.output))}"
    )
    if summary.rejections:
        table = Table(title="Rejected rows", title_justify="left")
        for column in ("row", "reason", "detail"):
            table.add_column(column, justify="right" if column == "row" else "left")
        for rejection in summary.rejections[:SYNTH_ROWS_SHOWN]:
            table.add_row(str(rejection.row), rejection.reason, escape(rejection.detail))
        console.print(table)
        counts = ", ".join(f"{reason} {count}" for reason, count in summary.reason_counts().items())
        more = len(summary.rejections) - SYNTH_ROWS_SHOWN
        console.print(f"rejected by reason: {counts}" + (f" ({more} more rows not shown)" if more > 0 else ""))
    console.print(f"[dim]rejected rows and the replies: {escape(str(summary.rejected_file))}; "
                  f"lineage: {escape(str(summary.lineage_file))}[/]")


def print_serving(label: str, url: str, name: str, num_ctx: int, system: str | None, example: str) -> None:
    """``quicktune serve``'s start: what it serves, where, under which name, and a command that asks it."""
    console.print(f"[bold]serving[/] {escape(label)} at [bold]{escape(url)}[/] as model [bold]{escape(name)}[/] "
                  f"({num_ctx}-token context; Ctrl-C stops it)")
    if system:
        console.print(f"[dim]system prompt for requests without one:[/] {escape(system)}")
    console.print(escape(example))


def print_review_written(path, rows: list[dict], total: int, metric: str, every_row: bool) -> None:
    """What ``eval --review`` wrote and how a person reviews it (quicktune/evaluate/review.py)."""
    which = "every row" if every_row else f"the rows it got wrong by {metric}"
    console.print(f"[bold]review[/]: {len(rows)} of {total} held-out rows ({which}) in {shell_path(path)}")
    if not rows:
        console.print("  nothing to review: the run got every row right")
        return
    console.print("  open it in any editor; each line is one question, with model_answer and expected side by side:")
    console.print('    accept the expected answer:  set "accept": true')
    console.print('    give a better answer:        edit "corrected" (then set "accept": true)')
    console.print('    drop the row:                set "accept": false   (rows left at null are skipped)')
    console.print(f"  then: quicktune data accept {shell_path(path)} --into corrections.jsonl -r RECIPE")


def print_accept_summary(result) -> None:
    """What ``data accept`` did (quicktune/data/accept.py's AcceptResult)."""
    for refused in result.leaked:
        console.print(f"[yellow]refused[/] {escape(refused.origin)}: asks what {escape(refused.eval_origin)} asks "
                      "(the eval file the runs are compared on); training on it would leak the eval")
    verb = "appended to" if result.existed else "written to"
    console.print(f"[green]✓[/] {result.accepted} row(s) {verb} {shell_path(result.into)}"
                  if result.accepted else f"nothing new for {shell_path(result.into)}")
    console.print(f"  accepted {result.accepted}, unreviewed {result.unreviewed}, declined {result.declined}, "
                  f"duplicates {result.duplicates}, leaked (refused) {len(result.leaked)}")
    if result.unchecked:
        console.print("[yellow]not checked for eval leakage[/]: give -r RECIPE (its data.eval) or --eval EVAL.jsonl")
    if result.accepted:
        console.print(f"  next: quicktune train RECIPE --from vN --add-data {shell_path(result.into)}")
