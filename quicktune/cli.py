"""The ``quicktune`` command line: parses arguments and calls library functions.

Only click is imported at start-up; everything else is imported inside the command
that needs it, so ``quicktune --help`` stays instant and never loads torch.
"""

from __future__ import annotations

import sys

import click

SET_HELP = "Override a recipe key, e.g. --set training.max_steps=30 (repeatable)."


class _Group(click.Group):
    """Shows a ``QuicktuneError`` as a short message with exit status 2, no traceback."""

    def invoke(self, ctx: click.Context):
        from quicktune.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, QuicktuneError

        try:
            return super().invoke(ctx)
        except QuicktuneError as exc:
            from quicktune.console import print_error

            print_error(exc)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            from quicktune.console import err_console

            err_console.print("[yellow]interrupted[/]")
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="quicktune")
def main() -> None:
    """Turn your own examples into a local chat model.

    \b
    Start with the CPU demo (SmolLM2-135M, a few minutes, no GPU):
      quicktune recipes                      list the built-in recipes
      quicktune data check --recipe smollm2-demo
                                             see exactly what the model will learn
    """


@main.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the built-in recipes (or `recipes show NAME`)."""
    if ctx.invoked_subcommand is None:
        from quicktune.console import print_recipe_table
        from quicktune.recipe import builtin_recipes, load_recipe

        print_recipe_table([load_recipe(str(path)) for path in builtin_recipes().values()])


@recipes.command("show")
@click.argument("name")
def recipes_show(name: str) -> None:
    """Print a recipe's YAML, as shipped (NAME is a built-in name or a path)."""
    from quicktune.recipe import find_recipe_file

    click.echo(find_recipe_file(name).read_text(encoding="utf-8"), nl=False)


@main.group()
def data() -> None:
    """Check training data before you train on it."""


@data.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-r", "--recipe", help="Built-in recipe name or YAML path: its model's tokenizer and data settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--eval", "eval_files", multiple=True, type=click.Path(dir_okay=False), help="Held-out file(s) to check for leakage.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(files: tuple[str, ...], recipe: str | None, overrides: tuple[str, ...], eval_files: tuple[str, ...], as_json: bool) -> None:
    """Validate data FILES and show what training will see.

    \b
    Reads JSONL, JSON, CSV or Parquet in messages, sharegpt, alpaca or text format;
    reports every broken line as FILE:LINE (exit status 2), duplicates, train/eval
    leakage, token lengths against max_seq_length, and one rendered example with
    the trained tokens marked. With --recipe, FILES replace the recipe's data.train
    (leave them out to check the recipe's own data).

    \b
    Examples:
      quicktune data check --recipe smollm2-demo
      quicktune data check my.jsonl --recipe llama3.1-8b-qlora --set model.max_seq_length=4096
      quicktune data check my.jsonl --eval held-out.jsonl --json
    """
    from quicktune.data.check import check_data

    report = check_data(list(files), recipe_ref=recipe, overrides=list(overrides), eval_files=list(eval_files))
    if as_json:
        import json

        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        from quicktune.console import print_data_report

        print_data_report(report)


RUNS_OPTION = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    envvar="QUICKTUNE_RUNS",
    help="Where run folders go (runs/<recipe>/vN).",
)


def _training_command(func):
    func = click.option("--dry-run", is_flag=True, help="Check recipe and data and show the plan; load no model.")(func)
    func = click.option("--from", "parent", metavar="RUN", help="Continue from this run's adapter (runs/x/v3 or v3).")(func)
    func = RUNS_OPTION(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.argument("recipe")(func)


@main.command()
@_training_command
def train(recipe: str, overrides: tuple[str, ...], runs_dir: str, parent: str | None, dry_run: bool) -> None:
    """Train RECIPE (a built-in name or a YAML path) into a new run folder.

    \b
    Every run gets runs/<recipe>/vN and never overwrites an earlier one. Ctrl-C saves
    a checkpoint and exits with status 130; the same command again resumes from it.

    \b
    Examples:
      quicktune train smollm2-demo
      quicktune train smollm2-demo --set training.max_steps=20
      quicktune train smollm2-demo --from v1      # continue from run v1's adapter
    """
    from quicktune.workflow import train_command

    _exit_if_interrupted(train_command(recipe, list(overrides), runs_dir, parent, dry_run))


def _exit_if_interrupted(result) -> None:
    """Ctrl-C saved a checkpoint and stopped: exit 130 so a script can tell it from a finished run."""
    from quicktune.errors import EXIT_INTERRUPTED

    if result is not None and result.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@_training_command
@click.option("--force", is_flag=True, help="Train even when `quicktune plan` says it will not fit the GPU.")
def run(recipe: str, overrides: tuple[str, ...], runs_dir: str, parent: str | None, dry_run: bool, force: bool) -> None:
    """Train RECIPE, then export it for Ollama and llama.cpp, and score it.

    \b
    On a GPU machine the recipe is planned first (see `quicktune plan`) and refused
    when it cannot fit. After training: merge, GGUF, quantization, Modelfile and the
    fidelity check (`quicktune export`), then, with eval data, the run against its
    base model (`quicktune eval`). Ends with the ollama commands.

    \b
    The quick start (CPU, a few minutes, no download):
      quicktune run smollm2-demo
    """
    from quicktune.workflow import run_command

    _exit_if_interrupted(run_command(recipe, list(overrides), runs_dir, parent, dry_run, force))


QUANT_CHOICE = click.Choice(["q4_k_m", "q5_k_m", "q8_0", "f16", "bf16"])


@main.command()
@click.argument("run_ref", metavar="RUN")
@click.option("-q", "--quant", "quants", multiple=True, type=QUANT_CHOICE, help="Quantization(s) to write; default: the recipe's export.quantizations.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check the GGUF files against the merged model.")
@click.option("--prompts", default=8, show_default=True, type=click.IntRange(1, 200), help="Held-out prompts for the fidelity check.")
@RUNS_OPTION
def export(run_ref: str, quants: tuple[str, ...], verify: bool, prompts: int, runs_dir: str) -> None:
    """Export a trained RUN: merged model, GGUF files, Ollama Modelfiles, fidelity check.

    \b
    Writes into RUN/export/ and never rewrites a file already there, so asking for
    another quantization later keeps the rest. The fidelity check compares the F16
    GGUF (llama.cpp) with the merged model (transformers) on held-out prompts, and
    the top tokens of the quantizations asked for (without --quant: the recipe's and
    every one exported before); results go into the run's manifest.json.

    \b
    Examples:
      quicktune export runs/smollm2-demo/v1
      quicktune export runs/smollm2-demo/v1 --quant q8_0     # add a quantization
      quicktune export runs/smollm2-demo/v1 --verify         # check again
    """
    from quicktune.workflow import export_command

    export_command(run_ref, list(quants), runs_dir, verify=verify, prompts=prompts)


@main.command()
@click.argument("target", metavar="RUN|GGUF")
@click.option("-q", "--quant", type=QUANT_CHOICE, help="Which exported GGUF of RUN; default: the best one you asked for.")
@click.option("-p", "--prompt", help="Ask one question, print the answer and exit (for scripts).")
@click.option("--system", help="System prompt; default: the one the run was trained with, as in its Modelfile.")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1), help="Longest answer.")
@click.option("--ctx", "num_ctx", type=click.IntRange(64), help="Context in tokens; default: the Modelfile's num_ctx.")
@RUNS_OPTION
def chat(
    target: str, quant: str | None, prompt: str | None, system: str | None, max_tokens: int, num_ctx: int | None,
    runs_dir: str,
) -> None:
    """Chat with an exported model in the terminal (llama.cpp, streaming).

    \b
    Uses the chat template and stop tokens the model was trained with, and the
    recipe's system prompt and temperature. In the chat: /reset, /system TEXT, /exit.
    RUN is any run reference (recipe/vN, vN, a run folder, its export/ folder); the
    GGUF is the best quantization you exported (--quant picks one). When the talk
    outgrows the context, the oldest exchanges are forgotten, and the chat says so.

    \b
    Examples:
      quicktune chat runs/smollm2-demo/v1
      quicktune chat runs/smollm2-demo/v1 --quant q8_0
      quicktune chat model.gguf --prompt "Lunch with Ana at Nopa tomorrow at 1pm"
    """
    from quicktune.workflow import chat_command

    chat_command(target, quant, prompt, system, max_tokens, runs_dir, num_ctx)


@main.group("runs", invoke_without_command=True)
@RUNS_OPTION
@click.pass_context
def runs_group(ctx: click.Context, runs_dir: str) -> None:
    """List runs with their status and key metrics (or `runs compare A B`)."""
    ctx.obj = runs_dir
    if ctx.invoked_subcommand is None:
        from pathlib import Path

        from quicktune.console import print_runs
        from quicktune.train.runs import list_runs

        print_runs(list_runs(Path(runs_dir)), Path(runs_dir))


@runs_group.command("compare")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@click.pass_obj
def runs_compare(runs_dir: str, first: str, second: str) -> None:
    """Compare two runs: recipe differences, data hashes, training and eval metrics.

    \b
    A and B are run folders, recipe/vN, or (for B) just vN of A's recipe. Eval metrics
    are shown when both runs were scored on the same held-out rows; score B against A
    on A's rows with `quicktune eval B --against A`.

    \b
    Examples:
      quicktune runs compare smollm2-demo/v1 v2
      quicktune runs compare runs/smollm2-demo/v3 runs/smollm2-demo/v7
    """
    from quicktune.workflow import compare_command

    compare_command(first, second, runs_dir)


@main.command("eval")
@click.argument("run_ref", metavar="RUN")
@click.option("--against", default="base", show_default=True, help="base, another run (vN or a folder), or none.")
@click.option("--data", "data_files", multiple=True, type=click.Path(dir_okay=False), help="Held-out file(s) instead of the recipe's eval data.")
@click.option("--limit", type=click.IntRange(1), help="Score only the first N rows.")
@click.option("--gguf", is_flag=False, flag_value="", default=None, metavar="[QUANT]", help="Also score the exported GGUF (default quantization, or QUANT) through llama.cpp.")
@click.option("--max-new-tokens", type=click.IntRange(1), help="Answer budget; default: the longest reference + 32.")
@RUNS_OPTION
def evaluate(run_ref: str, against: str, data_files: tuple[str, ...], limit: int | None, gguf: str | None, max_new_tokens: int | None, runs_dir: str) -> None:
    """Score RUN against the base model (or another run) on held-out data.

    \b
    Both answer the same prompts greedily with the run's chat template. Reported:
    exact and normalised match, valid-JSON rate and JSON field accuracy (for JSON
    answers), how often answers end with EOS, and loss/perplexity on the reference
    answers; the recipe's eval.metric is the headline. Shows rows where the two
    differ and keeps each comparison in RUN/eval/<against>-<rows>.json and .png
    (<rows>: the held-out rows' sha256; the same comparison again replaces its own).

    \b
    Examples:
      quicktune eval runs/smollm2-demo/v1
      quicktune eval runs/smollm2-demo/v2 --against v1 --limit 20
      quicktune eval runs/smollm2-demo/v1 --gguf q4_k_m     # what quantization cost
      quicktune eval runs/smollm2-demo/v1 --data my-held-out.jsonl
    """
    from quicktune.workflow import eval_command

    eval_command(run_ref, against, list(data_files), limit, gguf, max_new_tokens, runs_dir)


@main.command()
@click.argument("recipe")
@click.option(
    "--gpu", help='GPU to plan for, e.g. "RTX 4090", "RTX 3090", T4, A100 (default: RTX 4090; the CPU for a CPU recipe).'
)
@click.option(
    "--vram", type=click.FloatRange(1), help="Or the GPU memory in GiB (memory only: no time estimate without --gpu)."
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def plan(recipe: str, gpu: str | None, vram: float | None, overrides: tuple[str, ...]) -> None:
    """Estimate peak VRAM, disk and time for RECIPE, without loading anything.

    \b
    Splits peak VRAM into weights, LoRA + optimizer state, activations, logits and
    CUDA runtime, says whether it fits, and if not the nearest settings that do.
    Exit status 1 when it does not fit. A CPU recipe (its hardware line says CPU,
    e.g. smollm2-demo) is planned for the CPU unless --gpu or --vram is given.
    Constants and their sources: quicktune/plan.py.

    \b
    Examples:
      quicktune plan llama3.1-8b-qlora
      quicktune plan llama3.1-8b-qlora --gpu "RTX 3060"
      quicktune plan llama3.1-8b-qlora --set method=lora --set model.load_in_4bit=false --set model.max_seq_length=8192
    """
    from quicktune.console import print_plan
    from quicktune.plan import make_plan
    from quicktune.recipe import load_recipe

    loaded = load_recipe(recipe, list(overrides))
    result = make_plan(loaded, gpu=gpu, vram=vram)
    print_plan(result, loaded.name, loaded.hardware)
    if not result.fits:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@RUNS_OPTION
def doctor(as_json: bool, runs_dir: str) -> None:
    """Check this machine: Python, torch/CUDA/GPU, 4-bit, Unsloth, llama.cpp, Ollama, disk.

    \b
    Every problem comes with its fix. Exit status 0 even when something is missing:
    what matters depends on the recipe (the CPU demo needs no GPU).

    \b
    Examples:
      quicktune doctor
      quicktune doctor --json
    """
    from pathlib import Path

    from quicktune.doctor import as_json as checks_json
    from quicktune.doctor import run_checks

    checks = run_checks(Path(runs_dir))
    if as_json:
        import json

        click.echo(json.dumps(checks_json(checks), indent=2))
        return
    from quicktune.console import print_checks

    print_checks(checks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
