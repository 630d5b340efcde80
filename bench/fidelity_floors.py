"""The fidelity check's rows for every quantization, on SmolLM2 trained on the demo task.

Where the same-top-token floors in quicktune/export/gate.py come from. Trains
``smollm2-demo`` for ``--steps`` steps into a temporary runs folder with the installed
``quicktune`` command, exports it with every quantization quicktune offers and ``--prompts``
held-out prompts, and prints each GGUF's row as the export recorded it in the run's
manifest (the export may fail its gate: the rows are recorded either way, which is the point).

    .venv/bin/python bench/fidelity_floors.py [--steps 30] [--prompts 16] [--keep]

Writes bench/results/fidelity_floors.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = ["q4_k_m", "q5_k_m", "q8_0", "bf16"]


def quicktune(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "quicktune"), *args]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, text=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the runs folder")
    args = parser.parse_args()

    runs = Path(tempfile.mkdtemp(prefix="qt-floors-"))
    try:
        start = time.perf_counter()
        trained = quicktune(
            "train", "smollm2-demo", "--runs-dir", str(runs), "--set", f"training.max_steps={args.steps}"
        )
        if trained.returncode != 0:
            sys.exit(f"training failed:\n{trained.stderr[-2000:]}")
        run_dir = runs / "smollm2-demo" / "v1"
        quant_args = [a for q in QUANTS for a in ("--quant", q)]
        exported = quicktune(
            "export", str(run_dir), *quant_args, "--prompts", str(args.prompts), "--runs-dir", str(runs)
        )
        print(exported.stdout[-3000:], exported.stderr[-1500:], sep="\n")
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        fidelity = manifest["export"]["fidelity"]
        result = {
            "steps": args.steps,
            "prompts": args.prompts,
            "export_exit_status": exported.returncode,
            "seconds": round(time.perf_counter() - start, 1),
            "fidelity": fidelity,
        }
        print(f"\nsmollm2-demo, {args.steps} steps, {args.prompts} held-out prompts; export exit {exported.returncode}")
        print(f"{'GGUF':8} {'same top token':>15} {'identical':>10} {'stops':>6}")
        for row in fidelity["ggufs"]:
            print(
                f"{row['name']:8} {row['same_top_token']:>15.2%} {row['identical_answers']!s:>10} {row['stops']!s:>6}"
            )
        print(f"reference stops {fidelity['reference_stops']}/{fidelity['prompts']}; passed: {fidelity.get('passed')}")
        out = Path(__file__).parent / "results" / "fidelity_floors.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    finally:
        if args.keep:
            print(f"kept {runs}")
        else:
            shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
