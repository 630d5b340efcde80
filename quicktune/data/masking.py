"""Render examples with the chat template and mark the tokens the model is trained on.

With ``train_on_responses_only`` only the assistant's answers are trained, each
together with the end-of-turn token the template writes after it (``<|im_end|>``,
``<|eot_id|>``, ``<end_of_turn>``, ``</s>``, ...), so the model learns to stop.
Labels are built here, token by token, so a tokenizer whose pad token equals its
eos (SmolLM2) never has its eos masked out as padding later.

How answers are found: for the assistant turn at position i, the template renders
``messages[:i]`` with the generation prompt (everything before the answer) and
``messages[:i+1]`` (everything up to and including the answer's end-of-turn); the
characters between the two are the answer. This needs no knowledge of the template,
only that rendering a longer conversation extends the shorter one, which is checked.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from quicktune.data.records import Example
from quicktune.data.tokenizer import ChatTokenizer
from quicktune.errors import DataError
from quicktune.templates import TemplateError

IGNORE = -100


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # trained character ranges


@dataclass(frozen=True, slots=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    rendered: Rendered
    full_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE)


def render_example(tokenizer: ChatTokenizer, example: Example, *, responses_only: bool = True) -> Rendered:
    if not example.is_chat:
        text = example.text + (tokenizer.eos_token or "")
        return Rendered(text, ((0, len(text)),))
    messages = example.as_dicts()
    try:
        full = tokenizer.render(messages)
    except TemplateError as exc:
        raise DataError(f"{example.origin}: {exc}") from None
    if not responses_only:
        return Rendered(full, ((0, len(full.rstrip())),))
    spans = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.render(messages[:index], add_generation_prompt=True)
        upto = full if index == last else tokenizer.render(messages[: index + 1])
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise DataError(
                f"{example.origin}: the chat template renders earlier turns differently as the conversation "
                "grows, so the trained tokens cannot be marked reliably",
                hint="Set model.chat_template to a family template, or train on single-turn examples.",
            )
        spans.append((len(prefix), len(upto.rstrip())))
    return Rendered(full, tuple(spans))


def label_tokens(encoding, spans: tuple[tuple[int, int], ...]) -> list[int]:
    """A token is trained when it starts inside a trained span (work per span, not per token)."""
    ids = encoding.ids
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        first = encoding.char_to_token(start)
        last = encoding.char_to_token(end - 1) if end > start else None
        if first is None or last is None:
            continue
        if encoding.token_to_chars(first)[0] < start:  # the token straddles the span's start: context, not answer
            first += 1
        labels[first : last + 1] = ids[first : last + 1]
    return labels


def tokenize_examples(
    tokenizer: ChatTokenizer,
    examples: list[Example],
    *,
    max_length: int,
    responses_only: bool = True,
    batch_size: int = 2048,
) -> list[Tokenized]:
    """Render, encode and label every example, a batch at a time.

    Rendering is Python and holds the GIL; the Rust tokenizer releases it and encodes on every
    core. So each batch is encoded in a thread while the next one is rendered (and the one
    before it labelled): the two overlap instead of taking turns.
    """
    out: list[Tokenized] = []
    pending = None  # (rendered batch, its encodings to come)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quicktune-encode") as pool:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            rendered = [render_example(tokenizer, ex, responses_only=responses_only) for ex in batch]
            encodings = pool.submit(tokenizer.encode_batch, [r.text for r in rendered])
            if pending is not None:
                out += _labelled(*pending, max_length)
            pending = (rendered, encodings)
        if pending is not None:
            out += _labelled(*pending, max_length)
    return out


def _labelled(rendered: list[Rendered], encodings, max_length: int) -> list[Tokenized]:
    batch = []
    for item, encoding in zip(rendered, encodings.result()):
        ids = encoding.ids
        labels = label_tokens(encoding, item.spans)
        batch.append(
            Tokenized(input_ids=ids[:max_length], labels=labels[:max_length], rendered=item, full_length=len(ids))
        )
    return batch
