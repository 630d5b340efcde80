"""Fidelity: does the exported GGUF behave like the model that was trained?

On held-out prompts, rendered and tokenized exactly as in training:

* **greedy agreement**: the merged Hugging Face model and the F16 GGUF (through
  llama.cpp) each generate greedily; the share of the reference tokens the GGUF
  reproduces before the first difference, and how many answers are identical, where a
  near-tie of the reference (two tokens within ``TIE_TOLERANCE``, export/gate.py) that the
  GGUF breaks the other way is a tie: the comparison goes on fed the reference's token
  (export/gguf_check.py ``compare_answer``), and the ties are counted;
* **same top token**, for every GGUF (F16 and each quantization): fed the reference
  answer, how often the GGUF's most likely next token is the reference token;
* **stops**: how many answers end with an end-of-turn/EOS token (the model learned to stop);
* **prompt tokens**: the prompt as Ollama builds it, tokenized by llama.cpp from the GGUF's
  own vocabulary (BOS as llama-server adds it), equals the training tokens;
* **template parity** for the renderer Ollama will use (export/renderer.py): the Modelfile
  TEMPLATE through Go's text/template (when ``go`` is installed), or, when llama-server renders
  the GGUF's own template, llama.cpp's chat-template engine (export/llama_template.py).

The GGUF side runs in a child process (export/gguf_check.py): a crash of llama.cpp ends the
check with a message, not quicktune.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quicktune.data.tokenizer import ChatTokenizer, stop_token_ids
from quicktune.export.gate import TIE_TOLERANCE
from quicktune.export.gguf_check import REFERENCE_TOP_K, agreement, check_ggufs
from quicktune.export.llama_template import CheckerUnavailable, jinja_parity, llama_render
from quicktune.export.ollama import CHECK_CONVERSATIONS, TurnFormat, go_parity
from quicktune.export.renderer import JINJA, OllamaRenderer
from quicktune.inference import greedy_answers


@dataclass
class GgufFidelity:
    name: str  # f16, q4_k_m, ...
    same_top_token: float  # share of reference positions
    greedy_agreement: float | None = None  # F16 only
    identical_answers: int | None = None  # identical to the reference, ties allowed
    stops: int | None = None
    ties: int | None = None  # near-ties of the reference the GGUF broke the other way, in identical answers
    differences: list[dict[str, Any]] = field(default_factory=list)  # where the other answers part (not ties)
    tied: list[dict[str, Any]] = field(default_factory=list)  # each tie: {"prompt", "token", "gap"} (nats)


@dataclass
class TrainedFidelity:
    """The model as trained (the base loaded as training loaded it, 4-bit for QLoRA, plus the
    adapter, through the training backend) against the merged model, the export's reference."""

    base: str  # "4-bit" or "16-bit"
    same_top_token: float  # fed the merged model's answer: share of positions with the same top token
    greedy_agreement: float
    identical_answers: int
    stops: int


@dataclass
class Fidelity:
    prompts: int
    max_new_tokens: int
    reference_stops: int  # merged HF model's answers that ended with a stop token
    prompt_tokens_equal: int | None  # prompts whose Ollama-built prompt tokenizes like training; None: not checked
    template_parity: str  # "n/n conversations" or why it was skipped
    ollama_renderer: str = ""  # which renderer Ollama uses, e.g. "llama.cpp Jinja (template has tools)"
    ggufs: list[GgufFidelity] = field(default_factory=list)
    trained: TrainedFidelity | None = None  # None: a full fine-tune (nothing merged) or not checked

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """The merged model's greedy answers, and at each answer position (fed the answer before it) its most
    likely tokens with their log-probabilities, best first: [[token, log p], ...]."""

    answers: list[list[int]]
    top: list[list[list[tuple[int, float]]]]


def reference_answers(
    merged_dir: Path, prompts: list[list[int]], stop_ids: set[int], max_new_tokens: int
) -> Reference:
    """Greedy answers of the merged model (transformers), stop token included when reached, and its
    ``REFERENCE_TOP_K`` most likely tokens at each answer position (one prompt at a time, unpadded)."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notices
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=dtype).to(device).eval()
    answers = greedy_answers(model, prompts, stop_ids, min(stop_ids), max_new_tokens)
    top = []
    with torch.inference_mode():
        for prompt, answer in zip(prompts, answers):
            ids = torch.tensor([prompt + answer[:-1]], device=device)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 :].float()
            best = torch.log_softmax(logits, dim=-1).topk(REFERENCE_TOP_K, dim=-1)
            top.append([list(zip(i, v)) for i, v in zip(best.indices.tolist(), best.values.tolist())])
    del model
    return Reference(answers, top)


def trained_vs_merged(
    model, base: str, prompts: list[list[int]], reference: list[list[int]], stop_ids: set[int], max_new_tokens: int
) -> TrainedFidelity:
    """Same top token (fed the merged model's answers), then greedy answers compared with them."""
    import torch

    device = next(model.parameters()).device
    same = total = 0
    with torch.inference_mode():
        for prompt, answer in zip(prompts, reference):
            ids = torch.tensor([prompt + answer[:-1]], device=device)
            top = model(input_ids=ids).logits[0, len(prompt) - 1 :].argmax(dim=-1).cpu()
            same += int((top == torch.tensor(answer)).sum())
            total += len(answer)
    answers = greedy_answers(model, prompts, stop_ids, min(stop_ids), max_new_tokens)
    return TrainedFidelity(
        base=base,
        same_top_token=round(same / max(total, 1), 4),
        greedy_agreement=round(sum(map(agreement, reference, answers)) / len(prompts), 4),
        identical_answers=sum(a == b for a, b in zip(reference, answers)),
        stops=_stops(answers, stop_ids),
    )


def _stops(answers: list[list[int]], stop_ids: set[int]) -> int:
    """How many answers end with a stop token (the model learned to stop)."""
    return sum(bool(a) and a[-1] in stop_ids for a in answers)


@dataclass
class _Check:
    """What the steps of the fidelity check read: the conversations and their training prompt tokens, the
    stop tokens, the answer budget, how Ollama will build the prompt, and the merged model's answers."""

    conversations: list[list[dict[str, str]]]
    prompts: list[list[int]]
    stop_ids: set[int]
    max_new_tokens: int
    turn_format: TurnFormat | None
    add_bos: bool
    go_path: bool  # Ollama renders with the Modelfile TEMPLATE (Go), not the GGUF's template (llama.cpp)
    served: list[tuple[str | None, bool]] | None = None  # llama-server's prompts (text, add BOS), when rendered
    reference: list[list[int]] = field(default_factory=list)  # the merged model's greedy answers
    reference_top: list = field(default_factory=list)  # its most likely tokens at each answer position


def check_fidelity(
    *,
    merged_dir: Path,
    ggufs: dict[str, Path],  # "f16" first
    tokenizer: ChatTokenizer,
    turn_format: TurnFormat | None,
    conversations: list[list[dict[str, str]]],
    add_bos: bool,
    renderer: OllamaRenderer | None = None,
    max_new_tokens: int = 96,
    progress=lambda message: None,
    load_trained=None,  # () -> (model as trained, "4-bit" | "16-bit"); None skips that row
) -> Fidelity:
    """The merged model's greedy answers to ``conversations``, then the model as trained (``load_trained``)
    and every GGUF compared with them, and the prompt Ollama builds compared with training's."""
    stop_ids = stop_token_ids(tokenizer)
    prompts = [tokenizer.encode_prompt(c) for c in conversations]
    go_path = renderer is None or renderer.renderer != JINJA
    check = _Check(conversations, prompts, stop_ids, max_new_tokens, turn_format, add_bos, go_path)
    parity = "skipped: no TEMPLATE"
    if not go_path:
        progress("the GGUF's chat template through llama.cpp's engine, as llama-server renders it")
        check.served, parity = _llama_served(ggufs["f16"], tokenizer, turn_format, conversations)

    progress("greedy answers of the merged model (transformers)")
    reference = reference_answers(merged_dir, prompts, stop_ids, max_new_tokens)
    check.reference, check.reference_top = reference.answers, reference.top
    trained = None
    if load_trained is not None:
        progress("the model as trained (base + adapter) against the merged model")
        trained = trained_vs_merged(*load_trained(), prompts, check.reference, stop_ids, max_new_tokens)
    rows, prompt_tokens_equal = _check_ggufs(check, ggufs, progress)

    if go_path and turn_format is not None:
        parity = go_parity(turn_format, tokenizer.render, conversations)
    return Fidelity(
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        reference_stops=_stops(check.reference, stop_ids),
        prompt_tokens_equal=prompt_tokens_equal,
        template_parity=parity,
        ollama_renderer=renderer.label if renderer is not None else "",
        ggufs=rows,
        trained=trained,
    )


def _check_ggufs(check: _Check, ggufs: dict[str, Path], progress) -> tuple[list[GgufFidelity], int | None]:
    """Each GGUF through llama.cpp, in a child process (export/gguf_check.py): the share of the merged
    model's answer tokens it ranks first; the first (F16) also answers greedily (ties allowed) and
    tokenizes the prompts Ollama builds. Returns a row per GGUF and how many of those prompts tokenize as
    in training (None: not checked)."""
    request = {
        "ggufs": {name: str(path) for name, path in ggufs.items()},
        "prompts": check.prompts,
        "reference": check.reference,
        "reference_top": check.reference_top,
        "stop_ids": sorted(check.stop_ids),
        "max_new_tokens": check.max_new_tokens,
        "tolerance": TIE_TOLERANCE,
        "sent": _ollama_prompts(check),
    }
    answer = check_ggufs(request, progress)
    return [GgufFidelity(**row) for row in answer["rows"]], answer["prompt_tokens_equal"]


def _ollama_prompts(check: _Check) -> list[tuple[str | None, bool]] | str | None:
    """The prompts as Ollama sends them to llama.cpp (text, add BOS), to be tokenized with the GGUF's own
    vocabulary and compared with the training tokens: llama-server's rendering, or the Modelfile
    TEMPLATE's. None: llama.cpp's renderer could not be run (not checked); "none": no TEMPLATE."""
    if check.served is not None:  # llama-server: the rendered text, tokenized with add_special
        return check.served
    if check.go_path and check.turn_format is not None:
        fmt = check.turn_format
        # as a client sends it: edges stripped when the template trims (README, Serving with Ollama)
        return [(fmt.render(fmt.client_messages(c)).removeprefix(fmt.bos), check.add_bos)
                for c in check.conversations]
    return None if not check.go_path else "none"


def _llama_served(
    gguf: Path, tokenizer: ChatTokenizer, fmt: TurnFormat | None, conversations: list[list[dict[str, str]]]
) -> tuple[list[tuple[str | None, bool]] | None, str]:
    """llama-server's prompts for the held-out conversations (text, add BOS), and the parity of
    llama.cpp's rendering with training over the check conversations + those."""
    checked = CHECK_CONVERSATIONS + list(conversations)
    sent = [fmt.client_messages(c) for c in checked] if fmt is not None else checked  # as a client sends them
    try:
        rendering = llama_render(sent, gguf=gguf)
    except CheckerUnavailable as exc:
        return None, f"skipped: {exc}"
    parity = jinja_parity(rendering, [tokenizer.render(c, add_generation_prompt=True) for c in checked])
    offset = len(CHECK_CONVERSATIONS)
    return [(rendering.prompts[offset + i], rendering.add_bos) for i in range(len(conversations))], parity
