"""Malformed and slow requests, attacked over real HTTP: a bad Content-Length, a non-ASCII digit, a client that
never finishes its request, and a run whose export name is a shell command in the copy button."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import time

import pytest

from tests.ui.client import Client, signed_in


@pytest.fixture
def fresh(ui_runs, tmp_path, start_dashboard):
    """A dashboard of its own (a copy of the session's runs), and a visitor signed in to it."""
    root = tmp_path / "runs"
    shutil.copytree(ui_runs, root, symlinks=True)
    server = start_dashboard(root)
    return server, signed_in(server)


def post_head(visitor: Client, length: bytes) -> bytes:
    return (f"POST /api/chat HTTP/1.1\r\nHost: {visitor.netloc}\r\nCookie: {visitor.cookie}\r\n"
            f"Origin: http://{visitor.netloc}\r\nContent-Type: application/json\r\n").encode() + \
        b"Content-Length: " + length + b"\r\n\r\n"


def test_bad_numbers_are_refused_without_a_traceback(client, capfd):
    for length in (b"\xb2", "١٢".encode(), b"-5", b"1e3", b" ", b"0x10", b"99999999999999999999999", b"2, 2"):
        answer = client.raw(post_head(client, length) + b"{}")
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.0 413 Request Entity Too Large"), \
            (length, answer[:200])
    for offset in ("%C2%B2", "%D9%A1", "-1", "1.5", "99999999999999999999999999", "%00"):
        response = client.get(f"/api/metrics?run=tiny/v1&offset={offset}")
        assert response.status == 400 and "offset" in response.json()["error"], (offset, response.status)
    assert client.get("/api/metrics?run=tiny/v1&offset=12").status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_client_that_never_finishes_its_request_is_dropped(fresh):
    server, visitor = fresh
    server.request_timeout = 1.0  # the default is 20 s
    cases = {
        "request line": b"GET /api/runs HTTP/1.1\r\n",
        "headers": f"GET /api/runs HTTP/1.1\r\nHost: {visitor.netloc}\r\nX-Slow: ".encode(),
        "body": post_head(visitor, b"100") + b'{"model": ',
    }
    for what, sent in cases.items():
        started = time.perf_counter()
        with socket.create_connection((visitor.host, visitor.port), timeout=6) as slow:
            slow.sendall(sent)
            try:
                while slow.recv(4096):
                    pass  # (a 408 may come first)
            except TimeoutError:
                pytest.fail(f"a client stuck in its {what} still holds the connection after 6 s")
        assert time.perf_counter() - started < 4, what
    assert visitor.get("/api/runs").status == 200  # the server still serves


def test_the_copy_buttons_command_is_shell_quoted(fresh):
    server, visitor = fresh
    hostile = "x'; touch /tmp/quicktune-pwned; echo '$(id)`id`"
    manifest_path = server.root / "tiny" / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["export"]["name"] = hostile
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    shown = visitor.get("/api/run?run=tiny/v1")
    assert shown.status == 200
    [modelfile] = shown.json()["modelfiles"]
    create = shlex.split(modelfile["create"])
    assert create == ["ollama", "create", f"{hostile}:q4_k_m", "-f", create[-1]], modelfile["create"]
    assert create[-1].endswith("Modelfile.q4_k_m")
    assert shlex.split(modelfile["run"]) == ["ollama", "run", f"{hostile}:q4_k_m"]
