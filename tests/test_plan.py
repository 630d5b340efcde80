"""The planner: hand-computed shapes, published measurements, and the verdicts the CLI gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.errors import QuicktuneError
from quicktune.plan import GB, GIB, KNOWN, NF4_BYTES_PER_PARAM, Arch, Settings, estimate, find_gpu, make_plan
from quicktune.recipe import builtin_recipes, load_recipe

ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA8B = KNOWN["meta-llama-3.1-8b"]


def test_shapes_by_hand():
    tiny = Arch(
        "tiny", layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10, tied=False, source="-"
    )
    # per layer: q 8x8 + k,v 2x(8x4) + o 8x8 = 192; mlp 3 x 8 x 16 = 384
    assert tiny.linear_params == 2 * (192 + 384)
    assert tiny.params == 1152 + 2 * 10 * 8 + (2 * 2 * 8 + 8)
    # r=2 on q (8->8) and v (8->4): 2 x (8+8) + 2 x (8+4) per layer
    assert tiny.lora_params(2, ["q_proj", "v_proj"]) == 2 * (32 + 24)
    qlora = estimate(tiny, Settings("qlora", 1, 4, 2, ("q_proj",), True, "adamw_8bit"))
    assert qlora.parts["weights"] == pytest.approx(1152 * NF4_BYTES_PER_PARAM + (tiny.params - 1152) * 2)
    assert qlora.trainable == 2 * 32
    assert qlora.parts["LoRA + optimizer"] == 64 * (4 + 4 + 2)  # fp32 weights + grads, 8-bit Adam
    # lora.last_layers: the adapter, and the activations autograd keeps, in the last layer only
    last = estimate(tiny, Settings("qlora", 1, 4, 2, ("q_proj",), False, "adamw_8bit", last_layers=1))
    every = estimate(tiny, Settings("qlora", 1, 4, 2, ("q_proj",), False, "adamw_8bit"))
    assert last.trainable == 32 and every.trainable == 64
    assert last.parts["activations"] == every.parts["activations"] / 2


def test_published_counts_for_llama_3_1_8b():
    assert LLAMA8B.params == 8_030_261_248  # the parameter count transformers reports for Llama 3.1 8B
    # "Number of trainable parameters = 41,943,040" in Unsloth's Llama 3.1 8B notebooks (r=16, 7 projections)
    assert LLAMA8B.lora_params(16, list(ALL7)) == 41_943_040


def test_within_15_percent_of_unsloths_published_peaks():
    # 7.92 GB peak reserved, Llama 3.1 8B QLoRA r=16, batch 2 x 2048 on a T4 (Unsloth's notebook output)
    t4 = estimate(LLAMA8B, Settings("qlora", 2, 2048, 16, ALL7, True, "adamw_8bit")).total / GB
    assert t4 == pytest.approx(7.92, rel=0.15)
    # 78,475 tokens of context fit 24 GB at batch 1, r=32 (Unsloth's context-length benchmarks)
    context = 1024
    while estimate(LLAMA8B, Settings("qlora", 1, context + 256, 32, ALL7, True, "adamw_8bit")).fits(24):
        context += 256
    assert context == pytest.approx(78_475, rel=0.15)


@pytest.mark.parametrize(
    "arch, qlora_gb, lora_gb",
    [("mistral-7b", 5, 19), ("meta-llama-3.1-8b", 6, 22), ("gemma-2-9b", 6.5, 24)],
)
def test_within_15_percent_of_unsloths_minimum_vram_table(arch, qlora_gb, lora_gb):
    # Unsloth's requirements page: "absolute minimum" VRAM by size, QLoRA (4-bit) and LoRA (16-bit)
    small = dict(batch=1, seq=512, rank=16, targets=ALL7, gradient_checkpointing=True)
    qlora = estimate(KNOWN[arch], Settings("qlora", optimizer="adamw_8bit", **small))
    assert qlora.total / GB == pytest.approx(qlora_gb, rel=0.15)
    lora = estimate(KNOWN[arch], Settings("lora", optimizer="adamw_8bit", **small))
    assert lora.total / GB == pytest.approx(lora_gb, rel=0.15)


@pytest.mark.parametrize("name", ["llama3.1-8b-qlora", "qwen2.5-7b-qlora", "mistral-7b-qlora", "gemma2-9b-qlora"])
def test_the_7_to_9b_qlora_recipes_fit_24_gb(name):
    plan = make_plan(load_recipe(name), gpu="RTX 4090")
    assert plan.fits and plan.estimate.total < 12 * GIB


def test_8b_16_bit_lora_at_8192_does_not_fit_and_a_fix_does():
    recipe = load_recipe("llama3.1-8b-qlora", ["method=lora", "model.load_in_4bit=false", "model.max_seq_length=8192"])
    plan = make_plan(recipe, vram=24)
    assert not plan.fits
    assert plan.fixes and all(fix.estimate.fits(24) for fix in plan.fixes)
    assert plan.fixes[0].sets == ("training.batch_size=1", "training.grad_accumulation=8")
    result = CliRunner().invoke(main, ["plan", "llama3.1-8b-qlora", "--vram", "24", "--set", "method=lora",
                                       "--set", "model.load_in_4bit=false", "--set", "model.max_seq_length=8192"])
    assert result.exit_code == 1 and "does not fit" in result.output and "--set training.batch_size=1" in result.output


def test_plan_for_every_builtin_recipe_never_imports_torch():
    # How fast it is, is measured in bench/ (a timed assertion here failed on a loaded machine).
    names = sorted(builtin_recipes())
    code = (
        "import sys\nfrom quicktune.cli import main\n"
        f"for name in {names!r}:\n"
        "    try:\n        main(['plan', name])\n    except SystemExit as end:\n        print('EXIT', name, end.code)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'unsloth', 'trl') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith(("EXIT", "HEAVY"))]
    assert lines[-1] == ["HEAVY", "[]"]
    assert all(code in ("0", "None") for _, _, code in lines[:-1]), lines  # every built-in recipe plans


def test_unknown_gpu_is_a_clear_error():
    assert find_gpu("NVIDIA GeForce RTX 3090").vram_gib == 24
    with pytest.raises(QuicktuneError, match="unknown GPU"):
        find_gpu("Voodoo 2")


def test_run_refuses_a_plan_that_cannot_fit(monkeypatch):
    from quicktune import workflow

    monkeypatch.setattr(workflow, "detect_vram_gib", lambda: 6.0)  # the name check_plan calls (imported from plan)
    result = CliRunner().invoke(main, ["run", "llama3.1-8b-qlora"])
    assert result.exit_code == 2 and "this GPU has 6 GiB" in result.output and "--force" in result.output
    workflow.check_plan("llama3.1-8b-qlora", [], force=True)  # --force: a warning, no error


def _plan_output(*args: str) -> str:
    result = CliRunner().invoke(main, ["plan", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # one line: rich wraps at the terminal width


@pytest.mark.parametrize("vram", ["12", "24"])
def test_plan_talks_about_the_vram_it_was_given(vram):
    text = _plan_output("llama3.1-8b-qlora", "--vram", vram)
    assert f"Peak VRAM estimate on a {vram} GiB GPU" in text and f"of {float(vram) * 0.95:.1f} usable GiB" in text
    assert "4090" not in text  # no card was named: no card's speed is assumed
    assert "time: not estimated: --vram says how much memory, not how fast" in text


def test_plan_times_the_gpu_it_was_given():
    text = _plan_output("llama3.1-8b-qlora", "--gpu", "RTX 3090")
    assert "Peak VRAM estimate on RTX 3090" in text and "on RTX 3090, from its 16-bit throughput" in text
    assert "4090" not in text
    # the same data on a slower card takes longer
    fast = make_plan(load_recipe("llama3.1-8b-qlora"), gpu="RTX 4090")
    slow = make_plan(load_recipe("llama3.1-8b-qlora"), gpu="T4")
    assert slow.epoch_seconds > fast.epoch_seconds > 0


def test_a_cpu_recipe_is_planned_for_the_cpu():
    text = _plan_output("smollm2-demo")
    assert "runs on the CPU" in text and "VRAM" not in text and "4090" not in text
    plan = make_plan(load_recipe("smollm2-demo"))
    assert plan.device == "cpu" and plan.fits
    # README quick start: 120 steps of 8 rows (2.4 epochs) took 546 s of training on 2 cores
    assert plan.epoch_seconds * 2.4 == pytest.approx(546, rel=0.1)
    assert "about 4 min per epoch" in text and "2-core CPU" in text
    # lora.last_layers: forward 2N + backward through the frozen weights 2N x the share of layers trained
    every, half = (make_plan(load_recipe("smollm2-demo", [f"lora.last_layers={n}"])) for n in (30, 15))
    assert half.epoch_seconds == pytest.approx(every.epoch_seconds * 3 / 4)
    assert half.estimate.trainable * 2 == every.estimate.trainable
    assert "LoRA r=16 on the last 15 layers" in _plan_output("smollm2-demo", "--set", "lora.last_layers=15")
    more = CliRunner().invoke(main, ["plan", "smollm2-demo", "--set", "lora.last_layers=31"])
    assert more.exit_code == 2 and "--set lora.last_layers=31: lora.last_layers is 31" in more.output
    assert "has 30 decoder layers" in " ".join(more.output.split())
    # asked for a GPU, the same recipe gets a GPU plan; a tiny model's epoch is no longer "0 s"
    gpu = _plan_output("smollm2-demo", "--gpu", "RTX 4090")
    assert "Peak VRAM estimate on RTX 4090" in gpu and "→ under a second per epoch" in gpu


def test_a_preference_run_is_planned_with_both_answers_and_dpos_reference():
    # A pair puts chosen and rejected through the model side by side: twice the activations and
    # logits of one SFT row; a 4-bit DPO base weighs what a QLoRA base weighs.
    shape = dict(batch=2, seq=1024, rank=16, targets=ALL7, gradient_checkpointing=True, optimizer="adamw_8bit")
    qlora = estimate(LLAMA8B, Settings("qlora", **shape))
    dpo = estimate(LLAMA8B, Settings("dpo", four_bit=True, **shape))
    assert dpo.parts["weights"] == qlora.parts["weights"] and dpo.trainable == qlora.trainable
    assert dpo.parts["activations"] == pytest.approx(2 * qlora.parts["activations"])
    assert dpo.parts["logits/loss"] == pytest.approx(2 * qlora.parts["logits/loss"])
    assert estimate(LLAMA8B, Settings("orpo", four_bit=False, **shape)).parts["weights"] > dpo.parts["weights"]

    recipe = load_recipe("smollm2-demo-dpo")
    plan = make_plan(recipe)
    sft = make_plan(load_recipe("smollm2-demo", [f"data.train={recipe.data.train[0]}"]))
    assert plan.settings.method == "dpo" and plan.settings.quantized is False
    assert plan.epoch_seconds == pytest.approx(sft.epoch_seconds * 4 / 3)  # the reference's forward pass
    assert "reference" in plan.time_note
    # too big for the card: the fix a DPO recipe can take is a 4-bit base, not method=qlora
    big = make_plan(load_recipe("smollm2-demo-dpo", ["model.max_seq_length=4096", "training.batch_size=64"]), vram=4)
    assert all("method=qlora" not in fix.sets for fix in big.fixes)


def test_grpo_plan_counts_the_group_and_its_generation_cache():
    from quicktune.plan import make_plan
    from quicktune.recipe import load_recipe

    sets = ["method=grpo", "grpo.rewards=[{name: exact}]"]
    sft = make_plan(load_recipe("llama3.1-8b-qlora"))
    grpo = make_plan(load_recipe("llama3.1-8b-qlora", [*sets, "model.load_in_4bit=true"]))
    parts = grpo.estimate.parts
    # 2 prompts x 8 answers x 2048 tokens x 32 layers x (k, v) x 8 KV heads x 128 x 2 bytes = 4 GiB
    assert parts["generation KV cache"] == 2 * 8 * 2048 * 32 * 2 * 8 * 128 * 2
    assert parts["activations"] == 8 * sft.estimate.parts["activations"]  # the group goes through training
    assert grpo.fits and grpo.time_note.endswith("sampling dominates")
    # a 16-bit base does not fit a 24 GB card; the plan names the 4-bit base (not method=qlora)
    sixteen = make_plan(load_recipe("llama3.1-8b-qlora", sets))
    assert not sixteen.fits and ("model.load_in_4bit=true",) in [f.sets for f in sixteen.fixes]
    # the recipe's eval_every (grpo does not evaluate while it trains) is left out, with a note
    assert any("training.eval_every" in note and "moot" in note
               for note in load_recipe("llama3.1-8b-qlora", sets).notes)


# --- the run as configured (training.max_steps) and measured steps ----------------------------------


@pytest.mark.parametrize("sets", [[], ["training.max_steps=null", "training.epochs=3"],
                                  ["training.max_steps=null", "training.epochs=0.5", "training.grad_accumulation=3"],
                                  ["training.max_steps=null", "data.eval=[]", "data.eval_fraction=0.1"]])
def test_plan_counts_the_steps_training_takes(sets):
    from quicktune.plan import run_steps, train_rows
    from quicktune.train.config import planned_steps  # what training runs; no torch at import

    recipe = load_recipe("smollm2-demo", sets)
    plan = make_plan(recipe)
    held = round(400 * recipe.data.eval_fraction) if recipe.data.eval_fraction else 0
    assert plan.rows == train_rows(recipe) == 400 - held  # quicktune/demo/train.jsonl
    assert plan.steps == run_steps(recipe, plan.rows) == planned_steps(recipe, plan.rows)


def test_plan_times_the_recipes_own_max_steps():
    demo = make_plan(load_recipe("smollm2-demo"))  # max_steps 120 of batch 4 over 400 rows
    assert (demo.steps, demo.steps_per_epoch, demo.steps_from) == (120, 100, "training.max_steps")
    assert demo.step_seconds == pytest.approx(demo.epoch_seconds / 100)
    assert demo.run_seconds == pytest.approx(demo.epoch_seconds * 1.2)
    longer = make_plan(load_recipe("smollm2-demo", ["training.max_steps=360"]))
    assert longer.run_seconds == pytest.approx(3 * demo.run_seconds) and longer.epoch_seconds == demo.epoch_seconds
    epochs = make_plan(load_recipe("smollm2-demo", ["training.max_steps=null", "training.epochs=2"]))
    assert (epochs.steps, epochs.steps_from) == (200, "training.epochs 2")
    assert epochs.run_seconds == pytest.approx(2 * epochs.epoch_seconds)
    # a GPU plan of the same recipe times the same 120 steps, on the card
    gpu = make_plan(load_recipe("smollm2-demo"), gpu="T4")
    assert gpu.steps == 120 and gpu.run_seconds == pytest.approx(gpu.epoch_seconds * 1.2)
    # DPO: 606 pairs at batch 4 -> 152 steps an epoch; the recipe's 80 steps
    dpo = make_plan(load_recipe("smollm2-demo-dpo"))
    assert (dpo.steps, dpo.steps_per_epoch) == (80, 152)
    assert dpo.run_seconds == pytest.approx(dpo.epoch_seconds * 80 / 152)
    # GRPO: a step of 2 prompts x 4 answers of <= 64 tokens is the reference's 8 answers: its 9 s a step
    grpo = make_plan(load_recipe("smollm2-demo-grpo"))
    assert grpo.steps == 40 and grpo.step_seconds == pytest.approx(9.0)
    assert grpo.run_seconds == pytest.approx(40 * 9.0)
    text = _plan_output("smollm2-demo")
    configured = "the run as configured: 120 steps (training.max_steps; 1.2 epochs of 100 steps)"
    assert f"{configured} → about {demo.run_seconds / 60:.0f} min" in text
    assert "`quicktune plan smollm2-demo --measure` times a few steps" in text


def test_a_measured_step_gives_the_time():
    from quicktune.console import console, print_plan
    from quicktune.plan import MeasuredSteps

    measured = MeasuredSteps(3.6, 4, 1, "cpu", (3.5, 3.6, 3.6, 3.9))
    plan = make_plan(load_recipe("smollm2-demo"), measured=measured)
    assert plan.step_seconds == 3.6 and plan.run_seconds == pytest.approx(3.6 * 120)
    assert plan.epoch_seconds == pytest.approx(3.6 * 100)
    assert plan.time_note == "measured: 3.6 s/step over 4 steps on this machine (CPU, after 1 warm-up step)"
    with console.capture() as out:
        print_plan(plan, "smollm2-demo")
    text = " ".join(out.get().split())
    assert "time: measured: 3.6 s/step over 4 steps on this machine" in text
    assert "120 steps (training.max_steps; 1.2 epochs of 100 steps) → about 7 min of training steps" in text
    assert "one epoch (100 steps): about 6 min" in text and "--measure` times" not in text


def test_measure_refuses_another_card_and_plain_plan_stays_light():
    result = CliRunner().invoke(main, ["plan", "smollm2-demo", "--measure", "--gpu", "T4"])
    assert result.exit_code == 2 and "--measure times this machine" in result.output
    code = ("import sys\nfrom quicktune.cli import main\ntry:\n    main(['plan', 'smollm2-demo'])\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "the run as configured: 120 steps" in " ".join(done.stdout.split()) and "HEAVY []" in done.stdout
