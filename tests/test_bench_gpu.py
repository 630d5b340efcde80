"""bench/gpu.py --smoke: the GPU benchmark's own code path, on a tiny random Llama on the CPU.

The real run needs a CUDA machine (bench/README.md, "GPU"); this keeps the script from rotting
in between: three ways trained in their own processes, a table, and the JSON with the plan.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"
LABELS = ("quicktune", "raw Unsloth", "plain TRL + PEFT + bnb")


@pytest.mark.slow
def test_gpu_benchmark_smoke_trains_three_ways(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out), "--logs", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    lines = done.stdout[done.stdout.index("\nway ") + 1:].splitlines()
    table = lines[1:next(i for i, line in enumerate(lines) if line.startswith("("))]  # rows between header and notes
    assert len(table) == 3, lines
    for label in LABELS:
        rows = [line for line in table if line.startswith(label + " ")]
        assert len(rows) == 1, (label, table)
        assert float(rows[0].split()[-7]) > 0  # tok/s column

    report = json.loads(out.read_text())
    assert list(report["ways"]) == ["quicktune", "unsloth", "trl"]
    tokens_per_step = report["profile"]["batch"] * report["profile"]["seq"]
    for way, row in report["ways"].items():
        assert row["tokens_per_s"] > 0, way
        assert len(row["steps"]) == report["profile"]["steps"], way
        assert all(step["tokens"] == tokens_per_step for step in row["steps"]), way  # full rows, no padding
        assert report["plan"][way]["total_gib"] > 0, way
    assert report["ways"]["quicktune"]["method"] == "qlora"
    assert report["ways"]["trl"]["trainer"] == "ModelLossSFTTrainer"  # TRL's fused LM head needs a GPU
    assert report["plan"]["trl"]["total_gib"] > report["plan"]["unsloth"]["total_gib"]  # full logits, kept inputs
    # Same random weights, same rows, LoRA B starts at zero: before any update the three ways agree.
    first = [row["losses"][0] for row in report["ways"].values()]
    assert max(first) - min(first) < 1e-2, first
    assert (tmp_path / "logs" / "trl.log").is_file()
