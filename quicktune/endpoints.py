"""The one way quicktune talks to another model server: any OpenAI-compatible endpoint (``quicktune
serve``, ``ollama serve`` at ``http://localhost:11434/v1``, llama-server, vLLM, a hosted API).

Used by ``eval --endpoint`` (the model as served), ``eval --judge-endpoint`` (a stronger judge) and
``data synth`` (new examples from a stronger model). Built on the ``openai`` package, the ecosystem's
client: its timeouts, and its retries with exponential backoff on connection errors, 408/409/429 and
5xx answers that honour the server's ``Retry-After``. Everything the client can raise, and every
answer that is not a chat completion (an HTML page, truncated JSON, no choices), becomes one
``EndpointError``: a short message naming the URL, exit status 2, no traceback.

The API key is read from the environment (``OPENAI_API_KEY``, or the variable the user names) when a
request is made; it is never stored on an ``Endpoint``, written to a file, a report or a log.
``Endpoint.describe()`` is what lineage records: the URL and the model, nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from quicktune.errors import QuicktuneError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"  # what a local server gets when no key is set: the client refuses an empty one
CONNECT_TIMEOUT = 10.0  # seconds to open a connection; an unreachable server fails fast
READ_TIMEOUT = 300.0  # seconds for one answer: a large judge on a CPU can take minutes
RETRIES = 4  # the client's retries on 429/5xx/connection errors, with backoff (0.5 s doubling, up to 8 s)


class EndpointError(QuicktuneError):
    """A model server could not be reached, refused the request or answered something unreadable."""


@dataclass(frozen=True)
class Reply:
    """One chat completion: the answer's text and why generation ended (``stop``, ``length``, ...)."""

    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server (``url`` is its base URL, the one ending in ``/v1``) and a model it serves.

    ``key_env`` names the environment variable holding the API key; a local server needs none.
    """

    url: str
    model: str
    key_env: str = DEFAULT_KEY_ENV
    timeout: float = READ_TIMEOUT
    retries: int = RETRIES
    option: str = "--endpoint"  # the command-line option that named it, for messages

    def __post_init__(self) -> None:
        url = self.url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise EndpointError(
                f"{self.option} {self.url}: not an http(s) URL",
                hint="Give the server's OpenAI-compatible base URL, e.g. http://localhost:11434/v1 (Ollama) "
                "or http://127.0.0.1:8080/v1 (quicktune serve, llama-server).",
            )
        if not self.model.strip():
            raise EndpointError(f"{self.option} {self.url}: no model name", hint="Name the model with --model.")
        object.__setattr__(self, "url", url)

    def describe(self) -> dict[str, str]:
        """What reports and lineage record: the URL and the model (never the key)."""
        return {"url": self.url, "model": self.model}

    def _api_key(self) -> str:
        key = os.environ.get(self.key_env)
        if key:
            return key
        if self.key_env != DEFAULT_KEY_ENV:  # the user named a variable: it must be set
            raise EndpointError(f"{self.option} {self.url}: the environment variable {self.key_env} is not set",
                                hint=f"export {self.key_env}=... (the key is read from the environment only).")
        return NO_KEY

    def client(self) -> Any:
        """An ``openai.OpenAI`` client for this server (thread-safe: one may serve many threads)."""
        import openai

        return openai.OpenAI(
            base_url=self.url,
            api_key=self._api_key(),
            timeout=openai.Timeout(self.timeout, connect=CONNECT_TIMEOUT),
            max_retries=self.retries,
        )

    def models(self, client: Any = None) -> list[str]:
        """The model names the server lists at ``/models``."""
        client = client or self.client()
        with _translated(self, "listing its models"):
            page = client.models.list()
            names = [getattr(item, "id", None) for item in getattr(page, "data", None) or []]
        if not isinstance(getattr(page, "data", None), list):
            raise EndpointError(f"{self.option} {self.url}: /models did not answer with a model list "
                                f"(is this an OpenAI-compatible base URL?)", hint=_URL_HINT)
        return [name for name in names if isinstance(name, str)]

    def check(self, client: Any = None) -> None:
        """Fails with one clear message unless the server answers and serves ``model`` (when it lists models).

        A server that lists no models (some proxies) is taken at its word: the first request tells."""
        names = self.models(client)
        if names and self.model not in names and not _ollama_alias(self.model, names):
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise EndpointError(f"{self.option} {self.url}: no model named {self.model!r} there; it serves {shown}",
                                hint="Pass one of those names with --model.")

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             seed: int | None = None, client: Any = None) -> Reply:
        """One chat completion of ``messages`` (greedy by default)."""
        client = client or self.client()
        extra = {"seed": seed} if seed is not None else {}
        with _translated(self, "answering"):
            response = client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, **extra
            )
        return _reply(self, response)


_URL_HINT = ("The base URL is the one ending in /v1: http://localhost:11434/v1 for Ollama, "
             "http://HOST:PORT/v1 for quicktune serve, llama-server and vLLM.")


def _ollama_alias(model: str, names: list[str]) -> bool:
    """Ollama lists ``name:latest``; a request for ``name`` reaches it."""
    return ":" not in model and f"{model}:latest" in names


def _reply(endpoint: Endpoint, response: Any) -> Reply:
    """The first choice's text, or an ``EndpointError`` saying what came back instead."""
    where = f"{endpoint.option} {endpoint.url}"
    if isinstance(response, str):  # the client hands back a body that is not JSON as text
        snippet = " ".join(response.split())[:80]
        raise EndpointError(f"{where}: answered with something that is not JSON ({snippet!r})", hint=_URL_HINT)
    choices = getattr(response, "choices", None)
    if not choices:
        error = getattr(response, "error", None) or (getattr(response, "model_extra", None) or {}).get("error")
        said = f": {error}" if error else ""
        raise EndpointError(f"{where}: answered without a chat completion (no choices){said}", hint=_URL_HINT)
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if text is None:
        text = ""  # a model may answer with nothing (or only a refusal/tool call): an empty answer
    if not isinstance(text, str):
        raise EndpointError(f"{where}: the answer's content is not text ({type(text).__name__})")
    return Reply(text, getattr(choices[0], "finish_reason", None))


@contextlib.contextmanager
def _translated(endpoint: Endpoint, doing: str) -> Iterator[None]:
    """Turns whatever the client raises while ``doing`` something into one ``EndpointError``."""
    try:
        yield
    except EndpointError:
        raise
    except Exception as exc:
        message, hint = describe_failure(endpoint, exc)
        raise EndpointError(f"{endpoint.option} {endpoint.url}: {message} ({doing})", hint=hint) from None


def describe_failure(endpoint: Endpoint, exc: BaseException) -> tuple[str, str | None]:
    """(message, hint) for an exception raised while talking to ``endpoint``; the key never appears."""
    import openai

    retried = f" (after {endpoint.retries} retries)" if endpoint.retries else ""
    if isinstance(exc, openai.APITimeoutError):
        return (f"no answer within {endpoint.timeout:g} s{retried}",
                "The server is up but did not answer in time: is it overloaded, or the model too large for it?")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return (f"cannot connect ({type(cause).__name__}: {_first_line(cause)})",
                "Is the server running, and is the URL right? " + _URL_HINT)
    if isinstance(exc, openai.AuthenticationError):
        return (f"refused the API key (401): {_server_said(exc)}",
                f"Set the key in the environment ({endpoint.key_env}, or name another variable with --api-key-env).")
    if isinstance(exc, openai.PermissionDeniedError):
        return f"forbidden (403): {_server_said(exc)}", None
    if isinstance(exc, openai.NotFoundError):
        return (f"404 for model {endpoint.model!r}: {_server_said(exc)}",
                "Check the model name (`ollama list`, or GET /v1/models) and that the URL ends in /v1.")
    if isinstance(exc, openai.RateLimitError):
        return f"still rate-limited (429){retried}: {_server_said(exc)}", "Wait, or lower --concurrency."
    if isinstance(exc, openai.APIStatusError):
        return f"answered HTTP {exc.status_code}{retried if exc.status_code >= 500 else ''}: {_server_said(exc)}", None
    if isinstance(exc, ValueError):  # json.JSONDecodeError: a body cut off, or not JSON
        return f"answered with JSON that does not parse ({_first_line(exc)})", _URL_HINT
    if isinstance(exc, openai.OpenAIError):
        return _first_line(exc), None
    if isinstance(exc, (AttributeError, TypeError)):
        return f"answered something that is not an OpenAI-style response ({_first_line(exc)})", _URL_HINT
    raise exc


def _server_said(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        text = error.get("message") if isinstance(error, dict) else error
        if text:
            return _first_line(text)
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    return _first_line(text) or "no details"


def _first_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 160 else text[:157] + "..."
