"""Every family through quicktune's whole pipeline: train a few steps -> export -> llama.cpp stops.

For each family (llama with Llama 3's vocabulary, mistral, qwen2, qwen3, gemma 2, phi3), the tiny
random model of the architecture matrix (tests/export/test_architectures.py: the real vocabulary
from llama.cpp's sdist, quicktune's chat template for the family) is the ``model.base`` of a
recipe. ``quicktune train`` (``train``) fits a LoRA on rows whose answers are one or two words, so
that the model learns to end each answer with the family's end-of-turn token; ``quicktune export``
(``export_run``) merges it and writes the F16 GGUF and its Modelfile;
then the GGUF is loaded through quicktune's chat code (``resolve_target`` + ``open_session``: the
served system prompt, the template stored in the GGUF, llama.cpp's tokenizer) and answers
held-out prompts greedily.

What is checked is that the model itself ends its answer: no stop string and no stop id is given
to llama.cpp, so the Modelfile's ``PARAMETER stop`` lines play no part. llama.cpp's completion
must finish with reason ``stop`` (it sampled an end-of-generation token of the vocabulary) well
before ``max_tokens``, and the last token generated must be the family's end-of-turn token, the
one training put after every answer. The same GGUF conversion of the untrained model, given the
same prompt tokens, runs to ``max_tokens`` without one: so the check can fail, and it is the
training that makes it pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.export.test_architectures import (
    ARCHS,
    Arch,
    build_model,
    gemma_spm_published,
    sources,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.slow

MAX_TOKENS = 16  # answers are 2 to 6 tokens (Gemma's tiny vocabulary spells them out) and their end of turn
STEPS = 30
# The tiny Gemma vocabulary (500 SentencePiece pieces trained here) spells the answers letter by
# letter ('N', 'o', '.'); after 30 steps (loss 1.01) the merged model answered held-out prompts
# 'N N N ...' in transformers and llama.cpp alike, on the same prompt tokens.
STEPS_FOR = {"gemma2": 80}

# Short answers from a small set: the model learns where an answer ends, not a task.
ANSWERS = ["Yes.", "No.", "Maybe.", "Never."]
TRAIN_ROWS = [
    ({"role": "user", "content": f"Question {n}: is {word} a {kind}?"}, ANSWERS[n % len(ANSWERS)])
    for n, (word, kind) in enumerate(
        (w, k) for w in ("tea", "rain", "chess", "maps", "owls", "kites") for k in ("bird", "game")
    )
]
HELD_OUT = [
    [{"role": "user", "content": "Question 40: is salt a game?"}],
    [{"role": "user", "content": "Question 41: is jazz a bird?"}],
    [{"role": "user", "content": "Question 42: is bread a game?"}],
]

FAMILIES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),  # Phi-3 fuses q/k/v and gate/up
}
# Gemma's tokenizer as Google publishes it, with tokenizer_config.json's added_tokens_decoder (the
# matrix's gemma folder lacks it, as a transformers 5 save does, and the export puts it back).
TOKENIZERS = {"gemma2": gemma_spm_published}


def _recipe(folder: Path, model_dir: Path, targets: tuple[str, ...], steps: int) -> Path:
    rows = [{"messages": [question, {"role": "assistant", "content": answer}]} for question, answer in TRAIN_ROWS]
    train_file = write_jsonl(folder / "train.jsonl", rows)
    recipe = {
        "name": f"{model_dir.parent.name}-tiny",
        "method": "lora",
        "model": {"base": str(model_dir), "max_seq_length": 128, "dtype": "float32"},
        "lora": {"r": 16, "alpha": 32, "target_modules": list(targets)},
        "data": {"train": str(train_file)},
        # A high rate, as the demo's for a small model: a 64-wide random model must learn in a few dozen steps.
        "training": {"max_steps": steps, "batch_size": 4, "grad_accumulation": 1, "learning_rate": 0.01,
                     "warmup_ratio": 0.0, "gradient_checkpointing": False, "logging_every": 10, "seed": 5},
        "export": {"quantizations": ["f16"], "temperature": 0},
    }
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    return path


def _complete(llm, prompt: list[int]) -> tuple[str, list[int]]:
    """llama.cpp's own finish reason (no stop strings) and the greedy tokens (no stop ids)."""
    from quicktune import llamacpp

    done = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0, top_k=1, stop=[])
    # a stop id set nothing is in: greedy runs to the end, and we look at where the model ended
    tokens = llamacpp.greedy(llm, prompt, set(), MAX_TOKENS)
    return done["choices"][0]["finish_reason"], tokens


def _first_stop(tokens: list[int], stops: set[int]) -> int | None:
    return next((i for i, token in enumerate(tokens) if token in stops), None)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trained_tiny_model_stops_at_end_of_turn(family, tmp_path, sources):  # noqa: F811
    from quicktune import llamacpp
    from quicktune.chat import open_session, resolve_target
    from quicktune.export.exporter import export_run
    from quicktune.recipe import load_recipe
    from quicktune.runs import read_manifest
    from quicktune.train.trainer import train

    arch: Arch = next(a for a in ARCHS if a.id == family)
    model_dir = build_model(arch, tmp_path / family / "model", sources, TOKENIZERS.get(family))
    recipe_file = _recipe(tmp_path, model_dir, FAMILIES[family], STEPS_FOR.get(family, STEPS))

    run = train(load_recipe(str(recipe_file)), runs_root=tmp_path / "runs")
    assert run.status == "finished"
    metrics = read_manifest(run.run_dir)["metrics"]
    # The fidelity check (verify) is exercised on SmolLM2 in test_export.py; here it would double the time.
    result = export_run(run.run_dir, ["f16"], verify=False)
    modelfile = result.modelfiles["f16"].read_text(encoding="utf-8")

    session = open_session(resolve_target(str(run.run_dir), tmp_path / "runs", "f16"), max_tokens=MAX_TOKENS)
    try:
        end_of_turn = session.tokenizer.end_of_turn()
        eot_ids = session.llm.tokenize(end_of_turn.encode("utf-8"), add_bos=False, special=True)
        assert len(eot_ids) == 1, f"{end_of_turn!r} is not one token in llama.cpp: {eot_ids}"
        eot = eot_ids[0]
        prompts = [session.prompt_tokens(session.messages(q[0]["content"])) for q in HELD_OUT]
        # the longest trained answer in llama.cpp's tokens, and a little room for a space piece
        longest = max(len(session.llm.tokenize(answer.encode("utf-8"), add_bos=False)) for answer in ANSWERS) + 1
        trained = [_complete(session.llm, prompt) for prompt in prompts]
        vocab_size = session.llm.n_vocab()
    finally:
        session.llm.close()

    print(f"\n{family}: trained: {trained}", flush=True)
    # The control: the untrained model, converted as it is, on the same prompt tokens.
    untrained_gguf = llamacpp.convert(model_dir, tmp_path / "untrained.gguf", "f16", log=tmp_path / "convert.log",
                                      name=f"{family}-tiny")
    llm = llamacpp.load(untrained_gguf, n_ctx=256)
    try:
        untrained = [_complete(llm, prompt) for prompt in prompts]
    finally:
        llm.close()

    def shown(tokens):
        return [t if t != eot else f"<EOT {end_of_turn}>" for t in tokens]

    print(f"\n{family}: {vocab_size} tokens, end of turn {end_of_turn!r} = {eot}; loss "
          f"{metrics.get('first_loss')} -> {metrics.get('train_loss')} in {metrics.get('steps')} steps; "
          f"Modelfile stops: {[line for line in modelfile.splitlines() if line.startswith('PARAMETER stop')]}")
    for (reason, tokens), (reason0, tokens0) in zip(trained, untrained):
        print(f"  trained: {reason:6} {shown(tokens)}\n  untrained: {reason0:6} {shown(tokens0)}")

    for reason, tokens in trained:
        # llama.cpp stopped by itself: the model sampled an end-of-generation token ...
        assert reason == "stop", f"{family}: llama.cpp ran to max_tokens: {shown(tokens)}"
        # ... and it is the end-of-turn token training put after every answer, after a short answer.
        at = _first_stop(tokens, {eot})
        assert at is not None and 1 <= at <= longest, f"{family}: no end of turn after a short answer: {shown(tokens)}"
    # Without training the same prompts run on: the pass above is the training's doing.
    assert all(reason == "length" and eot not in tokens for reason, tokens in untrained), untrained
