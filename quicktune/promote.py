"""``quicktune runs promote / rollback / history``: which version of a recipe is the one in use.

Promotion checks a run (finished, exported, scored by ``quicktune eval``), compares its eval
scores with the version promoted now on the same held-out rows (``evaluate/compare.py``'s
choice of reports, ``evaluate/regression.py``'s rule at the default threshold), tags it in
Ollama (``ollama_cli.py``) and records it in ``runs/<recipe>/promotions.jsonl``
(``runs/promotions.py``). Reads files and runs ``ollama``: no model is loaded, no torch.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune import ollama_cli
from quicktune.console import (
    print_history,
    print_ollama_commands,
    print_ollama_ran,
    print_promotion,
    print_promotion_check,
)
from quicktune.errors import QuicktuneError
from quicktune.evaluate.compare import scores_on_the_same_rows
from quicktune.evaluate.preference import PREFERENCE_METRICS, shown
from quicktune.evaluate.regression import DEFAULT_THRESHOLD, LOSS, find_regressions
from quicktune.runs import (
    PROMOTE,
    ROLLBACK,
    Promotion,
    append_entry,
    exported_gguf,
    holder,
    in_force,
    lock_history,
    now,
    pick_quantization,
    promoted_entry,
    read_history,
    read_manifest,
    read_own_eval,
    recipe_dir_named,
    resolve_run,
    run_label,
    versions,
)

PASSED = "passed the checks"


@dataclass
class Check:
    """What promoting a run was checked against: the promoted version's scores on the same rows."""

    against: str | None  # recipe/vM promoted now; None for a recipe's first promotion
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # metric, promoted, candidate (formatted)
    regressions: list[str] = field(default_factory=list)  # metrics the candidate is worse on
    failure: str | None = None  # why the checks refuse it; None when they pass
    compared: dict[str, Any] = field(default_factory=dict)  # the scores, for the history


def promote(ref: str, root: Path, *, name: str | None = None, force: bool = False, reason: str | None = None,
            use_ollama: bool = True) -> Promotion:
    """Promotes the run ``ref`` names (any form ``resolve_run`` takes) and returns the history line written.

    Refused (a ``QuicktuneError``, nothing recorded) when the run is not finished, not exported,
    never scored, or worse than the promoted version (unless ``force`` with a ``reason``), or when
    ``ollama`` fails."""
    if force and not (reason or "").strip():
        raise QuicktuneError("--force needs --reason TEXT: why this version goes out although the checks refuse it",
                             hint='e.g. quicktune runs promote v3 --force --reason "fixes the date bug; 1 row worse"')
    run_dir = resolve_run(ref, root)
    recipe_dir = run_dir.parent
    name = ollama_cli.check_name(name) if name else _default_name(recipe_dir)
    with lock_history(recipe_dir, "quicktune runs promote"):
        modelfile = promotable(run_dir)
        current = promoted_entry(recipe_dir)
        if current is not None and current.version == run_dir.name:
            raise QuicktuneError(f"{run_label(run_dir)} is already the promoted version",
                                 hint="`quicktune runs history` lists the promotions.")
        check = check_against(current, run_dir)
        if check.failure and not force:
            worse = [f"{key}: {before} -> {after}" for key, before, after in check.rows if key in check.regressions]
            raise QuicktuneError(f"{run_label(run_dir)} is not promoted: {check.failure}", problems=worse,
                                 hint=_fix(check, run_dir))
        tags, how = _publish(name, run_dir.name, modelfile, use_ollama)
        entry = Promotion(
            PROMOTE, run_label(run_dir), run_dir.name, now(), getpass.getuser(), (reason or "").strip() or PASSED,
            name, tags, how, str(modelfile.relative_to(run_dir)), forced=bool(check.failure),
            replaced=current.run if current else None, compared=check.compared,
        )
        append_entry(recipe_dir, entry)
    print_promotion(entry)
    return entry


def promotable(run_dir: Path) -> Path:
    """The Modelfile ``ollama create`` reads for ``run_dir`` (its picked quantization), once the run is
    checked: not in use, finished, exported (the GGUF still the one written) and scored by eval."""
    label = run_label(run_dir)
    busy = holder(run_dir)
    if busy:
        raise QuicktuneError(f"{label} is in use: {busy}", hint="Wait for it to end, then promote it.")
    manifest = read_manifest(run_dir)
    status = manifest.get("status")
    if status != "finished":
        raise QuicktuneError(f"{label} is {status}: only a finished run can be promoted",
                             hint="Train it to the end first (`quicktune train RECIPE` resumes an interrupted run).")
    quant = pick_quantization(run_dir, manifest)  # not exported: says `quicktune export RUN`
    relative = ((manifest.get("export") or {}).get("modelfiles") or {}).get(quant)
    if not relative or not (run_dir / relative).is_file():
        raise QuicktuneError(f"{label} has no Modelfile for its {quant} GGUF",
                             hint=f"Run: quicktune export {label} --quant {quant}")
    exported_gguf(run_dir, manifest, quant)
    if read_own_eval(run_dir)[1] is None:
        raise QuicktuneError(f"{label} has no eval report: a promotion compares eval scores",
                             hint=f"Score it first: quicktune eval {label}")
    return run_dir / relative


def check_against(current: Promotion | None, run_dir: Path) -> Check:
    """Compares ``run_dir``'s eval scores with the promoted version's on the same held-out rows (the
    reports ``runs compare`` picks: ``scores_on_the_same_rows``; a metric worse by more than the default
    threshold is a regression: ``find_regressions``). Prints the table; returns the ``Check``."""
    if current is None:
        report, own = read_own_eval(run_dir)
        return Check(None, compared={"with": None, "metric": report.get("metric"), "metrics": own.get("metrics"),
                                     "loss": own.get("loss"), "rows_sha256": (report.get("data") or {}).get("sha256")})
    promoted_dir = run_dir.parent / current.version
    if current.version not in {f"v{n}" for n in versions(run_dir.parent)}:
        return Check(current.run, failure=f"the promoted {current.run} is gone: nothing to compare with",
                     compared={"with": current.run})
    check = Check(current.run, compared={"with": current.run})
    shared = scores_on_the_same_rows(promoted_dir, run_dir)
    if shared is None:
        check.failure = f"no eval report scores it and {current.run} on the same held-out rows"
        return check
    sha, before, after, source = shared
    metrics = [{**scores.get("metrics", {}), LOSS: scores.get("loss")} for scores in (before, after)]
    check.regressions = find_regressions(before.get("metrics", {}), after.get("metrics", {}), before.get("loss"),
                                         after.get("loss"), DEFAULT_THRESHOLD)
    check.rows = [(key, _value(key, metrics[0][key]), _value(key, metrics[1].get(key))) for key in metrics[0]]
    check.compared.update(rows_sha256=sha, source=source, regressions=check.regressions,
                          before=metrics[0], after=metrics[1])
    print_promotion_check((current.run, run_label(run_dir)), check.rows, check.regressions, source)
    if check.regressions:
        check.failure = f"worse than the promoted {current.run} on {', '.join(check.regressions)}"
    return check


def _value(key: str, value: float | None) -> str:
    """A score as ``runs compare`` shows it: a share in %, a preference margin in nats, the loss as a number."""
    if key in PREFERENCE_METRICS:
        return shown(key, value)
    if value is None:
        return "-"
    return f"{value:.4g}" if key == LOSS else f"{value:.1%}"


def _fix(check: Check, run_dir: Path) -> str:
    """The hint for a refused promotion."""
    override = 'or promote it anyway: --force --reason "why"'
    if check.regressions:
        return f"Keep {check.against}, {override} (`quicktune runs compare {check.against} {run_label(run_dir)}`)."
    if check.against and "gone" not in (check.failure or ""):
        return f"Score both on the same rows: quicktune eval {run_label(run_dir)} --against {check.against}; {override}"
    return f"Promote it anyway: --force --reason \"why\" ({check.failure})."


def _default_name(recipe_dir: Path) -> str:
    name = ollama_cli.default_name(recipe_dir.name)
    if not name:
        raise QuicktuneError(f"recipe {recipe_dir.name!r} gives no Ollama model name", hint="Name it: --as NAME")
    return name


def _publish(name: str, version: str, modelfile: Path, use_ollama: bool) -> tuple[list[str], str]:
    """Tags ``NAME:vN`` from ``modelfile`` and points ``NAME:latest`` at it (or prints how, without ollama).
    Returns (the tags, "done" | "printed" | "skipped")."""
    versioned, latest = ollama_cli.tag(name, version), ollama_cli.tag(name, ollama_cli.LATEST)
    commands = [ollama_cli.create_args(versioned, modelfile), ollama_cli.copy_args(versioned, latest)]
    if not use_ollama:
        return [versioned, latest], "skipped"
    if ollama_cli.ollama_on_path() is None:
        print_ollama_commands(modelfile.parent, [ollama_cli.shown(c) for c in commands])
        return [versioned, latest], "printed"
    for args in (commands[0], ollama_cli.show_args(versioned), commands[1], ollama_cli.show_args(latest)):
        ollama_cli.run(args, cwd=modelfile.parent)
        print_ollama_ran(ollama_cli.shown(args))
    return [versioned, latest], "done"


def rollback(recipe: str | None, root: Path, *, use_ollama: bool = True, reason: str | None = None) -> Promotion:
    """Promotes again the version promoted before the current one (no checks: it passed them once),
    re-pointing ``NAME:latest``; returns the rollback's history line. Nothing before: an error."""
    recipe_dir = recipe_dir_named(root, recipe, "rollback", "quicktune runs rollback {recipe}")
    with lock_history(recipe_dir, "quicktune runs rollback"):
        stack = in_force(read_history(recipe_dir))
        if len(stack) < 2:
            raise QuicktuneError(
                f"{recipe_dir.name}: nothing to roll back to ("
                + (f"{stack[-1].run} is the only version promoted)" if stack else "no version was promoted)"),
                hint=f"`quicktune runs history {recipe_dir.name}` lists the promotions.",
            )
        current, previous = stack[-1], stack[-2]
        run_dir = recipe_dir / previous.version
        read_manifest(run_dir)  # still there
        how = _repoint(previous, run_dir, use_ollama)
        entry = Promotion(
            ROLLBACK, previous.run, previous.version, now(), getpass.getuser(),
            (reason or "").strip() or f"rolled back from {current.run}", previous.name, previous.tags, how,
            previous.modelfile, replaced=current.run,
        )
        append_entry(recipe_dir, entry)
    print_promotion(entry)
    return entry


def _repoint(previous: Promotion, run_dir: Path, use_ollama: bool) -> str:
    """Points ``NAME:latest`` at ``NAME:vPrev`` again (creating ``NAME:vPrev`` from its Modelfile when Ollama
    lost it); returns "done" | "printed" | "skipped"."""
    versioned = ollama_cli.tag(previous.name, previous.version)
    latest = ollama_cli.tag(previous.name, ollama_cli.LATEST)
    modelfile = run_dir / (previous.modelfile or "")
    create = ollama_cli.create_args(versioned, modelfile)
    copy = ollama_cli.copy_args(versioned, latest)
    if not use_ollama:
        return "skipped"
    if ollama_cli.ollama_on_path() is None:
        print_ollama_commands(None, [ollama_cli.shown(copy)],
                              f"if `ollama show {versioned}` finds nothing, first: cd {modelfile.parent} && "
                              f"{ollama_cli.shown(create)}")
        return "printed"
    steps = [copy, ollama_cli.show_args(latest)]
    if not ollama_cli.exists(versioned, modelfile.parent):
        if not previous.modelfile or not modelfile.is_file():
            raise QuicktuneError(f"Ollama has no {versioned} and {modelfile} is gone",
                                 hint=f"Export it again (quicktune export {previous.run}), then roll back.")
        steps = [create, ollama_cli.show_args(versioned), *steps]
    for args in steps:
        ollama_cli.run(args, cwd=modelfile.parent)
        print_ollama_ran(ollama_cli.shown(args))
    return "done"


def history(recipe: str | None, root: Path) -> list[tuple[str, list[Promotion]]]:
    """Each recipe's history, oldest line first: ``recipe``'s only, or every recipe's under ``root``
    that has one. Prints it and returns [(recipe name, lines)]."""
    if recipe:
        folders = [recipe_dir_named(root, recipe)]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    histories = [(folder.name, read_history(folder)) for folder in folders]
    histories = [(name, lines) for name, lines in histories if lines or recipe]
    print_history([(name, lines, _current(lines)) for name, lines in histories], root)
    return histories


def _current(lines: list[Promotion]) -> str | None:
    stack = in_force(lines)
    return stack[-1].run if stack else None
