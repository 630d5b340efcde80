"""The dashboard's HTTP server: the standard library's threading server, no framework.

Routes: ``/`` (the page), ``/static/...`` (the front end shipped in the package), ``/api/...``
(JSON from ``views``; ``POST /api/chat`` streams an answer as plain text), ``/files/recipe/vN/...``
(a file inside a run folder: loss.png, eval charts, Modelfiles). Nothing is written: the only POST
answers a chat. Safe by construction:

* only files under the runs folder are served, after resolving symlinks; a path with ``..``, a
  backslash or a NUL is refused (403) before it is looked at;
* on a loopback address, a request whose Host header is not a loopback name is refused (DNS
  rebinding), and a chat request from another origin is refused (another web page cannot use it).
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from quicktune.console import console, err_console
from quicktune.errors import QuicktuneError
from quicktune.ui import views
from quicktune.ui.chats import ChatPool, chat_models

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
MAX_BODY = 1 << 20  # a chat request: the conversation so far
# Scripts and styles from this server only (uPlot sets inline styles on its elements).
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, host: str, port: int):
        self.root = root.resolve()
        self.loopback = is_loopback(host)
        self.static = static_files()
        self.chats = ChatPool(self.root)
        self.examples: dict[tuple[str, float], dict[str, Any]] = {}
        self.examples_lock = threading.Lock()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

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

    def log_message(self, format: str, *args: Any) -> None:  # the terminal shows the URL, not every request
        pass

    # --- checks -------------------------------------------------------------------------------

    def _host_allowed(self) -> bool:
        if not self.server.loopback:
            return True
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        return is_loopback(host)

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == self.headers.get("Host", "")

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
        body = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str, hint: str | None = None) -> None:
        self._json({"error": message, "hint": hint}, status)

    # --- GET ----------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_allowed():
            return self._error(HTTPStatus.FORBIDDEN, "this dashboard answers only on a loopback address")
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
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
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(size))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; img-src 'self'")
        self.end_headers()
        if self.command != "HEAD":
            with target.open("rb") as handle:
                while block := handle.read(1 << 16):
                    self.wfile.write(block)
        return None

    def _api(self, route: str, query: dict[str, str]) -> None:
        root = self.server.root
        if route == "runs":
            return self._json(views.runs_view(root))
        if route == "run":
            return self._json(views.run_view(root, query.get("run", "")))
        if route == "metrics":
            offset = query.get("offset", "0")
            return self._json(views.metrics_since(root, query.get("run", ""), int(offset) if offset.isdigit() else 0))
        if route == "example":
            return self._json(self.server.example(query.get("run", "")))
        if route == "compare":
            return self._json(views.compare_view(root, query.get("a", ""), query.get("b", "")))
        if route == "chat/models":
            return self._json({"models": chat_models(root)})
        return self._error(HTTPStatus.NOT_FOUND, f"no API {route}")

    # --- POST: the chat -----------------------------------------------------------------------

    def do_POST(self) -> None:
        if not self._host_allowed() or not self._same_origin():
            return self._error(HTTPStatus.FORBIDDEN, "chat requests are accepted from this dashboard only")
        if urlsplit(self.path).path != "/api/chat":
            return self._error(HTTPStatus.NOT_FOUND, f"no API {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, "expected a JSON chat request")
        try:
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "expected a JSON chat request")
        try:
            label, pieces = self.server.chats.prepare(
                str(request.get("model", "")),
                request.get("history", []),
                request.get("message", ""),
                request.get("max_tokens", 256),
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
        """The answer as it is generated: plain UTF-8 text, flushed piece by piece, then the connection closes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Quicktune-Model", label.encode("ascii", "replace").decode("ascii"))
        self.send_header("X-First-Piece-Ms", f"{(time.perf_counter() - started) * 1000:.0f}")
        self.end_headers()
        try:
            if first is not None:
                self.wfile.write(first.encode("utf-8"))
                self.wfile.flush()
                for piece in pieces:
                    self.wfile.write(piece.encode("utf-8"))
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed or the chat reset: stop generating
        except QuicktuneError as exc:
            self.wfile.write(f"\n[error: {exc.message}]".encode())
        finally:
            pieces.close()


def serve(root: Path, host: str, port: int) -> Dashboard:
    """A started server (its own thread); ``shutdown()`` stops it."""
    try:
        server = Dashboard(root, host, port)
    except OSError as exc:
        raise QuicktuneError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another port with --port (0 picks a free one).",
        ) from None
    threading.Thread(target=server.serve_forever, name="quicktune-ui", daemon=True).start()
    return server


def run_dashboard(runs_dir: str, host: str, port: int) -> None:
    """``quicktune ui``: serve until Ctrl-C. Another address than loopback only when asked for, with a warning."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise QuicktuneError(
            f"no runs folder at {root}",
            hint="Train something first (quicktune run smollm2-demo), or point --runs-dir at your runs folder.",
        )
    if not is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine on port {port or '(chosen)'} "
            "can read every run in the folder and chat with its models (there is no login)."
        )
    server = serve(root, host, port)
    console.print(f"quicktune ui: [bold]{server.url}[/]  (runs in {server.root}; Ctrl-C stops)", soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.shutdown()
        server.server_close()
