"""The tokens every row of a batch begins with, computed once per batch instead of once per row.

Chat rows often start alike: the same system prompt, inside the same chat markup (the demo's 400
rows share their first 75 of ~143 tokens). In a causal model a position sees only the positions
before it, so those positions' hidden states, keys and values are the same in every row of the
batch. ``install`` wraps the decoder stack's forward: it runs the shared prefix for one row, with a
key/value cache, and every row's remaining tokens on top of that cache (the cache's tensors are
views expanded over the rows). The loss and the gradients are the plain forward's, up to float
rounding: autograd sums the rows' gradients into the one prefix, where the plain forward computed
the prefix once per row and summed the same terms. Only the work shrinks, by the prefix's share of
the batch's tokens (bench/README.md, "Shared prefix").

Used where that holds and is checked: the plain transformers decoder forward (the CPU path, where
Unsloth trains with transformers' own modules), no gradient checkpointing (it turns the cache off),
no dropout (one prefix would share one dropout mask), right padding (every row's prefix is real
tokens, at the same positions), no cache or embeddings passed in. On its first batch the wrapped
forward also runs the plain one and compares the hidden states; if they differ, it is switched off
for the rest of the run and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIN_PREFIX = 16  # fewer shared tokens are not worth a second pass through the layers
TOLERANCE = 1e-3  # the first batch's check: max |shared - plain| <= TOLERANCE x max |plain| (float32 rounding is ~1e-6)


@dataclass
class SharedPrefix:
    """What the wrapper did, for the run's summary: batches computed with a shared prefix, the tokens
    not computed again, and the first batch's check."""

    batches: int = 0
    tokens_saved: int = 0
    checked: bool = False
    max_difference: float | None = None
    off: str | None = None  # why it was switched off, when it was
    _say: Callable[..., None] = field(default=print, repr=False)


def install(model, *, say: Callable[..., None]) -> SharedPrefix | None:
    """Wrap the decoder stack of ``model`` (a transformers causal LM, PEFT-wrapped or not) so batches
    share their common prefix; None where the model does not qualify (see the module doc)."""
    import torch

    decoder = _decoder(model)
    if decoder is None or getattr(decoder, "gradient_checkpointing", False):
        return None
    if any(isinstance(module, torch.nn.Dropout) and module.p > 0 for module in model.modules()):
        return None
    if any(getattr(model.config, key, 0) for key in ("attention_dropout", "hidden_dropout", "dropout")):
        return None
    state = SharedPrefix(_say=say)
    plain = decoder.forward
    decoder.forward = _shared_forward(decoder, plain, state)
    return state


def _decoder(model):
    """The transformers decoder stack (``LlamaModel`` and the like) under the causal-LM head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    if decoder is None or not type(decoder).__module__.startswith("transformers.models."):
        return None  # Unsloth's own fast forward (CUDA) or an unknown wrapper: leave it alone
    return decoder


def prefix_length(input_ids, attention_mask) -> int:
    """How many leading tokens all rows share (as real tokens, under the attention mask), at most
    one less than the rows are long."""
    same = (input_ids == input_ids[:1]).all(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    return min(int(same.long().cumprod(0).sum()), input_ids.shape[1] - 1)


def _shared_forward(decoder, plain, state: SharedPrefix):
    import torch
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    def shared(prefix: int, input_ids, attention_mask, position_ids, kwargs) -> Any:
        rows = input_ids.shape[0]
        cache = DynamicCache(config=decoder.config)
        head = plain(
            input_ids=input_ids[:1, :prefix],
            attention_mask=None if attention_mask is None else attention_mask[:1, :prefix],
            position_ids=None if position_ids is None else position_ids[:1, :prefix],
            past_key_values=cache, use_cache=True, **kwargs,
        )
        for layer in cache.layers:  # one prefix, seen by every row
            layer.keys = layer.keys.expand(rows, -1, -1, -1)
            layer.values = layer.values.expand(rows, -1, -1, -1)
        tail = plain(
            input_ids=input_ids[:, prefix:], attention_mask=attention_mask,
            position_ids=None if position_ids is None else position_ids[:, prefix:],
            past_key_values=cache, use_cache=True, **kwargs,
        )
        hidden = torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    window = getattr(decoder.config, "sliding_window", None) or 1 << 30  # a prefix a sliding window never cuts

    def forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        prefix = 0
        if (state.off is None and input_ids is not None and input_ids.dim() == 2 and input_ids.shape[0] > 1
                and inputs_embeds is None and past_key_values is None and not use_cache
                and (attention_mask is None or attention_mask.dim() == 2)
                and kwargs.get("return_dict") is not False
                and not kwargs.get("output_hidden_states") and not kwargs.get("output_attentions")
                and not any(isinstance(value, torch.Tensor) for value in kwargs.values())):
            prefix = min(prefix_length(input_ids, attention_mask), window)
            if position_ids is not None and not bool((position_ids[:, :prefix] == position_ids[:1, :prefix]).all()):
                prefix = 0
        if prefix < MIN_PREFIX:
            return plain(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        out = shared(prefix, input_ids, attention_mask, position_ids, kwargs)
        if not state.checked:
            out = check_first_batch(state, out, lambda: plain(input_ids=input_ids, attention_mask=attention_mask,
                                                     position_ids=position_ids, use_cache=False, **kwargs))
            if state.off is not None:
                return out
        state.batches += 1
        state.tokens_saved += prefix * (input_ids.shape[0] - 1)
        return out

    return forward


def check_first_batch(state: SharedPrefix, out, plain_forward):
    """The first shared batch against the plain forward: ``out`` when they agree, else the plain
    output (and the wrapper off for the run)."""
    import torch

    with torch.no_grad():
        reference = plain_forward().last_hidden_state
    shared = out.last_hidden_state.detach()
    state.checked = True
    scale = float(reference.abs().max()) or 1.0
    state.max_difference = float((shared - reference).abs().max()) / scale
    if state.max_difference <= TOLERANCE and torch.isfinite(shared).all():
        return out
    state.off = f"the first batch's hidden states differed from the plain forward's by {state.max_difference:.2g}"
    state._say(f"[yellow]notice:[/] shared-prefix batches are off for this run: {state.off}")
    return plain_forward()
