"""Several training processes through accelerate launch (DDP), tested with CPU processes over gloo."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from quicktune.errors import QuicktuneError
from quicktune.recipe import load_recipe, split_batch
from quicktune.train.distributed import describe_processes, launch, launch_argv
from tests.conftest import SMOLLM2

# Measured on this 2-core CPU (float32 SmolLM2, LoRA r=8, global batch 4, 4 steps): the largest
# per-step loss difference between 2 processes and 1 was 4.1e-6 relative, and the largest adapter
# weight difference 5.0e-5 (the test prints both). Sums over micro-batches of 2 rows instead of 4
# round differently; a wrong split (other rows, a doubled or lost gradient) moves the loss by far
# more than 1e-4. Adam moves every weight by about the learning rate (2e-3) at its first steps
# whatever the gradient's size, so a rounding difference can show in a weight by up to that: 1e-3.
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-3


def test_global_batch_is_kept_over_processes():
    assert split_batch(8, 1, 1) == (8, 1)
    assert split_batch(2, 4, 2) == (2, 2)  # accumulation divided first: the same rows per forward pass
    assert split_batch(8, 1, 2) == (4, 1)
    assert split_batch(2, 4, 4) == (2, 1)
    with pytest.raises(QuicktuneError, match="cannot be split evenly over 3 processes"):
        split_batch(2, 4, 3)


def test_recipe_refuses_gpus_it_cannot_honour(tmp_path, tiny_data):
    train, _ = tiny_data
    path = tmp_path / "r.yaml"
    path.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\ndata:\n  train: {train}\n"
                    "training:\n  batch_size: 3\n  grad_accumulation: 1\n  gpus: 2\n")
    with pytest.raises(QuicktuneError) as error:
        load_recipe(str(path))
    assert any(p.startswith(f"{path}:6: training: ") and "3 x 1 rows per step cannot be split evenly over 2" in p
               for p in error.value.problems), error.value.problems
    assert load_recipe(str(path), ["training.batch_size=4"]).training.gpus == 2
    with pytest.raises(QuicktuneError, match=r"training.gpus: method dpo trains on one process"):
        load_recipe(str(path), ["training.batch_size=4", "method=dpo"])


def test_launch_command_is_accelerate_with_one_process_per_gpu(tmp_path):
    argv = launch_argv("r.yaml", ["training.max_steps=3"], "runs", "v1", 2, tmp_path / "result.json")
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv
    module = argv.index("-m", 3)
    assert argv[module + 1 : module + 3] == ["quicktune.train.distributed", "r.yaml"]
    assert argv[-4:] == ["--set", "training.max_steps=3", "--from", "v1"]
    # without CUDA the command says it runs CPU processes, not GPUs
    assert describe_processes(2, 0).startswith("2 CPU processes") and "no CUDA GPU here" in describe_processes(2, 0)


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice (two processes writing?): {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(tmp_path, tiny_data, monkeypatch):
    """Same global batch (4 rows) on 1 and 2 processes: the same loss at every step, one run folder,
    one adapter, written by the main process only; and a 2-process run resumes like one."""
    from safetensors.torch import load_file

    from quicktune import runs
    from quicktune.console import console

    # One thread per process: on a shared 2-core machine, OpenMP threads beyond the free cores
    # made a 1-process run of 4 steps take 11 minutes instead of under one.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    train, _ = tiny_data
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train}\ntraining:\n  max_steps: 4\n  batch_size: 4\n  grad_accumulation: 1\n"
        "  learning_rate: 0.002\n  warmup_ratio: 0.0\n  save_every: 2\n  seed: 11\n"
    )
    results = {n: launch(str(recipe), [], str(tmp_path / f"runs{n}"), None, n, console) for n in (1, 2)}
    one, two = results[1], results[2]
    assert one.status == two.status == "finished"

    losses_one, losses_two = _losses(one.run_dir), _losses(two.run_dir)
    assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4]
    relative = {s: abs(losses_two[s] - losses_one[s]) / losses_one[s] for s in losses_one}
    print("\nstep  1 process   2 processes  relative difference")
    for step in sorted(losses_one):
        print(f"{step:>4}  {losses_one[step]:.6f}  {losses_two[step]:.6f}    {relative[step]:.2e}")
    assert max(relative.values()) < LOSS_TOLERANCE
    assert losses_one[4] < losses_one[1]  # it trained

    adapters_one = load_file(str(one.run_dir / "adapter" / "adapter_model.safetensors"))
    adapters_two = load_file(str(two.run_dir / "adapter" / "adapter_model.safetensors"))
    largest = max((adapters_two[k] - adapters_one[k]).abs().max().item() for k in adapters_one)
    print(f"largest adapter weight difference: {largest:.2e}")
    assert adapters_one.keys() == adapters_two.keys() and largest < WEIGHT_TOLERANCE

    root = tmp_path / "runs2" / "ddp"
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["v1"]  # one run folder
    assert [p.name for p in two.run_dir.rglob("adapter_model.safetensors")
            if "checkpoint-" not in str(p)] == ["adapter_model.safetensors"]  # exactly one adapter
    assert not list(two.run_dir.glob(".adapter*"))  # nothing half-written left
    manifest = runs.read_manifest(two.run_dir)
    assert manifest["status"] == "finished" and manifest["backend"]["name"] == "transformers"
    assert manifest["distributed"] == {"processes": 2, "launcher": "accelerate launch (DDP)", "device": "cpu",
                                       "ddp_backend": "gloo", "batch_per_process": 2,
                                       "grad_accumulation_per_process": 1}
    # each process's random state is in the checkpoint, so a resume continues both
    assert {p.name for p in (two.run_dir / "checkpoints" / "checkpoint-4").glob("rng_state*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}

    # What Ctrl-C leaves (status interrupted, the last checkpoint kept; tested by hand with SIGINT, see
    # the README): resumed on 2 processes from checkpoint-2, steps 3 and 4 train as they did.
    shutil.rmtree(two.run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(two.run_dir / "adapter")
    runs.update_manifest(two.run_dir, status="interrupted")
    resumed = launch(str(recipe), [], str(tmp_path / "runs2"), None, 2, console)
    assert (resumed.run_dir, resumed.status, resumed.resumed_from) == (two.run_dir, "finished", "checkpoint-2")
    again = _losses(two.run_dir)
    assert sorted(again) == [1, 2, 3, 4]
    assert max(abs(again[s] - losses_two[s]) / losses_two[s] for s in (3, 4)) < LOSS_TOLERANCE
    assert (two.run_dir / "adapter" / "adapter_model.safetensors").is_file()
