"""``quicktune serve``: an OpenAI-compatible server on an exported GGUF, answering as ``quicktune eval`` does.

The server is llama-cpp-python's (``llama_cpp.server``: FastAPI + uvicorn, ``/v1/chat/completions``,
``/v1/models``); quicktune gives it its own chat handler. Every request is rendered, stopped and decoded
the way ``eval --gguf`` reads the exported model (evaluate/runner.py ``evaluate_gguf``):

* the prompt's token ids come from the run's trained chat tokenizer (``encode_prompt``), with the
  Modelfile's SYSTEM prompt inserted when the request has no system message, as Ollama does;
* the whole prompt is evaluated afresh (``llamacpp.sample``: llama-cpp-python would otherwise reuse the
  KV cache of the previous request, and the same greedy request could answer differently twice);
* the answer ends at the trained stop tokens (eos, end of turn) and is decoded without them;
* a request that leaves out temperature or top_p gets the Modelfile's, and repeat_penalty 1.0
  (llama_cpp.server's own default is 1.1, which changes greedy answers).

So ``quicktune eval RUN --endpoint http://127.0.0.1:8080/v1 --model NAME`` reads the same answers as
``quicktune eval RUN --gguf``. A GGUF no run exported is served with its own chat template, eos and
end-of-turn token, as ``quicktune chat`` talks to it.
"""

from __future__ import annotations

import codecs
import errno
import json
import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune import llamacpp
from quicktune.base_model import open_run
from quicktune.console import print_serving
from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens, stop_token_ids
from quicktune.errors import QuicktuneError
from quicktune.export.exporter import ollama_tag
from quicktune.models import read_gguf_fields
from quicktune.runs import read_manifest, resolve_run
from quicktune.templates import TemplateError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SAMPLED_PATHS = ("/v1/chat/completions", "/v1/completions")  # the requests RequestDefaults completes


class RequestError(QuicktuneError):
    """A chat request the served model cannot answer as asked (answered with HTTP 400)."""


@dataclass
class ServedModel:
    """What ``quicktune serve`` serves: the GGUF, the name clients send, and how prompts are made."""

    gguf: Path
    name: str
    label: str  # recipe/vN (quant), or the GGUF's file name
    num_ctx: int
    tokenizer: ChatTokenizer
    trained: bool  # True: a run's trained tokenizer gives the prompt ids (as eval); False: the GGUF's own template
    system: str | None = None  # inserted when a request has no system message (the Modelfile's SYSTEM)
    defaults: dict[str, float] = field(default_factory=dict)  # for requests that leave them out


def exporting_run(gguf: Path, runs_root: Path) -> tuple[Path, str] | None:
    """The run whose export wrote ``gguf`` and that file's quantization; None for any other GGUF."""
    try:
        run_dir = resolve_run(str(gguf), runs_root)
    except QuicktuneError:
        return None
    ggufs = (read_manifest(run_dir).get("export") or {}).get("ggufs") or {}
    for quant, item in ggufs.items():
        if isinstance(item, dict) and (run_dir / str(item.get("file"))).resolve() == Path(gguf).resolve():
            return run_dir, quant
    return None


def served_model(target: Any, runs_root: Path, name: str | None = None) -> ServedModel:
    """``target`` is what ``chat.resolve_target`` resolved (GGUF, system prompt, temperature, top_p,
    context, label); a GGUF some run exported is served with that run's trained tokenizer and named as
    its Modelfile names it (``recipe-vN:quant``), any other GGUF with its own template, named by its stem."""
    llamacpp.check_gguf(target.gguf)
    defaults = {"temperature": target.temperature, "top_p": target.top_p, "repeat_penalty": 1.0}
    found = exporting_run(target.gguf, runs_root)
    if found is None:
        fields = read_gguf_fields(target.gguf, "tokenizer.")
        template = fields.get("tokenizer.chat_template")
        if not template:
            raise QuicktuneError(f"{target.gguf}: the GGUF has no chat template (tokenizer.chat_template)",
                                 hint="Serve an instruction-tuned chat model, or a run: quicktune serve RUN.")
        tokenizer = ChatTokenizer(None, template, gguf_special_tokens(fields), str(target.gguf))
        return ServedModel(target.gguf, name or target.gguf.stem, target.label, target.num_ctx, tokenizer, False,
                           target.system, defaults)
    run_dir, quant = found
    run = open_run(run_dir)
    default_name = ollama_tag(run.manifest["export"].get("name") or run_dir.parent.name, quant)
    return ServedModel(target.gguf, name or default_name, target.label, target.num_ctx, run.chat_tokenizer(), True,
                       target.system, defaults)


# --- one request -------------------------------------------------------------------------------


def conversation(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, str]]:
    """The request's messages as the template reads them (role and text), with ``system`` first when
    none of them is a system message (``developer`` is OpenAI's newer name for ``system``)."""
    if not messages:
        raise RequestError("no messages")
    turns = []
    for index, message in enumerate(messages):
        role = ROLES.get(message.get("role"))
        if role is None:
            raise RequestError(f"messages[{index}]: the role {message.get('role')!r} is not served "
                               f"(only {', '.join(ROLES)})")
        turns.append({"role": role, "content": _text(message.get("content"), index)})
    if system and not any(turn["role"] == "system" for turn in turns):
        turns.insert(0, {"role": "system", "content": system})
    return turns


def _text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text") or "") for part in content)
    raise RequestError(f"messages[{index}]: only text content is served")


def unsupported(options: dict[str, Any]) -> list[str]:
    """The request's options this server does not honour (and refuses rather than ignore)."""
    format_type = (options.get("response_format") or {}).get("type")
    refused = {
        "tools": options.get("tools") or options.get("functions"),
        "response_format": format_type not in (None, "text"),
        "logprobs": options.get("logprobs") or options.get("top_logprobs"),
        "logit_bias": options.get("logit_bias"),
        "mirostat_mode": options.get("mirostat_mode"),
    }
    return [name for name, asked in refused.items() if asked]


@dataclass
class Answer:
    """One answer as it is generated: its tokens (without the stop token) and why it ended."""

    ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    stopped_by_text: bool = False  # a stop string of the request ended it (its text is cut there)
    text: str = ""


def answer_pieces(llama: Any, tokens: Iterator[int], stop_ids: set[int], stop_texts: list[str],
                  answer: Answer) -> Iterator[str]:
    """The answer's text as it grows, piece by piece; ``answer`` holds its tokens and end when done.

    A piece that could be the start of one of ``stop_texts`` is held back until it is not."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    holdback = max((len(s) for s in stop_texts), default=1) - 1
    text, sent = "", 0
    for token in tokens:
        if token in stop_ids:
            answer.finish_reason = "stop"
            break
        answer.ids.append(token)
        text += decoder.decode(llama.detokenize([token]))
        if _cut(text, stop_texts) is not None:
            break
        if len(text) - holdback > sent:
            yield text[sent : len(text) - holdback]
            sent = len(text) - holdback
    text += decoder.decode(b"", final=True)
    cut = _cut(text, stop_texts)
    if cut is not None:
        text, answer.finish_reason, answer.stopped_by_text = text[:cut], "stop", True
    answer.text = text
    if len(text) > sent:
        yield text[sent:]


def _cut(text: str, stop_texts: list[str]) -> int | None:
    found = [text.find(stop) for stop in stop_texts if stop and stop in text]
    return min(found) if found else None


class ChatHandler:
    """llama-cpp-python's chat handler for the served model (a ``LlamaChatCompletionHandler``): called
    with the loaded ``Llama`` and the request's options, it returns an OpenAI chat completion, or its
    chunks when the request streams."""

    def __init__(self, model: ServedModel):
        self.model = model
        self._stop_ids: set[int] | None = None

    def stop_ids(self, llama: Any) -> set[int]:
        """The trained stop tokens (eos and end of turn); for a GGUF alone its eos and end of turn, as chat."""
        if self._stop_ids is None:
            if self.model.trained:
                self._stop_ids = stop_token_ids(self.model.tokenizer)
            else:
                self._stop_ids = {llama.token_eos()}
                end_of_turn = self.model.tokenizer.end_of_turn()
                ids = llama.tokenize(end_of_turn.encode("utf-8"), add_bos=False, special=True) if end_of_turn else []
                if len(ids) == 1:
                    self._stop_ids.add(ids[0])
        return self._stop_ids

    def prompt_ids(self, llama: Any, turns: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids: the trained tokenizer's, as eval makes them; for a GGUF alone, its
        template's text tokenized by llama.cpp with the vocabulary's BOS (once, as the judge does)."""
        try:
            if self.model.trained:
                return self.model.tokenizer.encode_prompt(turns)
            text = self.model.tokenizer.render(turns, add_generation_prompt=True)
        except (TemplateError, QuicktuneError) as exc:
            raise RequestError(f"the chat template cannot render this conversation: {exc}") from None
        ids = llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        bos = llama.token_bos()
        if len(ids) > 1 and ids[0] == ids[1] == bos:  # the template wrote BOS and the vocabulary adds it too
            ids = ids[1:]
        return ids

    def __call__(self, *, llama: Any, messages: list[dict[str, Any]], stream: bool = False,
                 max_tokens: int | None = None, stop: str | list[str] | None = None, **options: Any) -> Any:
        try:
            refused = unsupported(options)
            if refused:
                raise RequestError(f"quicktune serve does not support {', '.join(refused)}")
            prompt = self.prompt_ids(llama, conversation(messages, self.model.system))
        except RequestError as exc:
            from fastapi import HTTPException

            raise HTTPException(status_code=400, detail=exc.message) from None
        context = llamacpp.context_size(llama)
        room = context - len(prompt)
        if room < 1:  # llama_cpp.server turns this message into a 400 context_length_exceeded
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {context}")
        tokens = llamacpp.sample(llama, prompt, self.stop_ids(llama), min(max_tokens or room, room),
                                 **_sampling(options))
        stop_texts = [stop] if isinstance(stop, str) else list(stop or [])
        answer = Answer()
        pieces = answer_pieces(llama, tokens, self.stop_ids(llama), stop_texts, answer)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            return self._chunks(pieces, answer, ident, created)
        for _ in pieces:
            pass
        text = answer.text if answer.stopped_by_text else llama.detokenize(answer.ids).decode("utf-8", errors="replace")
        return {
            "id": ident, "object": "chat.completion", "created": created, "model": self.model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(answer.ids),
                      "total_tokens": len(prompt) + len(answer.ids)},
        }

    def _chunks(self, pieces: Iterator[str], answer: Answer, ident: str, created: int) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.model.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        yield chunk({"role": "assistant"})
        for piece in pieces:
            yield chunk({"content": piece})
        yield chunk({}, answer.finish_reason)


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling options, as ``llamacpp.sample`` takes them."""
    names = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
             "presence_penalty", "seed", "logits_processor", "grammar")
    return {name: options[name] for name in names if options.get(name) is not None}


class RequestDefaults:
    """ASGI middleware: a completion request that leaves out a sampling option gets the served model's
    (the Modelfile's temperature and top_p, repeat_penalty 1.0) instead of llama_cpp.server's defaults,
    which the request model fills in before the chat handler could tell them from the client's."""

    def __init__(self, app: Any, defaults: dict[str, float]):
        self.app = app
        self.defaults = defaults

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in SAMPLED_PATHS:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = self.completed(body)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def completed(self, body: bytes) -> bytes:
        """The request body with the defaults filled in where it has none (anything not a JSON object: as is)."""
        try:
            request = json.loads(body)
        except ValueError:
            return body
        if not isinstance(request, dict):
            return body
        for key, value in self.defaults.items():
            if request.get(key) is None:
                request[key] = value
        return json.dumps(request).encode("utf-8")


# --- the server ----------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, before the model loads, so a port in use fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise QuicktuneError(
            f"--host {host}: not an address of this machine ({exc.strerror})",
            hint=f"The default is {DEFAULT_HOST} (this machine only); 0.0.0.0 serves every network.",
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise QuicktuneError(f"cannot serve on {host}:{port}: the port is in use",
                                 hint="Pick another with --port, or stop the server using it.") from None
        raise QuicktuneError(f"cannot serve on {host}:{port}: {exc.strerror}",
                             hint="Pick another --host or --port.") from None
    return sock


def base_url(host: str, port: int) -> str:
    """The URL clients use: the loopback address when serving every network."""
    shown = {"0.0.0.0": DEFAULT_HOST, "::": "::1", "": DEFAULT_HOST}.get(host, host)
    return f"http://[{shown}]:{port}/v1" if ":" in shown else f"http://{shown}:{port}/v1"


def client_example(url: str, name: str) -> str:
    """A one-line curl command that asks the served model something."""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})
    return (f"curl {url}/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}")


def start(model: ServedModel, host: str, port: int) -> tuple[Any, socket.socket]:
    """Binds ``host:port``, then loads the model into llama_cpp.server's app: (app, socket)."""
    sock = listen(host, port)
    try:
        app = llamacpp.serving_app(model.gguf, name=model.name, n_ctx=model.num_ctx, chat_handler=ChatHandler(model))
    except BaseException:
        sock.close()
        raise
    from starlette.exceptions import HTTPException

    app.add_middleware(RequestDefaults, defaults=model.defaults)
    app.add_exception_handler(HTTPException, openai_error)
    return app, sock


async def openai_error(request: Any, exc: Any) -> Any:
    """A refused request (HTTP 4xx/5xx raised by a route or the chat handler) answered as the OpenAI API
    answers one, ``{"error": {"message": ...}}``, so a client shows the reason, not just the status."""
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    error = {"message": str(exc.detail), "type": kind, "param": None, "code": None}
    return JSONResponse({"error": error}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def run(app: Any, sock: socket.socket) -> None:
    """Serves ``app`` on ``sock`` until Ctrl-C, then raises KeyboardInterrupt once the answers under way
    are sent (uvicorn shuts down on SIGINT and SIGTERM; it only returns after one, which it re-raises)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    raise KeyboardInterrupt  # where SIGINT is ignored (a background job), uvicorn's re-raise does nothing


def serve(model: ServedModel, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serves ``model`` on ``host:port`` until Ctrl-C (KeyboardInterrupt); says where and how to ask it."""
    app, sock = start(model, host, port)
    url = base_url(host, port)
    print_serving(model.label, url, model.name, model.num_ctx, model.system, client_example(url, model.name))
    run(app, sock)
