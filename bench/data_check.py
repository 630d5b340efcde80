"""How long ``quicktune data check`` takes on a large chat data set, and what it found.

Generates N chat rows (OpenAI messages JSONL) deterministically, with known numbers
of planted exact duplicates, near duplicates (one small edit) and eval rows whose
prompt leaks from train. Then times the real command end to end, as a child process:

    quicktune data check TRAIN --eval EVAL --recipe smollm2-demo --json

once with an empty tokenizer cache (cold: the recipe's GGUF tokenizer is converted),
once with the cache that run filled (warm), and once more warm with the opt-in semantic
check (``--semantic-threshold 0.85``). ``--before DIR`` also times an older quicktune tree
(warm), right before the warm run, so before and after share the machine's load. The floor it is compared with is a
child Python that only reads and ``json.loads`` every line of the same files.
Each child's wall time and its own CPU time and peak RSS (from ``os.wait4``) are
reported; the counts in the JSON report are shown next to what was planted.

    .venv/bin/python bench/data_check.py [--rows 100000] [--profile]

Writes bench/results/data_check.json. ``--profile`` skips the timed runs and instead
runs the same check in-process (warm cache) under cProfile, prints the top 15
functions by cumulative time, and writes bench/results/data_check_profile.json plus
the full profile, bench/results/data_check.prof.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROWS_TARGET = (100_000, 20.0)  # from the issue: 100k rows in at most 20 s on 2 cores
RESULTS = Path(__file__).resolve().parent / "results"

SYSTEM_PROMPTS = (
    "You are a patient assistant who gives practical household advice.",
    "You are a helpful expert. Answer in a few clear sentences.",
    "You help people look after the things they own. Be concrete and brief.",
    "You are a friendly repair-shop assistant. Give step-by-step advice.",
)
THINGS = (
    "sourdough starter", "cast iron pan", "bike chain", "tomato seedlings", "wifi router", "laptop battery",
    "wool sweater", "pair of leather boots", "espresso machine", "fiddle-leaf fig", "vegetable bed", "chef's knife",
    "camping tent", "rain jacket", "car headlight", "bathroom grout", "wooden cutting board", "aquarium filter",
    "set of guitar strings", "pair of running shoes", "compost heap", "phone screen", "washing machine",
    "herb planter", "dishwasher", "ceiling fan", "inkjet printer", "mechanical keyboard", "down sleeping bag",
    "sewing machine", "air fryer", "window screen", "petrol lawn mower", "loaf of rye bread", "burr coffee grinder",
    "yoga mat", "baby stroller", "pair of ski goggles", "hiking backpack", "electric kettle", "set of paint brushes",
    "sea kayak", "tropical fish tank", "sofa cushion", "fridge-freezer", "garage door", "string of solar lights",
    "bird feeder", "snow shovel", "pressure cooker", "vinyl record collection", "bread machine", "e-bike battery",
)
ACTIONS = (
    "clean", "store", "fix", "set up", "maintain", "choose", "repair", "protect", "dry out", "organise", "test",
    "replace", "upgrade", "look after", "inspect", "pack", "descale", "sharpen", "waterproof", "disinfect",
    "restore", "tune", "insulate", "label", "move",
)
CONTEXTS = (
    "before a long trip", "on a tight budget", "in a small apartment", "during a cold winter",
    "in a humid climate", "without special tools", "for the first time", "after a flood", "while travelling",
    "in under an hour", "with two toddlers around", "without spending much", "after years of neglect",
    "in a rented flat", "when it's really hot outside", "at high altitude", "before guests arrive",
    "on a weekday evening", "in a shared house", "without a car", "with only hand tools",
    "when the instructions are missing", "so it lasts another ten years", "in a dusty workshop",
)
PERSONS = (
    "a complete beginner", "my teenage son", "my grandmother", "a busy parent", "someone with bad eyesight",
    "a first-year student", "my neighbour", "a retired teacher", "a nervous first-timer", "my business partner",
    "a ten-year-old", "my flatmate", "my dad, who hates manuals", "a volunteer at our club",
)
PROBLEMS = (
    "keeps making a clicking noise", "smells strange", "stopped working after we moved", "looks dull and worn",
    "leaves streaks everywhere", "is much slower than it used to be", "gets mouldy within a week",
    "won't stay dry", "has a crack along one side", "feels sticky", "keeps tipping over",
    "turns itself on and off", "is covered in rust spots", "makes everything taste metallic",
    "drains really slowly", "overheats after ten minutes", "rattles when the wind picks up",
)
QUESTIONS = (
    "What's the best way to {action} a {thing} {context}?",
    "How should I {action} my {thing} {context}?",
    "My {thing} {problem}. What should I do {context}?",
    "Can you explain how to {action} a {thing} to {person}?",
    "Is it worth trying to {action} an old {thing} {context}, or should I just buy a new one?",
    "I need to {action} the {thing} {context}. Where do I start?",
    "Why does my {thing} {problem}, and how do I {action} it properly?",
    "Could you give {person} a checklist to {action} a {thing} {context}?",
    "What mistakes do people make when they {action} a {thing} {context}?",
    "How often should you {action} a {thing}, especially {context}?",
    "Our {thing} {problem}. Is that normal, and should I {action} it?",
    "Any tips to help {person} {action} a {thing} {context}?",
)
PLACES = (
    "in a tiny studio", "near the coast", "up in the mountains", "in the city centre", "on a sheep farm",
    "in a basement flat", "next to a busy road", "on the fifth floor with no lift", "in an old farmhouse",
    "on a narrowboat", "in a new-build terrace", "above a bakery",
)
CONSTRAINTS = (
    "space is tight", "everything gets damp", "the water is very hard", "it gets dusty fast",
    "I can't make much noise", "the nearest hardware shop is an hour away", "the heating is unreliable",
    "we have a curious cat", "the power cuts out now and then", "there's no outdoor tap",
)
OUTCOMES = (
    "it went badly", "it only half worked", "I gave up halfway", "it was fine for a while",
    "I made a real mess", "it got worse", "nothing changed at all", "I broke a small clip",
)
UNITS = ("days", "weeks", "months", "years")
DETAILS = (
    "I live {place}, so {constraint}, and I've had it for about {n} {unit}.",
    "Last time I tried it took {n} {unit} and {outcome}; also {constraint}.",
    "For context, I live {place} and {constraint}. I've owned it {n} {unit}.",
    "I asked {helper} to help last time but {outcome}, and we live {place}. That was {n} {unit} ago.",
)
CONDITIONS = (
    "second-hand", "brand-new", "hand-me-down", "refurbished", "thirty-year-old", "cheap supermarket",
    "mid-range", "borrowed", "ex-display", "very basic",
)
SOURCES = (
    "from a car boot sale", "online", "from my aunt", "as a wedding present", "at a charity shop",
    "from the local market", "in a closing-down sale", "from a colleague", "with my first pay cheque",
    "on holiday", "from a neighbour who moved away", "at an auction",
)
ASIDES = (
    "It's a {condition} one I got {source}.",
    "Mine is {condition}; I got it {source}.",
    "Ours was {condition}, picked up {source}.",
)
OPENERS = ("", "Good question. ", "Happy to help. ", "That's a common problem. ", "Sure. ", "Let's sort it out. ")
STEPS = (
    "unplugging it and letting it cool down", "wiping it with a damp microfibre cloth",
    "checking the manual for the exact model number", "rinsing it with warm, not hot, water",
    "letting it dry completely overnight", "tightening any loose screws by hand",
    "using a soft brush to lift the dust out", "soaking the removable parts in diluted vinegar",
    "applying a very thin layer of oil", "keeping it somewhere cool and dry", "checking the seals for cracks",
    "replacing the filter or the worn pad", "taking a photo before you take anything apart",
    "labelling each part as you remove it", "running a short test cycle", "measuring twice before you cut",
    "putting on gloves and opening a window", "using a mild, unscented soap", "setting a monthly phone reminder",
    "laying everything out on an old towel", "checking the cable and plug for damage",
    "looking for a serial number sticker", "moving it away from the radiator", "clearing the vents with a straw",
)
REASONS = (
    "trapped moisture causes most of the damage", "small problems get expensive if you ignore them",
    "the warranty often depends on it", "it saves you time in the long run", "dust builds up faster than you think",
    "the parts wear unevenly otherwise", "heat is what shortens its life", "it is much harder to fix once it rusts",
)
MISTAKES = (
    "using too much force", "skipping the drying step", "buying the cheapest replacement part", "using bleach",
    "doing everything in one go", "ignoring the first warning signs", "storing it while it's still damp",
    "over-tightening the fittings",
)
FALLBACKS = (
    "it's worth calling a professional", "check whether it's still under warranty",
    "ask at a local repair café", "replace the worn part rather than the whole thing",
    "contact the manufacturer's support line", "post a photo on a repair forum",
)
THANKS = (" Thanks!", " Thanks in advance.", " Cheers.", " Any help appreciated.")


class RowMaker:
    """Chat rows built from the word lists; ``random.Random(seed)`` makes them repeatable."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: tuple[str, ...]) -> str:
        return self.rng.choice(options)

    def prompt(self) -> str:
        rng, pick = self.rng, self.pick
        slots = dict(
            thing=pick(THINGS), action=pick(ACTIONS), context=pick(CONTEXTS), person=pick(PERSONS),
            problem=pick(PROBLEMS), place=pick(PLACES), constraint=pick(CONSTRAINTS), outcome=pick(OUTCOMES),
            n=rng.randint(2, 40), unit=pick(UNITS), helper=pick(PERSONS), condition=pick(CONDITIONS),
            source=pick(SOURCES),
        )
        sentences = [pick(QUESTIONS).format(**slots), pick(DETAILS).format(**slots), pick(ASIDES).format(**slots)]
        return " ".join(sentences)

    def answer(self, thing: str | None = None) -> str:
        rng, pick = self.rng, self.pick
        steps = rng.sample(STEPS, 3)
        parts = [f"{pick(OPENERS)}For a {thing or pick(THINGS)}, start by {steps[0]}, then {steps[1]}."]
        if rng.random() < 0.7:
            parts.append(f"After that, try {steps[2]}; this matters because {pick(REASONS)}.")
        if rng.random() < 0.6:
            parts.append(f"A common mistake is {pick(MISTAKES)}.")
        parts.append(
            f"Expect it to take about {rng.randint(5, 90)} minutes. If nothing improves after "
            f"{rng.randint(2, 14)} days, {pick(FALLBACKS)}."
        )
        return " ".join(parts)

    def row(self, prompt: str | None = None) -> dict:
        prompt = prompt or self.prompt()
        thing = next((t for t in THINGS if t in prompt), None)
        return messages_row(self.pick(SYSTEM_PROMPTS), prompt, self.answer(thing))

    def small_edit(self, text: str) -> str:
        """A typo (two letters swapped in one word) or a short thank-you added: a near duplicate."""
        if self.rng.random() < 0.5:
            return text + self.pick(THANKS)
        words = text.split(" ")
        # (word, position) pairs whose two letters differ: swapping equal letters would change nothing
        spots = [
            (i, at)
            for i, w in enumerate(words)
            if len(w) >= 5 and w.isalpha()
            for at in range(1, len(w) - 2)
            if w[at] != w[at + 1]
        ]
        i, at = self.rng.choice(spots)
        word = words[i]
        words[i] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        return " ".join(words)


def messages_row(system: str, user: str, assistant: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def content(row: dict, role: str) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == role)


@dataclass
class Planted:
    exact_duplicates: int = 0
    near_duplicates: int = 0
    leaked_exact: int = 0
    leaked_near: int = 0


def generate(rows: int, eval_rows: int, seed: int) -> tuple[list[dict], list[dict], Planted]:
    """Train rows (1% exact and 1% near duplicates of distinct originals) and eval rows (5% leak)."""
    maker = RowMaker(seed)
    exact, near = rows // 100, rows // 100
    leaked = eval_rows // 20
    originals = [maker.row() for _ in range(rows - exact - near)]
    # Every planted copy has its own original, so each one makes exactly one pair.
    sources = maker.rng.sample(range(len(originals)), exact + near + leaked)
    train = list(originals)
    train += [json.loads(json.dumps(originals[i])) for i in sources[:exact]]
    for i in sources[exact : exact + near]:
        row = json.loads(json.dumps(originals[i]))
        role = maker.pick(("user", "assistant"))
        for message in row["messages"]:
            if message["role"] == role:
                message["content"] = maker.small_edit(message["content"])
        train.append(row)
    maker.rng.shuffle(train)

    evaluation = [maker.row() for _ in range(eval_rows - leaked)]
    leak_sources = sources[exact + near :]
    for k, i in enumerate(leak_sources):  # same question (half of them with a small edit), a new answer
        prompt = content(originals[i], "user")
        evaluation.append(maker.row(prompt if k % 2 == 0 else maker.small_edit(prompt)))
    maker.rng.shuffle(evaluation)
    planted = Planted(exact, near, (leaked + 1) // 2, leaked // 2)
    return train, evaluation, planted


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@dataclass
class ChildRun:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str


def run_child(argv: list[str], env: dict[str, str]) -> ChildRun:
    """Wall time plus this child's own CPU time and peak RSS (``wait4``, not the cumulative RUSAGE_CHILDREN)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {child.returncode}:\n{err.read().decode(errors='replace')}")
        # ru_maxrss is in KiB on Linux
        return ChildRun(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode())


_READ_FLOOR = """
import json, sys, time
start, rows = time.perf_counter(), 0
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                json.loads(line)
                rows += 1
print(json.dumps({"rows": rows, "loop_s": time.perf_counter() - start}))
"""


def console_script() -> str:
    script = Path(sys.executable).parent / "quicktune"  # not resolved: a venv's python is a symlink
    if not script.is_file():
        sys.exit(f"no quicktune console script next to {sys.executable}; run `pip install -e .` in that environment")
    return str(script)


def require_recipe(script: str, recipe: str) -> None:
    shown = subprocess.run([script, "recipes", "show", recipe], capture_output=True, text=True)
    if shown.returncode != 0:
        sys.exit(f"recipe {recipe!r} is not available (`quicktune recipes show {recipe}`):\n{shown.stderr.strip()}")


_FILL_CACHE = """
import sys
from quicktune.data.tokenizer import load_chat_tokenizer
from quicktune.recipe import load_recipe
model = load_recipe(sys.argv[1]).model
load_chat_tokenizer(model.base, chat_template=model.chat_template, revision=model.revision)
"""


def profile_in_process(files: Files, recipe: str) -> dict:
    """One warm-cache ``check_data`` under cProfile; the cache is filled first, in a child process,
    so neither the GGUF conversion nor transformers' import lands in the profile."""
    filled = run_child([sys.executable, "-c", _FILL_CACHE, recipe], files.env)
    print(f"tokenizer cache filled in a child process: {filled.wall_s:.1f} s")
    os.environ["QUICKTUNE_CACHE"] = files.env["QUICKTUNE_CACHE"]
    from quicktune.data.check import check_data

    profiler = cProfile.Profile()
    start = time.perf_counter()
    report = profiler.runcall(check_data, [str(files.train)], recipe_ref=recipe, eval_files=[str(files.evaluation)])
    wall = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "data_check.prof"
    profiler.dump_stats(saved)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(15)
    top = text.getvalue().strip()
    print(f"in-process check_data under cProfile (warm cache): {wall:.2f} s, profiler overhead included")
    print(
        f"reported: {report.exact_duplicates:,} exact duplicates, {report.near_duplicates:,} near, "
        f"{report.leakage:,} leaking eval rows, {report.train_rows:,} train rows kept"
    )
    print(f"full profile: {saved} (read it with: python -m pstats {saved})\n")
    print(top)
    return {"wall_s_with_profiler": wall, "top15_cumulative": top, "prof_file": str(saved)}


def token_line(stats: dict | None) -> str:
    if not stats:
        return "none"
    return (
        f"rows {stats['rows']:,}, total {stats['total_tokens']:,}, trained {stats['trained_tokens']:,}; "
        f"length min {stats['min']} / mean {stats['mean']} / p50 {stats['p50']} / p95 {stats['p95']} / "
        f"max {stats['max']} (max_seq_length {stats['max_seq_length']}); truncated {stats['truncated_rows']}, "
        f"without stop token {stats['rows_without_stop']}"
    )


@dataclass
class Files:
    train: Path
    evaluation: Path
    planted: Planted
    generate_s: float
    size_mb: float
    env: dict[str, str]  # QUICKTUNE_CACHE points at a fresh, empty cache folder


def write_files(train: Path, evaluation: Path, rows: int, eval_rows: int, seed: int) -> Planted:
    train_rows, evaluation_rows, planted = generate(rows, eval_rows, seed)
    write_jsonl(train, train_rows)
    write_jsonl(evaluation, evaluation_rows)
    return planted


def make_files(workdir: Path, rows: int, eval_rows: int, seed: int) -> Files:
    """Generates in a separate process: a child started later inherits this process's peak RSS
    (Linux counts the forked copy's memory before exec), so the rows must never live here."""
    start = time.perf_counter()
    train, evaluation = workdir / "train.jsonl", workdir / "eval.jsonl"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        planted = pool.submit(write_files, train, evaluation, rows, eval_rows, seed).result()
    generate_s = time.perf_counter() - start
    size_mb = (train.stat().st_size + evaluation.stat().st_size) / 1e6
    env = {**os.environ, "QUICKTUNE_CACHE": str(workdir / "cache")}
    return Files(train, evaluation, planted, generate_s, size_mb, env)


def timed_runs(files: Files, args: argparse.Namespace, script: str) -> dict:
    """The floor, then the real command with a cold and then a warm tokenizer cache; prints the tables."""
    command = [script, "data", "check", str(files.train), "--eval", str(files.evaluation)]
    command += ["--recipe", args.recipe, "--json"]
    load_before = os.getloadavg()
    own_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor = run_child([sys.executable, "-c", _READ_FLOOR, str(files.train), str(files.evaluation)], files.env)
    cold = run_child(command, files.env)
    before = None
    if args.before:  # the same command on an older tree (git archive), warm cache, right before "warm"
        # -P: without it `python -m` puts the working directory first on sys.path, and run from the
        # repository root that is today's quicktune, not the older tree (what this script did until 3 Dec 2026).
        tree = Path(args.before).resolve()
        old_env = {**files.env, "PYTHONPATH": str(tree)}
        imported = subprocess.run([sys.executable, "-P", "-c", "import quicktune; print(quicktune.__file__)"],
                                  env=old_env, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(imported).resolve().is_relative_to(tree):
            sys.exit(f"--before {args.before}: python imports quicktune from {imported}, not from that tree")
        before = run_child([sys.executable, "-P", "-m", "quicktune", *command[1:]], old_env)
    warm = run_child(command, files.env)
    semantic = run_child([*command, "--semantic-threshold", "0.85"], files.env)  # the opt-in check, on top
    load_after = os.getloadavg()
    floor_info = json.loads(floor.stdout)
    cold_report, report = json.loads(cold.stdout), json.loads(warm.stdout)
    semantic_report = json.loads(semantic.stdout)
    rows_read = args.rows + args.eval_rows
    planted = files.planted

    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}\n")
    print(f"{'run (one child process each)':<36} {'wall s':>7} {'rows/s':>9} {'CPU s':>7} {'peak RSS MB':>12}")
    runs = {
        "read + json.loads (floor)": floor,
        "quicktune data check, cold cache": cold,
        **({f"before ({args.before}), warm cache": before} if before else {}),
        "quicktune data check, warm cache": warm,
        "warm, --semantic-threshold 0.85": semantic,
    }
    for name, run in runs.items():
        print(
            f"{name:<36} {run.wall_s:>7.2f} {rows_read / run.wall_s:>9,.0f} {run.cpu_s:>7.2f} {run.peak_rss_mb:>12.0f}"
        )
    print(f"(floor: {floor_info['rows']:,} rows parsed; its read loop alone took {floor_info['loop_s']:.2f} s)")
    print(f"(peak RSS includes the {own_rss_mb:.0f} MB this benchmark process had when the child was forked)")
    print(f"warm check / floor: {warm.wall_s / floor.wall_s:.1f}x\n")

    found = {
        "exact duplicates": (planted.exact_duplicates, report["exact_duplicates"]),
        "near duplicates": (planted.near_duplicates, report["near_duplicates"]),
        "eval rows leaking from train": (planted.leaked_exact + planted.leaked_near, report["leakage"]),
        "semantic pairs, 0.85 (none planted)": (0, semantic_report["semantic_duplicates"]),
        "semantic leakage, 0.85 (none planted)": (0, semantic_report["semantic_leakage"]),
        "train rows kept": (args.rows - planted.exact_duplicates, report["train_rows"]),
        "eval rows": (args.eval_rows, report["eval_rows"]),
    }
    print(f"{'what the report says (warm run)':<36} {'planted':>9} {'reported':>9}")
    for name, (expected, reported) in found.items():
        print(f"{name:<36} {expected:>9,} {reported:>9,}")
    print(f"(dedupe setting: {report['dedupe']}; removed {report['removed_duplicates']:,} rows)")
    print(f"train tokens: {token_line(report['train_tokens'])}")
    print(f"eval tokens:  {token_line(report['eval_tokens'])}")
    print(f"cold and warm reports identical: {'yes' if cold_report == report else 'NO'}")
    rows_goal, seconds_goal = ROWS_TARGET
    target = {"rows": rows_goal, "seconds": seconds_goal, "warm_met": None, "cold_met": None}
    if args.rows == rows_goal:  # start-up cost does not scale with rows, so other sizes are not judged
        target.update(warm_met=warm.wall_s <= seconds_goal, cold_met=cold.wall_s <= seconds_goal)
        print(
            f"target: {rows_goal:,} rows <= {seconds_goal:.0f} s: "
            f"warm {'met' if target['warm_met'] else 'NOT met'} ({warm.wall_s:.1f} s), "
            f"cold {'met' if target['cold_met'] else 'NOT met'} ({cold.wall_s:.1f} s)"
        )
    return {
        "command": command,
        "load_average_before_after": [load_before[0], load_after[0]],
        "runs": {name: {k: v for k, v in asdict(run).items() if k != "stdout"} for name, run in runs.items()},
        "floor_loop_s": floor_info["loop_s"],
        "benchmark_process_peak_rss_mb": own_rss_mb,
        "reports_identical": cold_report == report,
        "report": {k: report[k] for k in report if k != "example"},
        "semantic_report": {k: semantic_report[k] for k in semantic_report if k.startswith("semantic")},
        "target": target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="train rows, planted duplicates included")
    parser.add_argument("--eval-rows", type=int, default=2_000, help="eval rows, 5%% of them leaked from train")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--recipe", default="smollm2-demo")
    parser.add_argument(
        "--profile", action="store_true", help="instead of the timed child runs, profile one in-process warm run"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files and cache, print where")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also time an older quicktune: DIR holds its package (git archive HEAD quicktune | tar -x -C DIR)",
    )
    args = parser.parse_args()
    if args.rows < 200 or args.eval_rows < 20:
        parser.error("use at least 200 rows and 20 eval rows, so every kind of planted row exists")

    script = console_script()
    require_recipe(script, args.recipe)
    workdir = Path(tempfile.mkdtemp(prefix="quicktune-bench-"))
    try:
        files = make_files(workdir, args.rows, args.eval_rows, args.seed)
        print(
            f"{args.rows:,} train + {args.eval_rows:,} eval rows ({files.size_mb:.1f} MB JSONL, generated in "
            f"{files.generate_s:.1f} s), recipe {args.recipe}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        )
        result = {
            "benchmark": "data_check_profile" if args.profile else "data_check",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "rows": args.rows,
            "eval_rows": args.eval_rows,
            "seed": args.seed,
            "recipe": args.recipe,
            "jsonl_mb": round(files.size_mb, 1),
            "planted": asdict(files.planted),
        }
        if args.profile:
            result["profile"] = profile_in_process(files, args.recipe)
        else:
            result.update(timed_runs(files, args, script))
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{result['benchmark']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {out}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
