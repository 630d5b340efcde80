"""How long the user waits before ``quicktune`` does anything.

Times ``quicktune --help`` and ``quicktune recipes`` (the venv's console script, as a
user runs it) against ``python -c pass`` on the same interpreter, the floor for any
Python command. Runs are interleaved round-robin so a burst of load on the machine
hits every command alike. Also lists which heavy libraries ``--help`` imports: any
of them would cost seconds, so the expected answer is none.

    .venv/bin/python bench/startup.py [--runs 20]

Prints a table and writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HEAVY = ("torch", "transformers", "trl", "unsloth", "peft", "datasets")
HELP_TARGET_S = 0.15  # from the issue; Unsloth's own CLI --help took 0.27 s on this machine
RESULTS = Path(__file__).resolve().parent / "results"

# Runs quicktune's click entry point in-process, then lists the heavy top-level
# packages that ended up in sys.modules.
_IMPORT_PROBE = """
import json, sys
from quicktune.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = {heavy!r}
print("HEAVY:" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def console_script() -> Path:
    """The ``quicktune`` script of the environment this interpreter belongs to."""
    script = Path(sys.executable).parent / "quicktune"  # not resolved: a venv's python is a symlink
    if not script.is_file():
        sys.exit(f"no quicktune console script next to {sys.executable}; run `pip install -e .` in that environment")
    return script


def time_once(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr.decode(errors='replace')}")
    return elapsed


def heavy_imports(argv: list[str]) -> list[str]:
    code = _IMPORT_PROBE.format(argv=argv, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or "HEAVY:" not in result.stdout:
        sys.exit(f"import probe for {argv} failed:\n{result.stderr}")
    return json.loads(result.stdout.rpartition("HEAVY:")[2])


def summarise(times: list[float], baseline_median: float) -> dict:
    median = statistics.median(times)
    return {
        "runs": len(times),
        "min_s": min(times),
        "median_s": median,
        "mean_s": statistics.fmean(times),
        "median_vs_baseline": median / baseline_median,
        "times_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per command first (default 2)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    script = str(console_script())
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "quicktune --help": [script, "--help"],
        "quicktune recipes": [script, "recipes"],
    }
    load_before = os.getloadavg()
    for _ in range(args.warmup):  # fills the page cache and __pycache__ so run 1 is not an outlier
        for command in commands.values():
            time_once(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(time_once(command))
    load_after = os.getloadavg()

    baseline = statistics.median(times["python -c pass"])
    stats = {name: summarise(runs, baseline) for name, runs in times.items()}
    imported = {"--help": heavy_imports(["--help"]), "recipes": heavy_imports(["recipes"])}
    help_median = stats["quicktune --help"]["median_s"]

    print(f"{args.runs} runs each, interleaved, after {args.warmup} warm-up run(s); wall seconds")
    print(f"interpreter: {sys.executable} (Python {platform.python_version()}); {os.cpu_count()} CPUs")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}\n")
    print(f"{'command':<20} {'min':>8} {'median':>8} {'mean':>8} {'x baseline':>11}")
    for name, row in stats.items():
        print(
            f"{name:<20} {row['min_s']:>8.3f} {row['median_s']:>8.3f} {row['mean_s']:>8.3f} "
            f"{row['median_vs_baseline']:>10.2f}x"
        )
    print()
    for argv, modules in imported.items():
        print(f"heavy modules imported by quicktune {argv}: {', '.join(modules) if modules else 'none'}")
    verdict = "met" if help_median <= HELP_TARGET_S else "NOT met"
    print(f"target: --help median <= {HELP_TARGET_S} s: {verdict} ({help_median:.3f} s)")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "startup.json"
    report = {
        "benchmark": "startup",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "interpreter": sys.executable,
        "console_script": script,
        "warmup_runs": args.warmup,
        "load_average_before_after": [load_before[0], load_after[0]],
        "commands": {name: {"argv": commands[name], **stats[name]} for name in commands},
        "heavy_modules_imported": imported,
        "target": {"help_median_s_at_most": HELP_TARGET_S, "met": help_median <= HELP_TARGET_S},
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
