"""The evaluation report: ``eval/<against>-<rows>.json`` and ``.png`` in the run folder, and the terminal view.

One file per comparison, named by what the run was compared with (``base``, another run's
``recipe-vN``, or ``alone``; ``+q4_k_m`` when a GGUF was scored too, ``+served-<model>`` when a
served model was) and the first 12 hex digits of the held-out rows' sha256; asking the same question
again on the same rows replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from quicktune.evaluate import preference
from quicktune.evaluate.probes import by_category
from quicktune.evaluate.regression import LOSS
from quicktune.evaluate.runner import EvalReport
from quicktune.evaluate.served import report_slug, short_model
from quicktune.metrics import METRICS
from quicktune.runs import EVAL_DIR, write_atomic
from quicktune.train.plot import save_figure

CHART_METRICS = ("exact_match", "normalized_match", "json_valid", "json_fields", "ends_with_eos")


def report_name(report: EvalReport) -> str:
    against = (report.against or "alone").replace("/", "-").replace(":", "")  # fewshot:3 -> fewshot3
    served = f"+{report_slug(report.served)}" if report.served else ""
    return f"{against}{'+' + report.gguf if report.gguf else ''}{served}-{report.eval_set.sha256[:12]}"


def write_report(report: EvalReport) -> tuple[Path, Path | None, bool]:
    """(json path, chart path, whether an earlier report of the same comparison was replaced)."""
    json_path = report.run_dir / EVAL_DIR / f"{report_name(report)}.json"
    replaced = json_path.is_file()
    write_atomic(json_path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return json_path, plot_report(report, json_path.with_suffix(".png")), replaced


def plot_report(report: EvalReport, out_path: Path) -> Path | None:
    names = [m for m in CHART_METRICS if any(s.metrics.get(m) is not None for s in report.subjects)]
    if not names:
        return None
    import matplotlib as mpl

    mpl.use("Agg")
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
    return save_figure(figure, out_path)


def _value(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _change(before, after) -> str:
    return "-" if before is None or after is None else f"{(after - before) * 100:+.1f} pts"


def print_report(report: EvalReport, console, *, examples: int = 3) -> None:
    subjects = report.subjects
    run = report.run_subject()
    comparators = report.comparators()
    regressions = report.regressions()
    table = Table(
        title=f"Eval on {len(report.eval_set.examples)} held-out rows ({escape(report.eval_set.source)})",
        title_justify="left",
    )
    table.add_column("metric")
    for subject in subjects:
        table.add_column(escape(subject.label), justify="right")
    for other in comparators:
        table.add_column("change" if len(comparators) == 1 else f"vs {escape(other.label)}", justify="right")

    def marked(text: str, other, name: str) -> str:
        return f"[red]{text} ▼[/]" if name in regressions[other.label] else text

    for name in METRICS:
        values = [s.metrics.get(name) for s in subjects]
        if all(v is None for v in values):
            continue
        label = f"[bold]{name}[/] (headline)" if name == report.metric else name
        changes = [marked(_change(o.metrics.get(name), run.metrics.get(name)), o, name) for o in comparators]
        table.add_row(label, *map(_value, values), *changes)
    for name in dict.fromkeys(k for s in subjects for k in s.metrics if k.startswith("reward:")):  # grpo's rewards
        values = [s.metrics.get(name) for s in subjects]
        changes = [marked("-" if o.metrics.get(name) is None or run.metrics.get(name) is None
                          else f"{run.metrics[name] - o.metrics[name]:+.3f}", o, name) for o in comparators]
        table.add_row(f"{name} (mean)", *("-" if v is None else f"{v:.3f}" for v in values), *changes)
    for name in preference.PREFERENCE_METRICS:  # held-out preference pairs
        values = [s.metrics.get(name) for s in subjects]
        if any(v is not None for v in values):
            table.add_row(name, *(preference.shown(name, v) for v in values),
                          *(preference.change(name, o.metrics.get(name), run.metrics.get(name)) for o in comparators))
    losses = [s.loss for s in subjects]
    changes = [
        marked("-" if o.loss is None or run.loss is None else f"{run.loss - o.loss:+.3f}", o, LOSS) for o in comparators
    ]
    table.add_row(LOSS, *("-" if v is None else f"{v:.3f}" for v in losses), *changes)
    row = ["perplexity", *("-" if s.perplexity is None else f"{s.perplexity:.2f}" for s in subjects)]
    table.add_row(*(row + [""] * len(comparators)))
    if report.fewshot:
        row = ["prompt tokens (mean)",
               *("-" if s.prompt_tokens is None else f"{s.prompt_tokens:.0f}" for s in subjects)]
        table.add_row(*(row + [""] * len(comparators)))
    console.print(table)
    for subject in subjects:
        if subject.reused:
            rows = len(subject.answers)
            console.print(f"[dim]{escape(subject.label)}: {rows} of {rows} answers from "
                          f"the cache (computed {subject.reused} by the same model files, prompts, generation settings "
                          "and library versions; --no-cache asks again)[/]")
    fell = {label: names for label, names in regressions.items() if names}
    if fell:
        console.print(
            f"[red]regressions[/] (a share down by more than {report.threshold:g} points, the loss up by more than "
            f"{report.threshold:g}%): "
            + "; ".join(f"{escape(run.label)} vs {escape(label)}: {', '.join(names)}" for label, names in fell.items())
        )
    if report.typed:
        print_typed(report, console)
    if report.fewshot:
        _print_fewshot(report, console)
    if report.served:
        print_served(report.served, console)
    if report.judge:
        print_judge(report.judge, console)
    if comparators and examples:
        _print_differences(report, console, examples)


def print_typed(report: EvalReport, console) -> None:
    """The run asked as a user of the served model asks it, beside the training form: which rows differ,
    why, and the headline metric both ways."""
    typed = report.typed
    run = report.run_subject()
    asked = next((s for s in report.subjects if s.label == typed["label"]), None)
    kept = typed["mode"] == "keep"
    system = typed["system_prompt"]
    sent = f"{system[:77] + '…' if len(system) > 80 else system!r}" if system else "none (the chat template's default)"
    console.print(
        f"[bold]{escape(typed['label'])}[/]: the held-out rows as a user of the served model sends them, "
        f"{typed['rows']} of {len(report.eval_set.examples)} differing from how they were trained: without the "
        f"instruction most training rows shared ({escape(repr(typed['instruction']))}, trained "
        f"{'in the user turn' if kept else 'as the system prompt'}), with the system prompt the Modelfile and chat "
        f"send: {escape(sent)}"
    )
    if asked is None:
        return
    name = report.metric
    before, after = run.metrics.get(name), asked.metrics.get(name)
    fell = before is not None and after is not None and (before - after) * 100 > report.threshold
    line = f"  {name}: {_value(before)} as trained, {_value(after)} as a user sends it ({_change(before, after)})"
    if run.loss is not None and asked.loss is not None:
        line += f"; loss on the answers {run.loss:.3f} → {asked.loss:.3f}"
    console.print(f"[yellow]{line}[/]" if fell else line)
    if fell and kept:
        console.print("  [yellow]users of the served model (chat, Ollama) must type the instruction before every "
                      "input[/], or set data.shared_instruction: system and train again")


def _print_fewshot(report: EvalReport, console) -> None:
    info = report.fewshot
    without, with_shots = info["prompt_tokens"]["without"], info["prompt_tokens"]["with"]
    shown = ", ".join(escape(Path(origin).name) for origin in info["examples"])
    console.print(
        f"few-shot prompt: the base model with {info['k']} training examples as earlier turns ({shown}); "
        f"{with_shots:.0f} prompt tokens a question against {without:.0f} for the run "
        f"(+{with_shots - without:.0f}, {with_shots / without:.1f}x)"
    )


def print_served(served: dict, console) -> None:
    """The served model: where, what was sent, no loss, and how often it answered as the exported GGUF
    did, with the first row where it did not."""
    where = served["endpoint"]
    console.print(
        f"[bold]Served[/]: {escape(where['model'])} at {escape(where['url'])}; system prompt: "
        f"{escape(served['system_prompt']['how'])}; loss and perplexity: not available through the API"
    )
    share = "-" if served["agreement"] is None else f"{served['agreement']:.0%}"
    style = "green" if served["same"] == served["rows"] else "yellow"
    console.print(f"  the same answer as {escape(served['compared_with'])} (greedy, in-process) on "
                  f"[{style}]{served['same']} of {served['rows']} rows ({share})[/]")
    first = served["first_difference"]
    if first is None:
        return
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column("", style="dim", no_wrap=True)
    table.add_column("")
    for message in first["sent"]:
        table.add_row(f"sent {message['role']}", escape(message["content"]))
    table.add_row(escape(served["compared_with"]), escape(first["gguf"].strip()))
    table.add_row(escape(served["label"]), escape(first["served"].strip()))
    console.print(f"  first difference, row {first['row'] + 1}:")
    console.print(table)
    console.print("  [dim]a server that renders another prompt (chat template, system prompt) or samples otherwise "
                  "(temperature, repeat penalty) answers otherwise[/]")


def print_judge(judge: dict, console) -> None:
    """The judged comparison: win/tie/loss, the judge's position bias, and a flag when it is unreliable."""
    agreement = "-" if judge["agreement"] is None else f"{judge['agreement']:.0%}"
    chose_a = "-" if judge["chose_a"] is None else f"{judge['chose_a']:.0%}"
    endpoint = judge.get("endpoint")
    who = f"{short_model(judge['model'])} at {endpoint['url']}" if endpoint else Path(judge["model"]).name
    unparsed = judge.get("unparsed", 0)
    console.print(
        f"[bold]Judged[/] by {escape(who)}, each row in both orders: "
        f"{escape(judge['run'])} vs {escape(judge['against'])}: "
        f"[green]{judge['win']} win[/] / {judge['tie']} tie / [red]{judge['loss']} loss[/]"
        + (f" / {unparsed} unparsed" if unparsed else "") + f" of {judge['rows']} rows"
    )
    console.print(
        f"  the judge gave the same verdict in both orders on {agreement} of the judged rows it answered "
        f"(it chose the first answer {chose_a} of the time; {judge['identical']} rows had identical answers and "
        "count as ties)"
        + (f"; {judge['unparsed_replies']} replies said none of A, B, tie" if judge.get("unparsed_replies") else "")
    )
    if judge.get("flagged"):
        console.print(f"  [yellow]unreliable judge: {escape('; '.join(judge['flags']))}: its win/tie/loss says "
                      "little[/]")
    elif judge.get("too_few"):
        console.print(f"  [dim]{judge['judged']} judged rows: too few (under {judge['min_judged']}) to tell the "
                      "judge's position bias from chance[/]")


def _print_differences(report: EvalReport, console, limit: int) -> None:
    first, second = report.comparators()[-1], report.run_subject()
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


def print_probe_report(report, console, *, shown: int = 10) -> None:
    """The forgetting check (evaluate/probes): pass rate per category, and the probes that dropped."""
    before, after = report.models[0], report.models[-1]
    cats_before, cats_after = by_category(report.probes, before.passed), by_category(report.probes, after.passed)
    fell = set(report.fell())
    table = Table(
        title=f"General-ability probes ({report.probe_set}, {len(report.probes)} probes with exact answers)",
        title_justify="left",
    )
    for column in ("probes", escape(before.label), escape(after.label), "change"):
        table.add_column(column, justify="left" if column == "probes" else "right")

    def row(name: str, count: int, b: float, a: float) -> None:
        change = _change(b, a)
        table.add_row(f"{name} ({count})", f"{b:.0%}", f"{a:.0%}", f"[red]{change} ▼[/]" if name in fell else change)

    for name in cats_before:
        row(name, sum(p.category == name for p in report.probes), cats_before[name], cats_after[name])
    row("all probes", len(report.probes), before.score, after.score)
    if before.found and after.found:
        table.add_row(f"answer in the reply ({len(report.probes)})", f"{before.found_score:.0%}",
                      f"{after.found_score:.0%}", _change(before.found_score, after.found_score))
    losses = [m.loss for m in (before, after)]
    rose = report.loss_rose()
    loss_change = "-" if None in losses else f"{losses[1] - losses[0]:+.3f}"
    table.add_row("loss on the answers", *("-" if v is None else f"{v:.3f}" for v in losses),
                  f"[red]{loss_change} ▼[/]" if rose else loss_change)
    console.print(table)
    if rose:
        console.print(f"[red]the loss on the expected answers rose {rose:.0%}[/] ({losses[0]:.3f} → {losses[1]:.3f}): "
                      f"{escape(after.label)} finds the right answers less likely than {escape(before.label)} does")
    dropped, gained = report.dropped(), report.gained()
    if not any(before.passed):
        console.print(f"[yellow]{escape(before.label)} passed no probe[/] (it does not answer in the asked format): "
                      "the pass rates cannot show forgetting here; the answer-in-the-reply rate and the loss can")
    if not dropped:
        if any(before.passed):
            console.print(f"[green]no probe dropped[/]: {escape(after.label)} answers every probe "
                          f"{escape(before.label)} answered" + (f", and {len(gained)} more" if gained else ""))
        return
    console.print(f"[red]{len(dropped)} probe(s) dropped[/] (right for {escape(before.label)}, wrong for "
                  f"{escape(after.label)}){f'; {len(gained)} gained' if gained else ''}:")
    index = {p.id: i for i, p in enumerate(report.probes)}
    for probe in dropped[:shown]:
        got = after.answers[index[probe.id]].strip().replace("\n", " ")
        console.print(f"  {probe.id}: {escape(probe.prompt)}  expected {escape(probe.answer)!r}, "
                      f"got {escape(got[:80])!r}")
    if len(dropped) > shown:
        console.print(f"  ... and {len(dropped) - shown} more (in the report)")
