"""Fidelity: does the exported GGUF behave like the model that was trained?

On held-out prompts, rendered and tokenized exactly as in training:

* **greedy agreement**: the merged Hugging Face model and the F16 GGUF (through
  llama.cpp) each generate greedily; the share of the reference tokens the GGUF
  reproduces before the first difference, and how many answers are identical;
* **same top token**, for every GGUF (F16 and each quantization): fed the reference
  answer, how often the GGUF's most likely next token is the reference token;
* **stops**: how many answers end with an end-of-turn/EOS token (the model learned to stop);
* **prompt tokens**: the prompt as Ollama builds it from the Modelfile TEMPLATE,
  tokenized by llama.cpp from the GGUF's own vocabulary, equals the training tokens;
* **template parity** through Go's text/template, when ``go`` is installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quicktune.data.check import stop_token_ids
from quicktune.data.tokenizer import ChatTokenizer
from quicktune.export import llamacpp
from quicktune.export.ollama import TurnFormat, go_parity


@dataclass
class GgufFidelity:
    name: str  # f16, q4_k_m, ...
    same_top_token: float  # share of reference positions
    greedy_agreement: float | None = None  # F16 only
    identical_answers: int | None = None
    stops: int | None = None


@dataclass
class Fidelity:
    prompts: int
    max_new_tokens: int
    reference_stops: int  # merged HF model's answers that ended with a stop token
    prompt_tokens_equal: int  # prompts whose Ollama-built prompt tokenizes like training
    template_parity: str  # "n/n conversations" or why it was skipped
    ggufs: list[GgufFidelity] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reference_answers(
    merged_dir: Path, prompts: list[list[int]], stop_ids: set[int], max_new_tokens: int
) -> list[list[int]]:
    """Greedy answers of the merged model (transformers), stop token included when reached."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notices
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from quicktune.train.backend import greedy_answers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=dtype).to(device).eval()
    answers = greedy_answers(model, prompts, stop_ids, min(stop_ids), max_new_tokens, batch_size=1)
    del model
    return answers


def _same_top_token(llm: Any, prompt: list[int], answer: list[int]) -> tuple[int, int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt + answer[:-1])
    logits = np.asarray(llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(answer)])
    return int((logits.argmax(axis=-1) == np.asarray(answer)).sum()), len(answer)


def _agreement(reference: list[int], other: list[int]) -> float:
    same = 0
    for a, b in zip(reference, other):
        if a != b:
            break
        same += 1
    return same / max(len(reference), len(other), 1)


def check_fidelity(
    *,
    merged_dir: Path,
    ggufs: dict[str, Path],  # "f16" first
    tokenizer: ChatTokenizer,
    turn_format: TurnFormat | None,
    conversations: list[list[dict[str, str]]],
    add_bos: bool,
    max_new_tokens: int = 96,
    progress=lambda message: None,
) -> Fidelity:
    stop_ids = stop_token_ids(tokenizer)
    prompts = [tokenizer.encode_prompt(c) for c in conversations]

    progress("greedy answers of the merged model (transformers)")
    reference = reference_answers(merged_dir, prompts, stop_ids, max_new_tokens)
    context = max(len(p) for p in prompts) + max_new_tokens + 8

    results = []
    prompt_tokens_equal = 0
    for index, (name, path) in enumerate(ggufs.items()):
        progress(f"{name}: llama.cpp on the same prompts")
        llm = llamacpp.load(path, n_ctx=context, logits_all=True)
        same = total = 0
        for prompt, answer in zip(prompts, reference):
            s, t = _same_top_token(llm, prompt, answer)
            same, total = same + s, total + t
        result = GgufFidelity(name, round(same / max(total, 1), 4))
        if index == 0:  # the F16 file: generate, and check the prompt Ollama will build
            answers = [llamacpp.greedy(llm, p, stop_ids, max_new_tokens) for p in prompts]
            result.greedy_agreement = round(sum(map(_agreement, reference, answers)) / len(prompts), 4)
            result.identical_answers = sum(a == b for a, b in zip(reference, answers))
            result.stops = sum(bool(a) and a[-1] in stop_ids for a in answers)
            if turn_format is not None:
                for conversation, ids in zip(conversations, prompts):
                    text = turn_format.render(conversation).removeprefix(turn_format.bos)
                    ollama_ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
                    prompt_tokens_equal += ollama_ids == ids
        results.append(result)
        del llm

    parity = "skipped: no TEMPLATE"
    if turn_format is not None:
        parity = go_parity(turn_format, tokenizer.render, conversations)
    return Fidelity(
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        reference_stops=sum(bool(a) and a[-1] in stop_ids for a in reference),
        prompt_tokens_equal=prompt_tokens_equal,
        template_parity=parity,
        ggufs=results,
    )
