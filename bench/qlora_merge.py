"""Which weights to merge a QLoRA adapter into: the original 16-bit ones or the de-quantized 4-bit ones.

Trains SmolLM2 (the smollm2-demo recipe with method: qlora, a 4-bit NF4 base on the CPU) for
--steps steps, then merges the adapter into each export.merge_target through the exporter's
own code, and compares each merged model (transformers, float32) with the model as trained
(the 4-bit base + adapter, loaded through the training backend) on --rows held-out rows:

- same top token: fed the trained model's greedy answer (with --no-generate: the held-out
  reference answer), how often the merged model's most likely next token is the trained model's;
- greedy agreement: the share of the trained model's answer the merged model reproduces
  before its first different token; identical answers;
- the eval headline (the recipe's eval.metric, json_fields) and exact match of every model's
  answers against the reference answers, scored by quicktune's own metrics.

Greedy decoding with a 4-bit model on the CPU de-quantizes every layer for every token, so
--no-generate measures only the same-top-token column (one forward pass per row and model).

It also measures bitsandbytes' CPU inference kernel (a 4-bit layer in eval mode, which on a
CPU with AVX512-BF16 repacks its weight and multiplies in bfloat16) against the float32 path
training used, by the same same-top-token measure.

    .venv/bin/python bench/qlora_merge.py [--steps 30] [--rows 20] [--keep]

Prints a table and writes bench/results/qlora_merge.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_results, versions

from quicktune.backend import load_backend
from quicktune.export.verify import agreement
from quicktune.inference import greedy_answers

PACKAGES = ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes")


def same_top_token(model, prompts, answers) -> tuple[int, int]:
    import torch

    same = total = 0
    with torch.inference_mode():
        for prompt, answer in zip(prompts, answers):
            logits = model(input_ids=torch.tensor([prompt + answer[:-1]])).logits[0, len(prompt) - 1 :]
            same += int((logits.argmax(dim=-1) == torch.tensor(answer)).sum())
            total += len(answer)
    return same, total


def top_tokens(model, prompts, answers) -> list[list[int]]:
    """The model's most likely next token at each position of each answer, fed the answer."""
    import torch

    out = []
    with torch.inference_mode():
        for prompt, answer in zip(prompts, answers):
            logits = model(input_ids=torch.tensor([prompt + answer[:-1]])).logits[0, len(prompt) - 1 :]
            out.append(logits.argmax(dim=-1).tolist())
    return out


def agreeing(ours: list[list[int]], theirs: list[list[int]]) -> tuple[int, int]:
    pairs = [(a, b) for x, y in zip(ours, theirs) for a, b in zip(x, y)]
    return sum(a == b for a, b in pairs), len(pairs)


def scores(tokenizer, answers, references, stops) -> dict[str, float]:
    from quicktune.metrics import Answer, score_all

    scored = []
    for tokens in answers:
        stopped = bool(tokens) and tokens[-1] in stops
        text = tokenizer.backend.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=False)
        scored.append(Answer(text, stopped))
    return score_all(scored, references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="same top token on the reference answers only: no greedy decoding")
    parser.add_argument("--run", help="measure this finished qlora run folder instead of training one")
    parser.add_argument("--keep", action="store_true", help="keep the run folder and merged models")
    args = parser.parse_args()

    backend = load_backend()
    import torch
    from transformers import AutoModelForCausalLM

    from quicktune.base_model import base_folder
    from quicktune.data.heldout import load_eval_set
    from quicktune.data.tokenizer import load_chat_tokenizer, stop_token_ids
    from quicktune.export.exporter import _merge_into
    from quicktune.export.merge import merge_adapter
    from quicktune.recipe import load_recipe
    from quicktune.runs import read_manifest
    from quicktune.train.trainer import train

    work = Path(tempfile.mkdtemp(prefix="qlora-merge-"))
    overrides = ["method=qlora", "model.load_in_4bit=true", f"training.max_steps={args.steps}", "data.eval=[]",
                 "training.batch_size=4", "training.gradient_checkpointing=false", "training.logging_every=1"]
    if args.run:
        from quicktune.train.trainer import TrainResult

        run_dir = Path(args.run)
        recipe = load_recipe(str(run_dir / "recipe.yaml"))
        run = TrainResult(run_dir, "finished", read_manifest(run_dir)["metrics"])
        train_seconds = run.metrics["seconds"]
    else:
        recipe = load_recipe("smollm2-demo", overrides)
        started = time.perf_counter()
        run = train(recipe, runs_root=work / "runs")
        train_seconds = time.perf_counter() - started
    manifest = read_manifest(run.run_dir)
    print(f"{run.run_dir}: {run.metrics['steps']} steps in {train_seconds:.0f} s: "
          f"loss {run.metrics['first_loss']:.3f} -> {run.metrics['train_loss']:.3f}")

    tokenizer = load_chat_tokenizer(str(run.adapter_dir))
    stops = stop_token_ids(tokenizer)
    from quicktune.recipe import builtin_recipe_dir

    eval_set = load_eval_set(recipe, [str(builtin_recipe_dir().parent / "demo" / "eval.jsonl")], args.rows)
    prompts = [tokenizer.encode_prompt(p) for p in eval_set.prompts]
    base = base_folder(manifest, recipe)

    trained = backend.load_trained(base, str(run.adapter_dir), max_seq_length=recipe.model.max_seq_length,
                                   load_in_4bit=True, dtype=recipe.model.dtype)
    rows: dict[str, dict] = {}
    if args.generate:
        started = time.perf_counter()
        reference = greedy_answers(trained, prompts, stops, min(stops), args.max_new_tokens, batch_size=1)
        rows["trained (4-bit + adapter)"] = {"answers": reference,
                                             "generate_seconds": round(time.perf_counter() - started, 1),
                                             **scores(tokenizer, reference, eval_set.references, stops)}
    else:  # the held-out answers themselves, each with its end-of-turn token: the trained model's top tokens
        answers = [[*tokenizer.backend.encode(text, add_special_tokens=False).ids,
                    tokenizer.token_id(tokenizer.end_of_turn())]
                   for text in eval_set.references]
        top = top_tokens(trained, prompts, answers)
        reference = answers
        rows["trained (4-bit + adapter)"] = {"answers": []}
    import bitsandbytes as bnb

    for module in trained.modules():  # bitsandbytes' own inference path: repacked, bfloat16 matmul
        if isinstance(module, bnb.nn.Linear4bit):
            module.training = False
    if args.generate:
        same, total = same_top_token(trained, prompts, reference)
    else:
        same, total = agreeing(top_tokens(trained, prompts, answers), top)
    packed = {"same_top_token": same / total, "positions": total}
    del trained

    for target in ("original", "dequantized"):
        recipe.export.merge_target = target
        merged_dir = work / f"merged-{target}"
        started = time.perf_counter()
        with _merge_into(recipe, manifest, None, work) as into:
            merge_adapter(into, run.adapter_dir, merged_dir)
        merge_seconds = time.perf_counter() - started
        model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
        row = {"merge_seconds": round(merge_seconds, 1), "answers": []}
        if args.generate:
            same, total = same_top_token(model, prompts, reference)
            started = time.perf_counter()
            answers = greedy_answers(model, prompts, stops, min(stops), args.max_new_tokens, batch_size=1)
            row.update(generate_seconds=round(time.perf_counter() - started, 1),
                       greedy_agreement=sum(map(agreement, reference, answers)) / len(prompts),
                       identical_answers=sum(a == b for a, b in zip(reference, answers)), answers=answers,
                       **scores(tokenizer, answers, eval_set.references, stops))
        else:
            same, total = agreeing(top_tokens(model, prompts, reference), top)
        rows[f"merged into {target}"] = {**row, "same_top_token": same / total, "positions": total}
        del model

    n = len(prompts)
    what = (f"greedy, up to {args.max_new_tokens} new tokens; reference: the trained model's answers" if args.generate
            else "fed the reference answers; reference: the trained model's top tokens")
    print(f"\n{n} held-out rows of the demo data, {what}")
    print(f"{'model':28} {'same top token':>15} {'greedy agreement':>17} {'identical':>10} {'json_fields':>12} "
          f"{'exact':>7} {'ends with EOS':>14}")
    for name, row in rows.items():
        same = f"{row['same_top_token']:.1%}" if "same_top_token" in row else "(reference)"
        agree = f"{row['greedy_agreement']:.1%}" if "greedy_agreement" in row else ""
        ident = f"{row['identical_answers']}/{n}" if "identical_answers" in row else ""
        fields = f"{row['json_fields']:.1%}" if "json_fields" in row else "-"
        exact = f"{row['exact_match']:.1%}" if "exact_match" in row else "-"
        eos = f"{row['ends_with_eos']:.1%}" if "ends_with_eos" in row else "-"
        print(f"{name:28} {same:>15} {agree:>17} {ident:>10} {fields:>12} {exact:>7} {eos:>14}")
    print(f"bitsandbytes' CPU inference kernel (bfloat16) vs the float32 path training used: same top token "
          f"{packed['same_top_token']:.1%} of {packed['positions']} positions")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    save_results("qlora_merge", {
        "settings": {**vars(args), "recipe": recipe.name, "overrides": [] if args.run else overrides},
        "versions": versions(PACKAGES),
        "backend": manifest["backend"],
        "training": {**run.metrics, "wall_seconds": round(train_seconds, 1)},
        "rows": {name: {k: v for k, v in row.items() if k != "answers"} for name, row in rows.items()},
        "answers": {name: [tokenizer.backend.decode(a) for a in row["answers"]] for name, row in rows.items()},
        "bnb_cpu_inference_kernel": packed,
    })
    if args.keep:
        print(f"kept {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
