"""What ``quicktune train`` and ``quicktune run`` do, step by step, with output for a person."""

from __future__ import annotations

from pathlib import Path

from quicktune.console import console, print_data_report
from quicktune.recipe import Recipe, load_recipe


def _dry_run(recipe: Recipe, runs_root: Path, parent: str | None) -> None:
    from quicktune.train.runs import find_resumable, next_run_dir
    from quicktune.train.trainer import load_parent, planned_steps, prepare_data, recipe_sha256

    report = prepare_data(recipe).report
    print_data_report(report)
    parent_dir = load_parent(parent, runs_root, recipe)
    resumable = find_resumable(runs_root, recipe.name, recipe_sha256(recipe), str(parent_dir) if parent_dir else None)
    target = resumable or next_run_dir(runs_root, recipe.name)
    t = recipe.training
    console.print(f"[bold]plan[/]: {recipe.method} on {recipe.model.base}")
    console.print(
        f"  {planned_steps(recipe, report.train_rows)} steps of {t.batch_size} x {t.grad_accumulation} rows, "
        f"lr {t.learning_rate}, max_seq_length {recipe.model.max_seq_length}, seed {t.seed}"
    )
    console.print(f"  run folder: {target}{' (resumes its last checkpoint)' if resumable else ''}")
    if parent_dir:
        console.print(f"  starts from the adapter of {parent_dir}")
    console.print("[dim]dry run: no model was loaded[/]")


def _same_command(command: str, recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None) -> str:
    import shlex

    words = ["quicktune", command, recipe_ref, *(f"--set={o}" for o in overrides)]
    if runs_dir != "runs":
        words.append(f"--runs-dir={runs_dir}")
    if parent:
        words.append(f"--from={parent}")
    return shlex.join(words)


def train_command(
    recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, dry_run: bool, command: str = "train"
):
    recipe = load_recipe(recipe_ref, overrides)
    runs_root = Path(runs_dir)
    if dry_run:
        _dry_run(recipe, runs_root, parent)
        return None
    from quicktune.train.trainer import train

    result = train(recipe, runs_root=runs_root, parent_ref=parent, console=console)
    if result.status == "interrupted":
        console.print(
            f"[yellow]interrupted[/] at step {result.metrics.get('steps')}; checkpoint saved in {result.run_dir}. "
            f"Resume with: {_same_command(command, recipe_ref, overrides, runs_dir, parent)}"
        )
        return result
    m = result.metrics
    console.print(
        f"[green]✓ trained[/] {result.run_dir}: {m['steps']} steps in {m['seconds']} s, "
        f"loss {m['first_loss']:.3f} → {m['train_loss']:.3f}"
        + (f", best eval loss {m['best_eval_loss']:.3f}" if m.get("best_eval_loss") is not None else "")
    )
    console.print(f"  adapter: {result.adapter_dir}   loss curve: {result.run_dir / 'loss.png'}")
    return result


def run_command(recipe_ref: str, overrides: list[str], runs_dir: str, parent: str | None, dry_run: bool):
    result = train_command(recipe_ref, overrides, runs_dir, parent, dry_run, command="run")
    if result is not None and result.status == "finished":
        console.print(
            "[dim]GGUF export and the Ollama Modelfile are not part of this version yet (issue 4); "
            f"the trained adapter is {result.adapter_dir}[/]"
        )
    return result
