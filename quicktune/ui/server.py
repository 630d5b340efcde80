"""The dashboard's HTTP server: the standard library's threading server, no framework.

Routes: ``/`` (the page), ``/static/...`` (the front end shipped in the package), ``/api/...``
(JSON from ``views``; ``POST /api/chat`` streams an answer as plain text), ``/files/recipe/vN/...``
(a file inside a run folder: loss.png, eval charts, Modelfiles). GET routes only read. One thing is
written: ``POST /api/promote`` promotes a run through ``quicktune.promote.promote``, the function
``quicktune runs promote`` calls (same checks, same refusals, same history line, same ``ollama``
commands); ``POST /api/chat`` answers a chat. Safe by construction:

* every request passes ``guard.Gate`` first: this launch's key (the cookie the printed URL sets), a Host
  header naming this server (DNS rebinding), and not another site's page (``Sec-Fetch-Site``, ``Origin``);
  every response forbids framing and cross-origin reads (``frame-ancestors 'none'``,
  ``Cross-Origin-Resource-Policy: same-origin``), and no header carries CR, LF or non-ASCII;
* only files under the runs folder are read, after resolving symlinks (``views``); a path with ``..``, a
  backslash or a NUL is refused (403) before it is looked at;
* a promotion is accepted only from the dashboard's own page: its Origin must be this server and it must
  carry the token written into that page (``X-Quicktune-Token``, derived from the launch's key);
* bounded: a request body of at most ``MAX_BODY`` (413 above), a socket timeout on every connection
  (a client that never finishes its request is dropped), the chat's history trimmed in linear time, an
  answer stopped when its client goes away, and at most a few models kept loaded (``chats``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from rich.markup import escape
from rich.text import Text

from quicktune.console import console, err_console
from quicktune.errors import QuicktuneError
from quicktune.promote import promote
from quicktune.ui import views
from quicktune.ui.chats import ChatPool, chat_models
from quicktune.ui.guard import TOKEN_PARAM, Gate, header_value, is_loopback

MAX_BODY = 1 << 20  # a chat request: the conversation so far
REQUEST_TIMEOUT_S = 20.0  # a connection silent this long is dropped (a slow client cannot hold a thread)
POLL_S = 0.05  # how often the serving loop looks for a shutdown: Ctrl-C stops it well within a second
DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII only: str.isdigit() also accepts "²", which int() refuses
# Scripts and styles from this server only (uPlot sets inline styles on its elements); never inside a frame.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
FILE_POLICY = "default-src 'none'; img-src 'self'; frame-ancestors 'none'"
TOKEN_HEADER = "X-Quicktune-Token"
TOKEN_SLOT = b"__QUICKTUNE_TOKEN__"  # in static/index.html: replaced by the gate's page token
HOW_TO_SIGN_IN = (
    "Open the URL that `quicktune ui` printed when it started (it ends in ?token=...): it signs this browser in. "
    "The key changes at each start: after a restart, use the new URL."
)


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the front end, read once from the installed package: URL path -> (bytes, type)."""
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            else:
                kind = mimetypes.guess_type(item.name)[0] or "text/plain"
                found[f"{prefix}{item.name}"] = (item.read_bytes(), kind)

    walk(resources.files("quicktune.ui") / "static", "")
    return found


def whole_number(text: str, what: str) -> int:
    """``text`` as a number of ASCII digits; anything else is a ``QuicktuneError`` naming ``what``."""
    if not DIGITS.fullmatch(text):
        raise QuicktuneError(f"{what} must be a whole number, not {text[:40]!r}")
    return int(text)


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, host: str, port: int):
        self.root = root.resolve()
        self.request_timeout = REQUEST_TIMEOUT_S
        self.static = static_files()
        self.promoting = threading.Lock()  # one promotion at a time (its console output is captured)
        self.chats = ChatPool(self.root)
        self.examples: dict[tuple[str, float], dict[str, Any]] = {}
        self.examples_lock = threading.Lock()
        super().__init__((host, port), Handler)
        self.gate = Gate(host, self.server_address[1])  # the launch's key, the names it answers to
        page, kind = self.static["index.html"]
        self.static["index.html"] = (page.replace(TOKEN_SLOT, self.gate.page_token.encode("ascii")), kind)

    @property
    def token(self) -> str:
        """What the page sends with a promotion (derived from the launch's key, which stays in the gate)."""
        return self.gate.page_token

    @property
    def url(self) -> str:
        """The dashboard's address (a browser needs the key first: ``login_url``)."""
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def login_url(self) -> str:
        """The URL ``quicktune ui`` prints: the first visit with it signs the browser in."""
        return f"{self.url}?{TOKEN_PARAM}={self.gate.secret}"

    def handle_error(self, request, client_address) -> None:
        """A client that went away (reset, closed, timed out) is not news; anything else is a bug: its traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        err_console.print_exception()

    def example(self, name: str) -> dict[str, Any]:
        """data check's rendered example, computed once per run and recipe file version."""
        recipe = views.run_folder(self.root, name) / "recipe.yaml"
        key = (name, recipe.stat().st_mtime if recipe.is_file() else 0.0)
        with self.examples_lock:
            if key not in self.examples:
                self.examples[key] = views.example_view(self.root, name)
            return self.examples[key]


class Handler(BaseHTTPRequestHandler):
    server: Dashboard
    server_version = "quicktune-ui"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # on the socket: reads and writes give up after it
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # the terminal shows the URL, not every request
        pass

    # --- every response -------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._policy_sent = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-security-policy":
            self._policy_sent = True
        super().send_header(header_value(keyword), header_value(str(value)))

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Frame-Options", "DENY")
        if not getattr(self, "_policy_sent", False):
            self.send_header("Content-Security-Policy", "frame-ancestors 'none'")
        super().end_headers()

    # --- who may ask ----------------------------------------------------------------------------

    def _admitted(self) -> bool:
        """``guard.Gate``'s checks. False after answering: a refusal (403), or the sign-in (a cookie and a
        redirect to the same path without the key, so the key does not stay in the address bar or history)."""
        gate, host = self.server.gate, self.headers.get("Host", "")
        refused = gate.host_problem(host) or gate.cross_site_problem(
            self.headers.get("Sec-Fetch-Site"), self.headers.get("Origin"), host)
        if refused:
            return self._refuse(refused)
        parts = urlsplit(self.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        keys = [value for name, value in query if name == TOKEN_PARAM]
        if keys and self.command in ("GET", "HEAD"):
            if not gate.is_key(keys[-1]):
                return self._refuse("that is not this launch's key")
            bare = urlunsplit(("", "", parts.path, urlencode([(k, v) for k, v in query if k != TOKEN_PARAM]), ""))
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", bare)
            self.send_header("Set-Cookie", gate.set_cookie())
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        if not gate.signed_in(self.headers.get("Cookie", "")):
            return self._refuse("this dashboard needs the key of its launch")
        return True

    def _refuse(self, why: str) -> bool:
        """403 with how to get in: JSON for the page's API calls, a plain page for a browser."""
        self.close_connection = True
        if urlsplit(self.path).path.startswith("/api/"):
            self._error(HTTPStatus.FORBIDDEN, why, HOW_TO_SIGN_IN)
        else:
            body = f"403 Forbidden: {why}.\n\n{HOW_TO_SIGN_IN}\n".encode()
            self._send(HTTPStatus.FORBIDDEN, body, "text/plain; charset=utf-8")
        return False

    def _own_page(self) -> str | None:
        """Why a write request is not from this dashboard's own page (None when it is): its Origin must
        be ``http://`` + its Host, and it must carry the token written into the page."""
        host = self.headers.get("Host", "")
        origin = urlsplit(self.headers.get("Origin") or "")
        if origin.scheme != "http" or origin.netloc != host:
            return "promotions are accepted from this dashboard's own page only (its Origin is another site)"
        if not self.server.gate.is_page_token(self.headers.get(TOKEN_HEADER, "")):
            return "promotions need the token of this dashboard's page: reload the page (the server was restarted?)"
        return None

    # --- responses ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", PAGE_POLICY)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        body = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8", "replace")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str, hint: str | None = None, **more: Any) -> None:
        self._json({"error": message, "hint": hint, **more}, status)

    # --- GET ----------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._admitted():
            return None
        parts = urlsplit(self.path)
        path, query = parts.path, dict(parse_qsl(parts.query))
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if path.startswith("/files/"):
                return self._file(path[len("/files/"):])
            if path.startswith("/api/"):
                return self._api(path[len("/api/"):], query)
            return self._error(HTTPStatus.NOT_FOUND, f"no page {path}")
        except QuicktuneError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, exc.message, exc.hint)
        except OSError:
            raise  # the connection (handle_error drops it quietly)
        except Exception as exc:  # a bug: the page says so, the terminal gets the traceback
            return self._bug(exc)

    def _bug(self, exc: Exception) -> None:
        err_console.print_exception()
        self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"quicktune ui failed: {type(exc).__name__}: {exc}")

    def _static(self, name: str) -> None:
        found = self.server.static.get(name)
        if found is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no file {name}")
        body, kind = found
        text = kind.startswith(("text/", "application/javascript"))
        self._send(200, body, f"{kind}; charset=utf-8" if text else kind)
        return None

    def _file(self, raw: str) -> None:
        """A file inside a run folder, as /files/recipe/vN/relative/path."""
        relative = unquote(raw)
        pieces = relative.split("/")
        if ".." in pieces or "\\" in relative or "\0" in relative or relative.startswith("/"):
            return self._error(HTTPStatus.FORBIDDEN, "only files inside the runs folder are served")
        if len(pieces) < 3:
            return self._error(HTTPStatus.NOT_FOUND, "expected /files/recipe/vN/FILE")
        run_dir = views.run_folder(self.server.root, "/".join(pieces[:2]))
        target = run_dir.joinpath(*pieces[2:])
        if not views.inside(target, run_dir):  # a symlink out of the run folder
            return self._error(HTTPStatus.FORBIDDEN, "only files inside the runs folder are served")
        if not target.is_file():
            return self._error(HTTPStatus.NOT_FOUND, f"{relative}: no such file")
        kind = mimetypes.guess_type(target.name)[0] or "text/plain"
        if kind.startswith("text/") or kind == "application/json" or target.name.startswith("Modelfile"):
            kind = f"{'text/plain' if kind == 'text/html' else kind}; charset=utf-8"  # never run a file as a page
        with target.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", FILE_POLICY)
            self.end_headers()
            if self.command != "HEAD":
                left = size
                while left > 0 and (block := handle.read(min(left, 1 << 16))):
                    self.wfile.write(block)
                    left -= len(block)
        return None

    def _api(self, route: str, query: dict[str, str]) -> None:
        root = self.server.root
        if route == "runs":
            return self._json(views.runs_view(root))
        if route == "run":
            return self._json(views.run_view(root, query.get("run", "")))
        if route == "metrics":
            offset = whole_number(query.get("offset", "0"), "offset")
            return self._json(views.metrics_since(root, query.get("run", ""), offset))
        if route == "example":
            return self._json(self.server.example(query.get("run", "")))
        if route == "compare":
            return self._json(views.compare_view(root, query.get("a", ""), query.get("b", "")))
        if route == "history":
            return self._json(views.history_view(root, query.get("recipe") or None))
        if route == "chat/models":
            return self._json({"models": chat_models(root)})
        return self._error(HTTPStatus.NOT_FOUND, f"no API {route}")

    # --- POST: a promotion, the chat -----------------------------------------------------------

    def do_POST(self) -> None:
        if not self._admitted():
            return None
        path = urlsplit(self.path).path
        if path == "/api/promote":
            return self._promote()
        if path != "/api/chat":
            return self._error(HTTPStatus.NOT_FOUND, f"no API {path}")
        request = self._body("chat request")
        if request is not None:
            self._chat(request)
        return None

    def _body(self, what: str) -> dict[str, Any] | None:
        """The request's JSON object; None after answering 400 (not one), 411 (no length) or 413 (too large).
        The socket's timeout bounds a client that sends less than it announced."""
        given = self.headers.get("Content-Length")
        if given is None or not DIGITS.fullmatch(given.strip()):
            self.close_connection = True
            status = HTTPStatus.LENGTH_REQUIRED if given is None else HTTPStatus.BAD_REQUEST
            self._error(status, f"expected a JSON {what} with its Content-Length")
            return None
        length = int(given)
        if length > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot be used again
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"the {what} is {length:,} bytes; at most {MAX_BODY:,} are accepted",
                        "Start a new conversation (Reset): the page sends the whole conversation with each message.")
            return None
        data = self.rfile.read(length)
        try:
            if len(data) < length:
                raise ValueError
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError
        except (ValueError, RecursionError):
            self._error(HTTPStatus.BAD_REQUEST, f"expected a JSON {what}")
            return None
        return request

    def _promote(self) -> None:
        """``POST /api/promote`` {run: recipe/vN, force, reason, name}: what ``quicktune runs promote`` does.
        200 {entry: the history line, output}; a refusal 400 {error, problems, hint, output}, nothing recorded."""
        refused = self._own_page()
        if refused:
            return self._error(HTTPStatus.FORBIDDEN, refused)
        request = self._body("promotion request")
        if request is None:
            return None
        try:
            entry, output = promote_run(self.server, request)
        except PromotionRefused as refusal:
            error = refusal.error
            return self._error(HTTPStatus.BAD_REQUEST, error.message, error.hint, problems=error.problems,
                               output=refusal.output)
        except Exception as exc:
            return self._bug(exc)
        return self._json({"entry": asdict(entry), "output": output})

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (it sends nothing more once its request is read: a readable
        socket that yields no byte is a closed one)."""
        try:
            poller = select.poll()  # (not select.select: it fails on descriptors above 1023)
            poller.register(self.connection, select.POLLIN)
            events = poller.poll(0)
            if events and events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            return bool(events) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _chat(self, request: dict[str, Any]) -> None:
        try:
            label, pieces = self.server.chats.prepare(
                request.get("model", ""),
                request.get("history", []),
                request.get("message", ""),
                request.get("max_tokens", 256),
                gone=self._client_gone,
            )
            started = time.perf_counter()
            first = next(pieces, None)  # errors (a message too long for the context) surface before the answer
        except QuicktuneError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, exc.message, exc.hint)
        except Exception as exc:
            return self._bug(exc)
        self._stream(label, first, pieces, started)
        return None

    def _stream(self, label: str, first: str | None, pieces, started: float) -> None:
        """The answer as it is generated: plain UTF-8 text, flushed piece by piece, then the connection closes.
        Generation stops when the client goes away (``chats`` asks ``_client_gone`` between pieces)."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Quicktune-Model", label)  # send_header keeps it to printable ASCII
            self.send_header("X-First-Piece-Ms", f"{(time.perf_counter() - started) * 1000:.0f}")
            self.end_headers()
            if first is not None:
                self.wfile.write(first.encode("utf-8"))
                self.wfile.flush()
                for piece in pieces:
                    self.wfile.write(piece.encode("utf-8"))
                    self.wfile.flush()
        except OSError:
            pass  # the page was closed, the chat reset, or the client stopped reading: stop generating
        except QuicktuneError as exc:
            self.wfile.write(f"\n[error: {exc.message}]".encode())
        finally:
            pieces.close()


class PromotionRefused(Exception):
    """A promotion ``quicktune.promote.promote`` refused (its ``QuicktuneError``), with what it printed."""

    def __init__(self, error: QuicktuneError, output: str):
        super().__init__(error.message)
        self.error, self.output = error, output


def promote_run(server: Dashboard, request: dict[str, Any]):
    """Promotes ``request["run"]`` (recipe/vN inside the runs folder) with ``quicktune.promote.promote``, the
    function ``quicktune runs promote`` calls: ``force``, ``reason`` and ``name`` are its --force, --reason and
    --as; Ollama runs when it is on PATH, else its commands are shown. Returns (the history line written,
    what the command printed: the comparison table, the Ollama commands); a refusal is ``PromotionRefused``."""
    name = str(request.get("name") or "").strip() or None
    reason = str(request.get("reason") or "") or None
    entry, refusal = None, None
    with server.promoting:
        console.begin_capture()  # rich buffers per thread: only this request's output
        try:
            run_dir = views.run_folder(server.root, str(request.get("run", "")))
            entry = promote(str(run_dir), server.root, name=name, force=request.get("force") is True, reason=reason)
        except QuicktuneError as exc:
            refusal = exc
        finally:
            output = _plain(console.end_capture())
    if refusal is not None:
        raise PromotionRefused(refusal, output)
    return entry, output


def _plain(captured: str) -> str:
    """Captured console output without its colour codes."""
    return Text.from_ansi(captured).plain.rstrip()


def serve(root: Path, host: str, port: int) -> Dashboard:
    """A started server (its own thread); ``shutdown()`` stops it."""
    try:
        server = Dashboard(root, host, port)
    except OSError as exc:
        raise QuicktuneError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another port with --port (0 picks a free one).",
        ) from None
    threading.Thread(target=server.serve_forever, args=(POLL_S,), name="quicktune-ui", daemon=True).start()
    return server


def run_dashboard(runs_dir: str, host: str, port: int) -> None:
    """``quicktune ui``: serve until Ctrl-C, then end the process. Another address than loopback only when asked
    for, with a warning. Prints the URL with the launch's key (``Dashboard.login_url``)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise QuicktuneError(
            f"no runs folder at {root}",
            hint="Train something first (quicktune run smollm2-demo), or point --runs-dir at your runs folder.",
        )
    if not is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] listening on {escape(host)}: other machines can reach this dashboard on port "
            f"{port or '(chosen)'}. The key in its URL is the only lock, and the connection is plain HTTP: anyone "
            "on the network between you can read the key, every run and the chats."
        )
    server = serve(root, host, port)
    console.print(f"quicktune ui: [bold]{escape(server.login_url)}[/]  (runs in {escape(str(server.root))}; "
                  "Ctrl-C stops)", soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
    console.print("stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # The interpreter's teardown of what the pages loaded (tokenizers, llama.cpp models) took up to half a
    # second on a busy machine, and a chat's thread may still be inside llama.cpp: end here, now.
    os._exit(0)


def stop(server: Dashboard) -> None:
    """Stops serving within ``POLL_S``; a second Ctrl-C meanwhile is ignored (it would only print a traceback).
    An in-flight promotion gets half a second to finish writing its history line."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    server.shutdown()
    server.server_close()
    if server.promoting.acquire(timeout=0.5):
        server.promoting.release()
