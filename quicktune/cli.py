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
    Reads JSONL, JSON, CSV or Parquet in messages, sharegpt, alpaca or text format,
    or a Hugging Face Hub dataset, hf://OWNER/NAME (from the Hub cache); reports
    every broken line as FILE:LINE or hf://OWNER/NAME[train]:row N (exit status 2),
    duplicates, train/eval leakage, token lengths against max_seq_length, and one
    rendered example with the trained tokens marked. With --recipe, FILES replace
    the recipe's data.train (leave them out to check the recipe's own data).

    \b
    Examples:
      quicktune data check --recipe smollm2-demo
      quicktune data check my.jsonl --recipe llama3.1-8b-qlora --set model.max_seq_length=4096
      quicktune data check my.jsonl --eval held-out.jsonl --json
      quicktune data check my.jsonl --eval held-out.jsonl --semantic-threshold 0.85
      quicktune data check "hf://yahma/alpaca-cleaned?limit=2000"
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


@data.command("synth")
@click.argument("seeds", type=click.Path(dir_okay=False), metavar="SEEDS")
@click.option("--endpoint", "url", required=True, metavar="URL",
              help="OpenAI-compatible base URL of the stronger model (ending in /v1).")
@click.option("--model", required=True, metavar="NAME", help="The model name the endpoint serves.")
@click.option("-n", "--n", "count", required=True, type=click.IntRange(1), metavar="N",
              help="Rows OUT.jsonl should hold in all (rows from an earlier run count).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="OUT.jsonl",
              help="Where the new rows go, appended one by one; run again to continue it.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), metavar="K",
              help="Requests in flight at once.")
@click.option("--eval", "eval_files", multiple=True, type=click.Path(dir_okay=False),
              help="Held-out file(s): a new row asking what one of their rows asks is rejected "
              "(default: the recipe's data.eval).")
@click.option("-r", "--recipe", help="Recipe whose tokenizer and max_seq_length bound a row's length, and whose "
              "data.train/data.eval rows are checked against too.")
@click.option("--api-key-env", "key_env", metavar="VAR",
              help="Environment variable holding the API key (default OPENAI_API_KEY; a local server needs none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Picks the seed rows shown per row.")
@click.option("--temperature", default=0.9, show_default=True, type=click.FloatRange(0, 2, min_open=True))
@click.option("--max-tokens", default=1024, show_default=True, type=click.IntRange(16), help="Longest reply.")
@click.option("--max-tries", type=click.IntRange(1), help="Requests this run at most (default: 3 per row wanted).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(0.1), metavar="SECONDS",
              help="Seconds to wait for one reply.")
def data_synth(seeds: str, url: str, model: str, count: int, output: str, concurrency: int,
               eval_files: tuple[str, ...], recipe: str | None, key_env: str | None, seed: int, temperature: float,
               max_tokens: int, max_tries: int | None, timeout: float) -> None:
    """Write new examples like the SEEDS rows, in their format, with a stronger model.

    \b
    Each new row is asked of the endpoint with a few seed rows as examples, then
    checked like `data check` checks data: it must parse in the seeds' format, fit
    (the recipe's max_seq_length in tokens; without --recipe 8192 characters),
    and be neither a duplicate nor a near duplicate of a seed, a training row or
    a row already kept, nor leak an eval row. Rejected rows, with the reason, go
    to OUT.rejected.jsonl; the lineage (URL, model, seeds sha256, counts; never
    the key) to OUT.jsonl.synth.json. Ctrl-C (exit 130) or a failure keeps every
    row written; the same command again continues where it stopped.

    \b
    Examples:
      quicktune data synth my.jsonl --endpoint http://localhost:11434/v1 --model qwen2.5:14b -n 200 -o more.jsonl
      quicktune data synth my.jsonl --endpoint https://api.openai.com/v1 --model gpt-4o-mini \\
          --api-key-env OPENAI_API_KEY -n 500 -o more.jsonl --eval held-out.jsonl --recipe smollm2-demo
    """
    from quicktune.synth import synth_command

    synth_command(seeds, output, url=url, model=model, count=count, concurrency=concurrency,
                  eval_paths=tuple(eval_files), recipe_ref=recipe, key_env=key_env, seed=seed,
                  temperature=temperature, max_tokens=max_tokens, max_tries=max_tries, timeout=timeout)


@data.command("accept")
@click.argument("review", type=click.Path(dir_okay=False), metavar="REVIEW.jsonl")
@click.option("--into", required=True, type=click.Path(dir_okay=False), metavar="CORRECTIONS.jsonl",
              help="The training file the accepted rows are appended to (made when missing).")
@click.option("--eval", "eval_files", multiple=True, type=click.Path(dir_okay=False),
              help="The eval file(s) runs are compared on: a row asking what one of their rows asks is refused "
              "(default: the recipe's data.eval).")
@click.option("-r", "--recipe", help="Recipe whose data.eval rows are checked against (and whose data.format and "
              "data.system_prompt read them).")
def data_accept(review: str, into: str, eval_files: tuple[str, ...], recipe: str | None) -> None:
    """Turn a reviewed file (from `quicktune eval --review`) into training rows.

    \b
    A row is taken when "accept" is true, or when it is null and "corrected" was
    edited; "accept": false drops it; rows left as written are counted as
    unreviewed. Each taken row becomes {"messages": [...prompt..., {"role":
    "assistant", "content": corrected}]} in CORRECTIONS.jsonl, unless the same row
    is already there, or it asks what a row of the eval file asks (refused, with
    its line: training on it would inflate the scores). A broken line: exit
    status 2, nothing written.

    \b
    Examples:
      quicktune data accept review.jsonl --into corrections.jsonl -r smollm2-demo
      quicktune data accept review.jsonl --into corrections.jsonl --eval held-out.jsonl
      quicktune train smollm2-demo --from v1 --add-data corrections.jsonl   # the next run
    """
    from quicktune.console import print_accept_summary
    from quicktune.data.accept import accept_reviewed

    print_accept_summary(accept_reviewed(Path(review), Path(into), eval_files=list(eval_files), recipe_ref=recipe))


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
    func = click.option(
        "--add-data", "add_data", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
        help="Also train on FILE (appended to the recipe's data.train for this run; repeatable), e.g. the "
        "corrections `quicktune data accept` wrote. The manifest records what it added since --from's run.",
    )(func)
    func = RUNS_OPTION(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.argument("recipe")(func)


@main.command()
@_training_command
def train(recipe: str, overrides: tuple[str, ...], runs_dir: str, parent: str | None, dry_run: bool,
          allow_data_change: bool, new_run: bool, gpus: int | None, add_data: tuple[str, ...] = ()) -> None:
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
      quicktune train smollm2-demo --from v1 --add-data corrections.jsonl  # v1 + reviewed answers
    """
    from quicktune.workflow import train_command

    overrides = _with_added_data(recipe, _with_gpus(overrides, gpus), add_data)
    _exit_if_interrupted(train_command(recipe, overrides, runs_dir, parent, dry_run,
                                       allow_data_change=allow_data_change, new_run=new_run))


def _with_added_data(recipe: str, overrides: list[str], add_data: tuple[str, ...]) -> list[str]:
    """--add-data FILE is data.train=[the recipe's files..., FILE]: recorded like any other key."""
    from quicktune.recipe import with_added_train_files

    return with_added_train_files(recipe, overrides, list(add_data))


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
        allow_data_change: bool, new_run: bool, gpus: int | None, force: bool, add_data: tuple[str, ...] = ()) -> None:
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

    overrides = _with_added_data(recipe, _with_gpus(overrides, gpus), add_data)
    _exit_if_interrupted(run_command(recipe, overrides, runs_dir, parent, dry_run, force,
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


@main.command()
@click.argument("target", metavar="RUN|GGUF")
@click.option(
    "-q", "--quant", type=QUANT_CHOICE, help="Which exported GGUF of RUN; default: the best one you asked for.",
)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only, 0.0.0.0 every network.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--name", help="The model name clients send; default: the run's Ollama name (recipe-vN:quant), "
              "or the GGUF's file name without .gguf.")
@click.option("--ctx", "num_ctx", type=click.IntRange(64), help="Context in tokens; default: the Modelfile's num_ctx.")
@RUNS_OPTION
def serve(
    target: str, quant: str | None, host: str, port: int, name: str | None, num_ctx: int | None, runs_dir: str,
) -> None:
    """Serve an exported model through an OpenAI-compatible API (llama.cpp), until Ctrl-C.

    \b
    Answers as `quicktune eval --gguf` reads the GGUF: the trained chat template and
    stop tokens, the Modelfile's system prompt for requests that send none (as Ollama
    does), its temperature and top_p when a request leaves them out, no repeat penalty,
    and every prompt read afresh, so the same greedy request gets the same answer.
    Any client of the OpenAI API works: base URL http://HOST:PORT/v1, the model NAME.
    A GGUF no run exported is served with its own chat template and stop tokens.

    \b
    Examples:
      quicktune serve runs/smollm2-demo/v1
      quicktune serve smollm2-demo/v1 --port 8081 --name demo
      quicktune eval smollm2-demo/v1 --endpoint http://127.0.0.1:8080/v1 --model smollm2-demo-v1:q4_k_m
      quicktune serve model.gguf --host 0.0.0.0
    """
    from quicktune.workflow import serve_command

    serve_command(target, quant, host, port, name, num_ctx, runs_dir)


@main.group("runs", invoke_without_command=True)
@RUNS_OPTION
@click.pass_context
def runs_group(ctx: click.Context, runs_dir: str) -> None:
    """List runs with their status and key metrics (or `runs compare A B`, `runs promote RUN`, `runs history`)."""
    ctx.obj = runs_dir
    if ctx.invoked_subcommand is None:
        from pathlib import Path

        from quicktune.console import print_runs
        from quicktune.runs import list_runs

        print_runs(list_runs(Path(runs_dir)), Path(runs_dir))


def _pass_runs_dir(func):
    """A ``runs`` subcommand's first argument: its own ``--runs-dir`` (where users type it, after the
    subcommand) or else the group's (``runs --runs-dir X compare``, QUICKTUNE_RUNS, ``runs``)."""
    @click.option("--runs-dir", "own_runs_dir", type=click.Path(file_okay=False), default=None,
                  help="Where run folders are (default: the `runs --runs-dir` value, $QUICKTUNE_RUNS, or runs).")
    @click.pass_obj
    def with_runs_dir(group_runs_dir: str, *args, own_runs_dir: str | None = None, **kwargs):
        return func(own_runs_dir or group_runs_dir, *args, **kwargs)

    with_runs_dir.__name__, with_runs_dir.__doc__ = func.__name__, func.__doc__
    return with_runs_dir


THRESHOLD_OPTION = click.option(
    "--threshold", type=click.FloatRange(0), metavar="POINTS",
    help="Mark a metric that fell by more than POINTS percentage points (the loss: rose by more than POINTS %) "
    "as a regression. Default 2: a little more than one row of 60.",
)


@runs_group.command("compare")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@THRESHOLD_OPTION
@_pass_runs_dir
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


@runs_group.command("promote")
@click.argument("run_ref", metavar="RUN")
@click.option("--as", "name", metavar="NAME", help="The Ollama model name (default: the recipe's name): NAME:vN and "
              "NAME:latest. Lower-case letters, digits, '-', '_', '.'.")
@click.option("--force", is_flag=True, help="Promote although the checks refuse it (needs --reason).")
@click.option("--reason", metavar="TEXT", help="Why: recorded in the history (required with --force).")
@click.option("--no-ollama", is_flag=True, help="Record the promotion without creating the Ollama tags.")
@_pass_runs_dir
def runs_promote(runs_dir: str, run_ref: str, name: str | None, force: bool, reason: str | None,
                 no_ollama: bool) -> None:
    """Make RUN the version in use: checked, tagged in Ollama, recorded.

    \b
    RUN must be finished, exported (`quicktune export RUN`) and scored (`quicktune eval RUN`).
    It is refused when it is worse than the version promoted now on an eval metric of the same
    held-out rows (as `runs compare` marks ▼); the table shows what got worse. With ollama on
    PATH it runs, in the run's export folder:
      ollama create NAME:vN -f Modelfile.<quant>
      ollama cp NAME:vN NAME:latest
    and checks both with `ollama show`; without it, it prints those commands. Each promotion is
    recorded in runs/<recipe>/promotions.jsonl (`quicktune runs history`). `promoted` (and
    `promoted~1`, the one before) then name that run in every command: chat, eval --against,
    serve, export, train --from.

    \b
    Examples:
      quicktune runs promote v3
      quicktune runs promote smollm2-demo/v4 --as invoice-extractor
      quicktune runs promote v5 --force --reason "fixes dates; one row worse on tone"
      quicktune chat promoted
    """
    from quicktune.workflow import promote_command

    promote_command(run_ref, runs_dir, name, force, reason, no_ollama)


@runs_group.command("rollback")
@click.argument("recipe", required=False)
@click.option("--reason", metavar="TEXT", help="Why: recorded in the history.")
@click.option("--no-ollama", is_flag=True, help="Record the rollback without re-pointing NAME:latest in Ollama.")
@_pass_runs_dir
def runs_rollback(runs_dir: str, recipe: str | None, reason: str | None, no_ollama: bool) -> None:
    """Go back to the version promoted before the current one (no checks: it passed them once).

    \b
    Points NAME:latest at NAME:vPrev again (`ollama cp`; `ollama create` first if Ollama lost
    NAME:vPrev) and records the rollback in the history. RECIPE may be left out when the runs
    folder holds one recipe.

    \b
    Examples:
      quicktune runs rollback
      quicktune runs rollback smollm2-demo --reason "v4 answers in French"
    """
    from quicktune.workflow import rollback_command

    rollback_command(recipe, runs_dir, no_ollama, reason)


@runs_group.command("history")
@click.argument("recipe", required=False)
@_pass_runs_dir
def runs_history(runs_dir: str, recipe: str | None) -> None:
    """Every promotion and rollback: when, who, why, what was compared, the Ollama tags.

    \b
    Examples:
      quicktune runs history
      quicktune runs history smollm2-demo
    """
    from quicktune.workflow import history_command

    history_command(recipe, runs_dir)


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
    "--judge-endpoint", metavar="URL",
    help="Instead of --judge: a judge model behind an OpenAI-compatible server (base URL ending in /v1).",
)
@click.option("--judge-model", metavar="NAME", help="The judge's model name at --judge-endpoint.")
@click.option(
    "--review", metavar="OUT.jsonl", type=click.Path(dir_okay=False),
    help="Write the rows the run got wrong (by the recipe's eval.metric) to OUT.jsonl, its answer beside the "
    "expected one, to correct and accept (then `quicktune data accept`).",
)
@click.option("--review-all", is_flag=True, help="With --review: write every row, right or wrong.")
@click.option(
    "--no-cache", is_flag=True,
    help="Ask every model again instead of reusing the answers an earlier eval kept (the run's in RUN/eval/answers/, "
    "the base model's in ~/.cache/quicktune/eval-answers/); the new answers replace them.",
)
@click.option("--force", is_flag=True, help="With --review: replace OUT.jsonl when it exists.")
@click.option(
    "--judge-api-key-env", metavar="VAR", help="Environment variable holding --judge-endpoint's API key "
    "[default: OPENAI_API_KEY, when set].",
)
@click.option(
    "--endpoint", metavar="URL",
    help="Also score the model as a server serves it (OpenAI-compatible base URL: http://localhost:11434/v1 for "
    "Ollama) and compare its answers with the run's exported GGUF.",
)
@click.option(
    "--model", "endpoint_model", metavar="NAME", help="The served model's name at --endpoint (Ollama: name:tag).",
)
@click.option(
    "--api-key-env", metavar="VAR",
    help="Environment variable holding --endpoint's API key [default: OPENAI_API_KEY, when set].",
)
@click.option(
    "--with-system", is_flag=True,
    help="Send the run's system prompt with each request to --endpoint (vLLM, hosted APIs: no Modelfile SYSTEM).",
)
@click.option(
    "--concurrency", type=click.IntRange(1), default=1, show_default=True,
    help="Requests at a time to --endpoint and --judge-endpoint (1 keeps a single-slot server's answers greedy).",
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
    runs_dir: str, judge_endpoint: str | None = None, judge_model: str | None = None,
    judge_api_key_env: str | None = None, endpoint: str | None = None, endpoint_model: str | None = None,
    api_key_env: str | None = None, with_system: bool = False, concurrency: int = 1, review: str | None = None,
    review_all: bool = False, force: bool = False, no_cache: bool = False,
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
    Each model's answers are kept (the run's in RUN/eval/answers/, the base
    model's in the user cache) and reused while its files, the prompts, the
    answer budget and the library versions stay the same: the report says
    "N of N answers from the cache". --no-cache asks again. Served (--endpoint)
    answers and the judge's verdicts are never kept.

    \b
    Was fine-tuning worth it?
      --against fewshot[:K]  base, the base prompted with K training examples, and RUN
                             side by side, with what the longer prompt costs in tokens
      --probe general        what RUN lost elsewhere: 40 probes with exact answers
                             (arithmetic, formatting, copying, counting, reasoning);
                             names the probes that dropped (eval/probes-general-*.json)
      --judge MODEL.gguf     a local judge model compares the two answers of each row
                             with a written rubric, in both orders: win / tie / loss
      --judge-endpoint URL --judge-model NAME
                             the same, asked of a model behind a server; a judge that
                             mostly names one position is flagged as unreliable

    \b
    Is the served model the one you trained?
      --endpoint URL --model NAME
                             the model as Ollama, quicktune serve, llama-server or
                             vLLM serves it, scored like the others, and how often it
                             answers as the exported GGUF does (first difference shown).
                             The server adds the system prompt (Modelfile SYSTEM);
                             --with-system sends it instead. Keys come from the
                             environment (--api-key-env VAR), never the command line.

    \b
    Correct what it got wrong (the next run learns it):
      --review OUT.jsonl     the rows RUN got wrong (by eval.metric; --review-all:
                             every row), each with model_answer, expected and a
                             "corrected" copy to edit; set "accept": true, then
                             `quicktune data accept OUT.jsonl --into corrections.jsonl`

    \b
    Examples:
      quicktune eval runs/smollm2-demo/v1
      quicktune eval runs/smollm2-demo/v2 --against v1 --limit 20
      quicktune eval runs/smollm2-demo/v1 --gguf q4_k_m     # what quantization cost
      quicktune eval runs/smollm2-demo/v1 --data my-held-out.jsonl
      quicktune eval runs/smollm2-demo/v1 --against fewshot:5
      quicktune eval runs/smollm2-demo/v1 --probe general
      quicktune eval runs/smollm2-demo/v1 --judge ~/models/judge.gguf --limit 20
      quicktune eval runs/smollm2-demo/v1 --endpoint http://localhost:11434/v1 --model smollm2-demo-v1
      quicktune eval runs/smollm2-demo/v1 --judge-endpoint http://localhost:11434/v1 --judge-model qwen2.5:7b
      quicktune eval runs/smollm2-demo/v1 --json > report.json
      quicktune eval runs/smollm2-demo/v1 --data feedback.jsonl --review review.jsonl --against none
    """
    from quicktune.workflow import eval_command

    report = eval_command(
        run_ref, against, list(data_files), limit, gguf, max_new_tokens, runs_dir, judge=judge, probe=probe,
        threshold=threshold, as_json=as_json,
        endpoints=dict(endpoint=endpoint, model=endpoint_model, api_key_env=api_key_env, with_system=with_system,
                       concurrency=concurrency, judge_endpoint=judge_endpoint, judge_model=judge_model,
                       judge_api_key_env=judge_api_key_env),
        review=review, review_all=review_all, force=force, fresh=no_cache,
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
@click.option(
    "--measure", is_flag=True,
    help="Time a few real training steps of RECIPE on this machine (in a temporary folder, deleted afterwards) "
    "and take the time from them.",
)
@click.option(
    "--measure-steps", type=click.IntRange(1), default=4, show_default=True,
    help="Steps --measure times, after one warm-up step.",
)
def plan(
    recipe: str, gpu: str | None, vram: float | None, overrides: tuple[str, ...], measure: bool, measure_steps: int
) -> None:
    """Estimate peak VRAM, disk and time for RECIPE, without loading anything.

    \b
    Splits peak VRAM into weights, LoRA + optimizer state, activations, logits and
    CUDA runtime, says whether it fits, and if not the nearest settings that do.
    Exit status 1 when it does not fit. A CPU recipe (its hardware line says CPU,
    e.g. smollm2-demo) is planned for the CPU unless --gpu or --vram is given.
    The time is per epoch and for the run as configured (training.max_steps, else
    its epochs). With --measure it comes from real steps timed on this machine
    (the model loads and trains; nothing is kept); without, from a scaled reference
    (CPU) or the card's throughput (GPU). Constants and their sources: quicktune/plan.py.

    \b
    Examples:
      quicktune plan llama3.1-8b-qlora
      quicktune plan llama3.1-8b-qlora --gpu "RTX 3060"
      quicktune plan llama3.1-8b-qlora --set method=lora --set model.load_in_4bit=false --set model.max_seq_length=8192
      quicktune plan smollm2-demo --measure
    """
    from quicktune.console import print_plan
    from quicktune.hubref import is_hub_ref
    from quicktune.plan import make_plan
    from quicktune.recipe import load_recipe

    loaded = load_recipe(recipe, list(overrides))
    rows = tokens = None
    if any(is_hub_ref(entry) for entry in loaded.data.train):  # its rows are counted: read from the Hub cache
        from quicktune.data.load import data_size

        rows, tokens = data_size(loaded.data.train)
    measured = None
    if measure:
        if gpu:
            from quicktune.errors import QuicktuneError

            raise QuicktuneError("--measure times this machine, --gpu plans another card: give one of them",
                                 hint="Run `plan --measure` on the machine that will train.")
        from quicktune.console import console
        from quicktune.train.measure import measure_steps as time_steps

        measured = time_steps(loaded, measure_steps, say=console.print)
    result = make_plan(loaded, gpu=gpu, vram=vram, tokens=tokens, prompts=rows, measured=measured)
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
    Serves on 127.0.0.1 only unless --host says otherwise, and prints the URL
    with a key made at each start: opening it signs the browser in (a cookie);
    anything without the key is refused. Pages:
    every run with its lineage (★ the promoted version); one run (live curves,
    manifest, the data check's rendered example, fidelity table, Modelfiles, a
    Promote button); two runs compared; the promotion history; a chat with
    exported GGUFs (llama.cpp), two models side by side. It reads the runs folder
    and writes one thing only: a promotion, through the same checks as `quicktune
    runs promote` (accepted from its own page only). Everything it shows ships
    inside the package (works offline).

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
