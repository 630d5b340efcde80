"""Real HTTP servers for the endpoint tests: llama-cpp-python's OpenAI-compatible server started on a
GGUF (``start_llama_server``), and a tiny server of our own that misbehaves on purpose (``FaultServer``):
it answers 429 storms, 500s, HTML, truncated JSON, 401, or hangs, chosen by the first path segment of
the base URL (``http://127.0.0.1:PORT/<mode>/v1``)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base_url: str, process: subprocess.Popen | None = None, seconds: float = 120.0) -> None:
    """Waits until ``GET {base_url}/models`` answers; raises if the process died or time ran out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{base_url} did not come up within {seconds:g} s")


@contextlib.contextmanager
def running(command: list[str], base_url: str, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Runs ``command`` (a server) until the block ends; its output goes to ``log``."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            wait_until_up(base_url, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def start_llama_server(gguf: Path, log: Path, *extra: str) -> Iterator[str]:
    """A plain ``python -m llama_cpp.server --model GGUF`` (its defaults otherwise) on a free port:
    yields its base URL. The model is listed under the path given."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "1024", *extra]
    with running(command, url, log):
        yield url


def _completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


class FaultServer:
    """A real HTTP server (a thread) whose answers are chosen by the URL's first path segment:

    ``ok`` echoes the last user message; ``429`` always answers 429 (``Retry-After: 0``); ``429once``
    answers 429 then ok; ``500`` always 500; ``html`` a 200 HTML page; ``truncated`` JSON cut off;
    ``nochoices`` JSON without choices; ``401`` refuses the key; ``hang`` never answers a chat request.
    ``requests`` counts the chat requests per mode; ``keys`` holds the Authorization headers seen.
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.keys: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json", headers=()) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                mode = self.path.split("/")[1]
                if mode == "html":
                    self._send(200, b"<html><body>It works!</body></html>", "text/html")
                elif mode == "401":
                    self._send(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
                else:
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                mode = self.path.split("/")[1]
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                owner.requests[mode] = owner.requests.get(mode, 0) + 1
                owner.keys.append(self.headers.get("authorization", ""))
                count = owner.requests[mode]
                if mode == "ok" or (mode == "429once" and count > 1):
                    said = body["messages"][-1]["content"]
                    self._send(200, json.dumps(_completion(f"echo: {said}")).encode())
                elif mode in ("429", "429once"):
                    self._send(429, b'{"error": {"message": "Rate limit reached"}}', headers=[("retry-after", "0")])
                elif mode == "500":
                    self._send(500, b'{"error": {"message": "internal error"}}')
                elif mode == "html":
                    self._send(200, b"<html><body>Bad gateway page</body></html>", "text/html")
                elif mode == "truncated":
                    self._send(200, json.dumps(_completion("cut")).encode()[:40])
                elif mode == "nochoices":
                    self._send(200, b'{"error": "model is loading"}')
                elif mode == "401":
                    self._send(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
                elif mode == "hang":
                    owner.release.wait(60)
                else:
                    self._send(404, b'{"error": {"message": "no such route"}}')

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
