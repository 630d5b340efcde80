"""The evaluation report: ``eval/<against>-<rows>.json`` and ``.png`` in the run folder, and the terminal view.

One file per comparison, named by what the run was compared with (``base``, another run's
``recipe-vN``, or ``alone``; ``+q4_k_m`` when a GGUF was scored too) and the first 12 hex digits
of the held-out rows' sha256; asking the same question again on the same rows replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from quicktune.evaluate.metrics import METRICS
from quicktune.evaluate.runner import EvalReport

CHART_METRICS = ("exact_match", "normalized_match", "json_valid", "json_fields", "ends_with_eos")


def report_name(report: EvalReport) -> str:
    against = (report.against or "alone").replace("/", "-")
    return f"{against}{'+' + report.gguf if report.gguf else ''}-{report.eval_set.sha256[:12]}"


def write_report(report: EvalReport) -> tuple[Path, Path | None, bool]:
    """(json path, chart path, whether an earlier report of the same comparison was replaced)."""
    from quicktune.train.runs import EVAL_DIR, write_atomic

    json_path = report.run_dir / EVAL_DIR / f"{report_name(report)}.json"
    replaced = json_path.is_file()
    write_atomic(json_path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return json_path, plot_report(report, json_path.with_suffix(".png")), replaced


def plot_report(report: EvalReport, out_path: Path) -> Path | None:
    names = [m for m in CHART_METRICS if any(s.metrics.get(m) is not None for s in report.subjects)]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4), dpi=110)
    width = 0.8 / len(report.subjects)
    for index, subject in enumerate(report.subjects):
        values = [subject.metrics.get(m) or 0.0 for m in names]
        positions = [i + (index - (len(report.subjects) - 1) / 2) * width for i in range(len(names))]
        bars = axes.bar(positions, values, width, label=subject.label)
        axes.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("share of held-out rows")
    axes.set_title(f"{len(report.eval_set.examples)} held-out rows · headline: {report.metric.replace('_', ' ')}")
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    from quicktune.train.plot import save_figure

    return save_figure(figure, out_path)


def _value(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_report(report: EvalReport, console, *, examples: int = 3) -> None:
    subjects = report.subjects
    table = Table(
        title=f"Eval on {len(report.eval_set.examples)} held-out rows ({escape(report.eval_set.source)})",
        title_justify="left",
    )
    table.add_column("metric")
    for subject in subjects:
        table.add_column(escape(subject.label), justify="right")
    if len(subjects) >= 2:
        table.add_column("change", justify="right")
    for name in METRICS:
        values = [s.metrics.get(name) for s in subjects]
        if all(v is None for v in values):
            continue
        label = f"[bold]{name}[/] (headline)" if name == report.metric else name
        row = [label, *map(_value, values)]
        if len(subjects) >= 2:
            first, last = values[0], values[1]
            row.append("-" if first is None or last is None else f"{(last - first) * 100:+.1f} pts")
        table.add_row(*row)
    losses = [s.loss for s in subjects]
    row = ["loss on the answers", *("-" if v is None else f"{v:.3f}" for v in losses)]
    if len(subjects) >= 2:
        row.append("-" if None in losses[:2] else f"{losses[1] - losses[0]:+.3f}")
    table.add_row(*row)
    row = ["perplexity", *("-" if s.perplexity is None else f"{s.perplexity:.2f}" for s in subjects)]
    table.add_row(*(row + ([""] if len(subjects) >= 2 else [])))
    console.print(table)
    if len(subjects) >= 2 and examples:
        _print_differences(report, console, examples)


def _print_differences(report: EvalReport, console, limit: int) -> None:
    first, second = report.subjects[0], report.subjects[1]
    shown = 0
    for index, (a, b) in enumerate(zip(first.answers, second.answers)):
        if a.text.strip() == b.text.strip():
            continue
        if shown == 0:
            console.print(f"[bold]Where they differ[/] (first {limit}):")
        table = Table(show_header=True, box=None, padding=(0, 1))
        table.add_column("", style="dim", no_wrap=True)
        table.add_column("")
        table.add_row("prompt", escape(report.eval_set.prompts[index][-1]["content"]))
        table.add_row("reference", escape(report.eval_set.references[index]))
        table.add_row(escape(first.label), escape(a.text.strip()) + ("" if a.stopped else " [dim](no EOS)[/]"))
        table.add_row(escape(second.label), escape(b.text.strip()) + ("" if b.stopped else " [dim](no EOS)[/]"))
        console.print(table)
        console.print()
        shown += 1
        if shown >= limit:
            break
