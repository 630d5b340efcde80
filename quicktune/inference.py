"""Inference on a loaded Hugging Face model, shared by eval, the export's fidelity check and the
demo: greedy answers in batches, and the loss of the reference answers. Takes a model already
loaded through ``quicktune.backend`` (the Unsloth seam); loads nothing itself. torch is imported
inside the functions, so importing this module stays cheap."""

from __future__ import annotations

from quicktune.data.masking import IGNORE

# Greedy answers are generated in batches of about this many tokens (prompt + answer budget, per row),
# never fewer than 8 rows nor more than 64. Decoding one token for a batch reads every weight once, so
# larger batches are much cheaper per answer: on the 2-core VM the demo's 60 eval answers took 106 s in
# batches of 8 and 59 s in batches of 30, all 60 answers identical (bench/README.md, "Quick start").
GENERATE_BATCH_TOKENS = 8192


def generate_batch_size(prompts: list[list[int]], max_new_tokens: int) -> int:
    """Rows per batch for ``greedy_answers``: ~GENERATE_BATCH_TOKENS tokens, within 8..64 rows."""
    longest = max(map(len, prompts), default=0) + max_new_tokens
    return max(8, min(64, GENERATE_BATCH_TOKENS // max(1, longest)))


def greedy_answers(model, prompts: list[list[int]], stops: set[int], pad_id: int | None, max_new_tokens: int,
                   batch_size: int | None = None) -> list[list[int]]:
    """Greedy continuations, each ending at (and including) its first stop token.

    Prompts are left-padded in batches, of similar lengths (sorted, answers returned in the
    prompts' order), ``generate_batch_size`` rows each unless ``batch_size`` is given;
    ``batch_size=1`` needs no padding and is exact greedy decoding. The attention mask is
    always given: pad may equal eos (SmolLM2).
    """
    import torch

    device = next(model.parameters()).device
    pad = pad_id if pad_id is not None else min(stops)
    size = batch_size or generate_batch_size(prompts, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for first in range(0, len(order), size):
            rows = order[first : first + size]
            batch = [prompts[i] for i in rows]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(stops),
                pad_token_id=pad,
            )
            for index, row in zip(rows, generated[:, width:].tolist()):
                end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
                out[index] = row[:end]
    return out


def cut_at_stop(tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """An answer without its stop token, and whether it had one."""
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[:index], True
    return tokens, False


LOSS_BATCH_TOKENS = 2048  # tokens (rows x the longest row) per forward pass of the eval loss


def reference_loss(model, tokenized, batch_tokens: int = LOSS_BATCH_TOKENS) -> float | None:
    """Mean negative log-likelihood of the trained tokens (the reference answers).

    Rows of similar length share a forward pass, right-padded: a causal model's logits at a real
    token do not see the padding after it. The LM head runs only from the first position whose
    next token is trained (``logits_to_keep``), since answers come after their prompts. On the
    demo's 60 eval rows: 22-28 s against 30-32 s one row at a time with every logit, the same loss
    (bench/README.md, "Eval loss").
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    total, count, first = 0.0, 0, 0
    with torch.inference_mode():
        while first < len(order):
            last = first + 1
            while last < len(order) and (last - first + 1) * len(tokenized[order[last]].input_ids) <= batch_tokens:
                last += 1
            rows = [tokenized[i] for i in order[first:last]]
            first = last
            width = max(len(row.input_ids) for row in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            for k, row in enumerate(rows):
                ids[k, : len(row.input_ids)] = torch.tensor(row.input_ids)
                mask[k, : len(row.input_ids)] = 1
                targets[k, : len(row.labels) - 1] = torch.tensor(row.labels[1:])  # position p predicts token p + 1
            trained = torch.nonzero((targets != IGNORE).any(dim=0)).flatten()
            if not len(trained):
                continue
            keep = width - int(trained[0])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            if logits.shape[1] != keep:  # a forward that ignores logits_to_keep gives every position
                logits = logits[:, -keep:]
            wanted = targets[:, -keep:].to(device)
            trained_here = wanted != IGNORE
            total += torch.nn.functional.cross_entropy(
                logits[trained_here].float(), wanted[trained_here], reduction="sum"
            ).item()
            count += int(trained_here.sum())
    return round(total / count, 5) if count else None
