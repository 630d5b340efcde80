"""Terminal output with rich. Presentation only: no decisions are made here."""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from quicktune.plan import GIB

if TYPE_CHECKING:
    from quicktune.data.report import DataReport, RenderedExample, TokenStats
    from quicktune.errors import QuicktuneError
    from quicktune.recipe import Recipe

console = Console(highlight=False, soft_wrap=True)  # paths and file:line stay on one line
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # file:line must stay on one line


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
    if report.stop is not None:
        stop = report.stop
        note = (" (pad token = eos: quicktune builds labels itself, so the stop token is still trained)"
                if stop.pad_equals_eos else "")
        console.print(f"stop token after each answer: [bold]{escape(stop.text)}[/] id {stop.id}{note}")
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
    table = Table(title=f"Runs in {root}", title_justify="left")
    for column in ("run", "status", "started", "steps", "train loss", "best eval loss", "eval", "exported", "parent"):
        table.add_column(column, no_wrap=column in ("run", "status"))

    def number(value):
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    for run in runs:
        style = {"finished": "green", "interrupted": "yellow", "failed": "red"}.get(run.status, "")
        table.add_row(
            f"{run.recipe}/{run.version}",
            f"[{style}]{run.status}[/]" if style else run.status,
            run.started,
            number(run.steps),
            number(run.train_loss),
            number(run.eval_loss),
            run.headline or "",
            ", ".join(run.exported),
            run.parent or "",
        )
    console.print(table)


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
            "-" if row.identical_answers is None else f"{row.identical_answers}/{n}",
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
    if plan.epoch_seconds is None:
        console.print(f"time: {plan.time_note if plan.data_tokens else 'unknown: the training data was not found'}")
        return
    seconds = plan.epoch_seconds
    if seconds < 1:
        duration = "under a second"
    else:
        duration = f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"
    console.print(
        f"time: ~{plan.data_tokens:,} tokens per epoch (4 characters per token) → {duration} per epoch "
        f"(an estimate {plan.time_note})"
    )

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
