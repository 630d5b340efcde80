"""The model as a server serves it: ``quicktune eval RUN --endpoint URL --model NAME``.

Any OpenAI-compatible server (``ollama serve`` at ``http://localhost:11434/v1`` with the model's
``name:tag``, ``quicktune serve``, llama-server, vLLM) answers the held-out prompts greedily, as one
more subject scored with the same metrics; its loss and perplexity are not available through the API.

A served model gets its system prompt from the server (Ollama's Modelfile SYSTEM, ``quicktune
serve``), so a held-out prompt's leading system message is left out of what is sent when it is the
run's served system prompt; ``with_system`` sends it (vLLM, hosted servers: no Modelfile there).

Its answers are compared with the run's exported GGUF answering greedily in-process: the agreement
is the share of rows with the same answer (surrounding whitespace ignored), and the first row that
differs is kept, so a server that renders another prompt (chat template, system prompt) or samples
otherwise (a repeat penalty, a temperature) shows at once.

The requests go ``concurrency`` at a time (default 1: a single-slot server answers one at a time,
and greedy answers of a server that batches requests can change with what is batched beside them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quicktune.endpoints import DEFAULT_KEY_ENV, Endpoint, Reply
from quicktune.errors import QuicktuneError
from quicktune.metrics import Answer

SERVED_KIND = "endpoint"  # the served subject's kind in the report (the others: "hf", "gguf")
CHECK_RETRIES = 1  # the first contact: one retry (0.5 s) for a blip, then the error
NO_LOSS = "not available through an OpenAI-compatible API (it returns text, not the reference answers' scores)"


@dataclass(frozen=True)
class EndpointOptions:
    """What ``eval`` asks of model servers: the served model (``endpoint``), whether the system prompt
    is sent with each request, how many requests at a time, and a judge behind a server."""

    endpoint: Endpoint | None = None
    with_system: bool = False
    concurrency: int = 1
    judge: Endpoint | None = None

    @classmethod
    def read(cls, endpoint: str | None = None, model: str | None = None, api_key_env: str | None = None,
             with_system: bool = False, concurrency: int = 1, judge_endpoint: str | None = None,
             judge_model: str | None = None, judge_api_key_env: str | None = None) -> EndpointOptions:
        """The options as given on the command line; raises ``QuicktuneError`` on an option without the
        one it belongs to (``--model`` without ``--endpoint``, ...) or an endpoint without its model."""
        _belongs(endpoint, "--endpoint", [("--model", model), ("--api-key-env", api_key_env),
                                          ("--with-system", with_system)])
        _belongs(judge_endpoint, "--judge-endpoint", [("--judge-model", judge_model),
                                                      ("--judge-api-key-env", judge_api_key_env)])
        if concurrency != 1 and not (endpoint or judge_endpoint):
            raise QuicktuneError("--concurrency is for requests to --endpoint or --judge-endpoint: neither was given")
        served = judge = None
        if endpoint:
            served = Endpoint(endpoint, model or "", key_env=api_key_env or DEFAULT_KEY_ENV, option="--endpoint")
        if judge_endpoint:
            if not judge_model:
                raise QuicktuneError(f"--judge-endpoint {judge_endpoint}: no model name",
                                     hint="Name the judge model with --judge-model (`ollama list`, or GET /v1/models).")
            judge = Endpoint(judge_endpoint, judge_model, key_env=judge_api_key_env or DEFAULT_KEY_ENV,
                             option="--judge-endpoint")
        return cls(served, with_system, concurrency, judge)

    def given(self) -> list[str]:
        """The options given, by name (for a mode that takes none of them)."""
        return [name for name, value in (("--endpoint", self.endpoint), ("--judge-endpoint", self.judge)) if value]

    def check(self) -> None:
        """Asks each server for its models: a wrong URL, model name or key fails here, in a second or two
        (``CHECK_RETRIES``: no backoff of many retries before anything has worked once)."""
        for endpoint in (self.endpoint, self.judge):
            if endpoint is not None:
                replace(endpoint, retries=min(endpoint.retries, CHECK_RETRIES)).check()


def _belongs(main: str | None, name: str, options: list[tuple[str, Any]]) -> None:
    given = [option for option, value in options if value]
    if given and not main:
        raise QuicktuneError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for {name}, "
                             f"which was not given", hint=f"Add {name} URL (the server's base URL, ending in /v1).")


def served_messages(prompt: list[dict[str, str]], served_system: str | None, with_system: bool) -> list[dict[str, str]]:
    """What is sent for one held-out prompt: without its leading system message when that is the run's
    served system prompt (the server adds it), unless ``with_system``."""
    leading = prompt[0] if prompt else None
    if (not with_system and served_system is not None and leading is not None and leading["role"] == "system"
            and leading["content"] == served_system):
        return prompt[1:]
    return prompt


def ask_all(endpoint: Endpoint, conversations: list[list[dict[str, str]]], *, max_tokens: int,
            concurrency: int = 1, progress: Callable[[int, int], None] = lambda done, total: None) -> list[Reply]:
    """Each conversation's greedy reply, in order, ``concurrency`` requests at a time through one client;
    ``progress(done, total)`` after each. The first ``EndpointError`` stops the rest and is raised."""
    client = endpoint.client()
    total = len(conversations)

    def ask(messages: list[dict[str, str]]) -> Reply:
        return endpoint.chat(messages, max_tokens=max_tokens, temperature=0.0, client=client)

    if concurrency <= 1:
        replies = []
        for messages in conversations:
            replies.append(ask(messages))
            progress(len(replies), total)
        return replies
    pool = ThreadPoolExecutor(concurrency)
    try:
        futures = [pool.submit(ask, messages) for messages in conversations]
        pending, done = set(futures), 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    raise future.exception()
                done += 1
                progress(done, total)
        return [future.result() for future in futures]
    finally:  # on an error or Ctrl-C, the requests not yet sent never are; those in flight end on their own
        pool.shutdown(wait=False, cancel_futures=True)


def served_answers(replies: list[Reply]) -> list[Answer]:
    """The replies as answers: stopped on its own when the server says the answer ended (``stop``)."""
    return [Answer(reply.text, reply.finish_reason == "stop") for reply in replies]


def short_model(model: str) -> str:
    """A model name as shown: a long one or a file path (llama_cpp.server lists its --model path) by its last part."""
    return Path(model).name if len(model) > 40 or model.endswith(".gguf") else model


def served_label(endpoint: Endpoint) -> str:
    """The served subject's column: ``served NAME``."""
    return f"served {short_model(endpoint.model)}"


def report_slug(served: dict[str, Any]) -> str:
    """The report file name's part for a served comparison: ``served-<model, letters and digits only>``."""
    name = served["label"].removeprefix("served ")
    return "served-" + (re.sub(r"[^A-Za-z0-9._-]+", "", name)[:40] or "model")


def agreement(sent: list[list[dict[str, str]]], served: list[Answer], gguf: list[Answer]) -> dict[str, Any]:
    """How often the served answer equals the GGUF's (stripped), and the first row where it does not:
    its index, the messages sent, both answers."""
    same = [a.text.strip() == b.text.strip() for a, b in zip(served, gguf)]
    first = next((index for index, equal in enumerate(same) if not equal), None)
    return {
        "same": sum(same),
        "rows": len(same),
        "agreement": round(sum(same) / len(same), 4) if same else None,
        "first_difference": None if first is None else {
            "row": first, "sent": sent[first], "served": served[first].text, "gguf": gguf[first].text,
        },
    }


def served_record(options: EndpointOptions, label: str, served_system: str | None, left_out: int,
                  gguf_label: str, compared: dict[str, Any]) -> dict[str, Any]:
    """The report's ``served`` section: which server and model (never the key), what was sent (the
    system prompt left out of ``left_out`` rows), and the agreement with the exported GGUF (``compared``)."""
    if served_system is None:
        how = "the run serves no system prompt: the held-out prompts were sent as they are"
    elif options.with_system:
        how = "sent with each request (--with-system)"
    else:
        how = (f"left to the server (its Modelfile SYSTEM, quicktune serve): left out of {left_out} of "
               f"{compared['rows']} prompts")
    return {
        "label": label,
        "endpoint": options.endpoint.describe(),
        "system_prompt": {"text": served_system, "sent": options.with_system,
                          "left_out": left_out, "how": how},
        "concurrency": options.concurrency,
        "loss": NO_LOSS,
        "compared_with": gguf_label,
        **compared,
    }
