"""The ``quicktune`` command line: parses arguments and calls library functions.

Only click is imported at start-up; everything else is imported inside the command
that needs it, so ``quicktune --help`` stays instant and never loads torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    """List the built-in recipes (or `recipes show NAME`, `recipes export`, `recipes import`)."""
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


@recipes.command("export")
@click.argument("recipe")
@click.option("--axolotl", "out", required=True, type=click.Path(dir_okay=False), metavar="OUT.yaml",
              help="Write the equivalent Axolotl config here.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--force", is_flag=True, help="Replace OUT.yaml when it exists.")
def recipes_export(recipe: str, out: str, overrides: tuple[str, ...], force: bool) -> None:
    """Write RECIPE as an Axolotl config, for training it with Axolotl.

    \b
    Lists the recipe keys Axolotl has no equivalent for; they are kept under a
    `quicktune:` key (Axolotl drops keys it does not know), so `recipes import`
    gives the same recipe back.

    \b
    Examples:
      quicktune recipes export llama3.1-8b-qlora --axolotl llama3.1-8b.yaml
      quicktune recipes export mine.yaml --axolotl mine-axolotl.yaml --set training.max_steps=200
    """

    from quicktune.axolotl import export_axolotl
    from quicktune.console import print_axolotl_export
    from quicktune.recipe import load_recipe

    loaded = load_recipe(recipe, list(overrides))
    print_axolotl_export(export_axolotl(loaded, Path(out), recipe, force), Path(out))


@recipes.command("import")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="RECIPE.yaml",
              help="Where to write the recipe; default: <name>.yaml here.")
@click.option("--force", is_flag=True, help="Replace the recipe file when it exists.")
def recipes_import(config: str, output: str | None, force: bool) -> None:
    """Write a quicktune recipe from an Axolotl CONFIG (YAML).

    \b
    Every Axolotl key that has no quicktune equivalent is listed with its line;
    keys the config leaves out take Axolotl's defaults, and are listed too.

    \b
    Examples:
      quicktune recipes import axolotl.yaml
      quicktune recipes import examples/llama-3/qlora.yml -o llama3-qlora.yaml
    """

    from quicktune.axolotl import import_axolotl
    from quicktune.console import print_axolotl_import

    imported, written = import_axolotl(Path(config), Path(output) if output else None, force)
    print_axolotl_import(imported, written)


@main.group()
def data() -> None:
    """Check training data before you train on it."""


@data.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-r", "--recipe", help="Built-in recipe name or YAML path: its model's tokenizer and data settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--eval", "eval_files", multiple=True, type=click.Path(dir_okay=False),
    help="Held-out file(s) to check for leakage.",
)
@click.option(
    "--semantic-threshold",
    "semantic",
    metavar="COSINE|off",
    callback=lambda ctx, param, value: _semantic_threshold(value),
    help="Also look for rows whose prompts mean the same in other words: the embedding cosine (0-1] at or above "
    "which they count (0.85 suggested; sets data.semantic_threshold, off by default); off turns it off.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(
    files: tuple[str, ...], recipe: str | None, overrides: tuple[str, ...], eval_files: tuple[str, ...], semantic,
    as_json: bool,
) -> None:
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
      quicktune data check my.jsonl --eval held-out.jsonl --semantic-threshold 0.85
    """
    from quicktune.data.check import check_data

    report = check_data(
        list(files), recipe_ref=recipe, overrides=list(overrides), eval_files=list(eval_files),
        semantic_threshold=semantic,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        from quicktune.console import print_data_report

        print_data_report(report)


def _semantic_threshold(value: str | None) -> float | str | None:
    if value is None:
        return "default"
    if value.strip().lower() == "off":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 < number <= 1.0:
        raise click.BadParameter(f"{value!r}: give a cosine above 0 and at most 1 (e.g. 0.9), or off")
    return number


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
    func = click.option(
        "--new-run", is_flag=True,
        help="Start a new run folder even when an unfinished run of this recipe could be resumed.",
    )(func)
    func = click.option(
        "--allow-data-change", is_flag=True,
        help="Resume even though a data file changed since the run started (recorded in its manifest).",
    )(func)
    func = click.option(
        "--from", "parent", metavar="RUN", help="Continue from this run's adapter (runs/x/v3 or v3).",
    )(func)
    func = click.option("--gpus", type=click.IntRange(1, 64), metavar="N",
                        help="Train on N processes, one per GPU, through accelerate launch (DDP; the recipe's global "
                        "batch is kept). Without CUDA: N CPU processes (gloo). Same as --set training.gpus=N.")(func)
    func = RUNS_OPTION(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.argument("recipe")(func)


@main.command()
@_training_command
def train(recipe: str, overrides: tuple[str, ...], runs_dir: str, parent: str | None, dry_run: bool,
          allow_data_change: bool, new_run: bool, gpus: int | None) -> None:
    """Train RECIPE (a built-in name or a YAML path) into a new run folder.

    \b
    Every run gets runs/<recipe>/vN and never overwrites an earlier one. Ctrl-C saves
    a checkpoint and exits with status 130; the same command again resumes from it.

    \b
    Examples:
      quicktune train smollm2-demo
      quicktune train smollm2-demo --set training.max_steps=20
      quicktune train smollm2-demo --from v1      # continue from run v1's adapter
      quicktune train llama3.1-8b-qlora --gpus 4  # 4 GPUs, DDP through accelerate launch
    """
    from quicktune.workflow import train_command

    _exit_if_interrupted(train_command(recipe, _with_gpus(overrides, gpus), runs_dir, parent, dry_run,
                                       allow_data_change=allow_data_change, new_run=new_run))


def _with_gpus(overrides: tuple[str, ...], gpus: int | None) -> list[str]:
    """--gpus N is training.gpus=N: recorded in the resolved recipe like any other key."""
    return [*overrides, f"training.gpus={gpus}"] if gpus else list(overrides)


def _exit_if_interrupted(result) -> None:
    """Ctrl-C saved a checkpoint and stopped: exit 130 so a script can tell it from a finished run."""
    from quicktune.errors import EXIT_INTERRUPTED

    if result is not None and result.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@_training_command
@click.option("--force", is_flag=True, help="Train even when `quicktune plan` says it will not fit the GPU.")
def run(recipe: str, overrides: tuple[str, ...], runs_dir: str, parent: str | None, dry_run: bool,
        allow_data_change: bool, new_run: bool, gpus: int | None, force: bool) -> None:
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

    _exit_if_interrupted(run_command(recipe, _with_gpus(overrides, gpus), runs_dir, parent, dry_run, force,
                                     allow_data_change=allow_data_change, new_run=new_run))


QUANT_CHOICE = click.Choice(["q4_k_m", "q5_k_m", "q8_0", "f16", "bf16"])


@main.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "-q", "--quant", "quants", multiple=True, type=QUANT_CHOICE,
    help="Quantization(s) to write; default: the recipe's export.quantizations.",
)
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Check the GGUF files against the merged model.",
)
@click.option(
    "--prompts", default=8, show_default=True, type=click.IntRange(1, 200),
    help="Held-out prompts for the fidelity check.",
)
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
@click.option(
    "-q", "--quant", type=QUANT_CHOICE, help="Which exported GGUF of RUN; default: the best one you asked for.",
)
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
        from quicktune.runs import list_runs

        print_runs(list_runs(Path(runs_dir)), Path(runs_dir))


THRESHOLD_OPTION = click.option(
    "--threshold", type=click.FloatRange(0), metavar="POINTS",
    help="Mark a metric that fell by more than POINTS percentage points (the loss: rose by more than POINTS %) "
    "as a regression. Default 2: a little more than one row of 60.",
)


@runs_group.command("compare")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@THRESHOLD_OPTION
@click.pass_obj
def runs_compare(runs_dir: str, first: str, second: str, threshold: float | None) -> None:
    """Compare two runs: recipe differences, data hashes, training and eval metrics.

    \b
    A and B are run folders, recipe/vN, or (for B) just vN of A's recipe. Eval metrics
    are shown when both runs were scored on the same held-out rows; score B against A
    on A's rows with `quicktune eval B --against A`. An eval metric B is worse on by more
    than --threshold is marked ▼.

    \b
    Examples:
      quicktune runs compare smollm2-demo/v1 v2
      quicktune runs compare runs/smollm2-demo/v3 runs/smollm2-demo/v7
    """
    from quicktune.workflow import compare_command

    compare_command(first, second, runs_dir, threshold)


@main.command("eval")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--against", default="base", show_default=True,
    help="base, fewshot[:K] (the base model prompted with K training examples, default 3), another run (vN or a "
    "folder), or none.",
)
@click.option(
    "--data", "data_files", multiple=True, type=click.Path(dir_okay=False),
    help="Held-out file(s) instead of the recipe's eval data.",
)
@click.option("--limit", type=click.IntRange(1), help="Score only the first N rows.")
@click.option(
    "--gguf", is_flag=False, flag_value="", default=None, metavar="[QUANT]",
    help="Also score the exported GGUF (default quantization, or QUANT) through llama.cpp.",
)
@click.option("--max-new-tokens", type=click.IntRange(1), help="Answer budget; default: the longest reference + 32.")
@click.option(
    "--judge", metavar="MODEL.gguf",
    help="A local GGUF chat model that compares the run's answer with the other's on each row, in both orders.",
)
@click.option(
    "--probe", type=click.Choice(["general"]),
    help="Instead of held-out rows: the shipped probe set of general abilities, base (or --against RUN) vs RUN.",
)
@THRESHOLD_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout (and nothing else there).",
)
@RUNS_OPTION
def evaluate(
    run_ref: str, against: str, data_files: tuple[str, ...], limit: int | None, gguf: str | None,
    max_new_tokens: int | None, judge: str | None, probe: str | None, threshold: float | None, as_json: bool,
    runs_dir: str,
) -> None:
    """Score RUN against the base model (or another run) on held-out data.

    \b
    Both answer the same prompts greedily with the run's chat template. Reported:
    exact and normalised match, valid-JSON rate and JSON field accuracy (for JSON
    answers), how often answers end with EOS, and loss/perplexity on the reference
    answers; the recipe's eval.metric is the headline. Shows rows where the two
    differ and keeps each comparison in RUN/eval/<against>-<rows>.json and .png
    (<rows>: the held-out rows' sha256; the same comparison again replaces its own).
    A metric the run is worse on than what it is compared with by more than
    --threshold is marked ▼.

    \b
    Was fine-tuning worth it?
      --against fewshot[:K]  base, the base prompted with K training examples, and RUN
                             side by side, with what the longer prompt costs in tokens
      --probe general        what RUN lost elsewhere: 40 probes with exact answers
                             (arithmetic, formatting, copying, counting, reasoning);
                             names the probes that dropped (eval/probes-general-*.json)
      --judge MODEL.gguf     a local judge model compares the two answers of each row
                             with a written rubric, in both orders: win / tie / loss

    \b
    Examples:
      quicktune eval runs/smollm2-demo/v1
      quicktune eval runs/smollm2-demo/v2 --against v1 --limit 20
      quicktune eval runs/smollm2-demo/v1 --gguf q4_k_m     # what quantization cost
      quicktune eval runs/smollm2-demo/v1 --data my-held-out.jsonl
      quicktune eval runs/smollm2-demo/v1 --against fewshot:5
      quicktune eval runs/smollm2-demo/v1 --probe general
      quicktune eval runs/smollm2-demo/v1 --judge ~/models/judge.gguf --limit 20
      quicktune eval runs/smollm2-demo/v1 --json > report.json
    """
    from quicktune.workflow import eval_command

    report = eval_command(
        run_ref, against, list(data_files), limit, gguf, max_new_tokens, runs_dir, judge=judge, probe=probe,
        threshold=threshold, as_json=as_json,
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))


@main.command()
@click.argument("recipe")
@click.option(
    "--gpu",
    help='GPU to plan for, e.g. "RTX 4090", "RTX 3090", T4, A100 (default: RTX 4090; the CPU for a CPU recipe).',
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
@RUNS_OPTION
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback is a warning.",
)
def ui(runs_dir: str, port: int, host: str) -> None:
    """A local web dashboard: runs, live loss curves, evals, exports, side-by-side chat.

    \b
    Serves on 127.0.0.1 only unless --host says otherwise, and prints the URL. Pages:
    every run with its lineage; one run (live curves, manifest, the data check's
    rendered example, fidelity table, Modelfiles); two runs compared; a chat with
    exported GGUFs (llama.cpp), two models side by side. It reads the runs folder
    and writes nothing; everything it shows ships inside the package (works offline).

    \b
    Examples:
      quicktune ui
      quicktune ui --runs-dir ~/experiments/runs --port 9000
    """
    from quicktune.ui.server import run_dashboard

    run_dashboard(runs_dir, host, port)


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
    from quicktune.doctor import as_json as checks_json
    from quicktune.doctor import run_checks

    checks = run_checks(Path(runs_dir))
    if as_json:
        click.echo(json.dumps(checks_json(checks), indent=2))
        return
    from quicktune.console import print_checks

    print_checks(checks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
