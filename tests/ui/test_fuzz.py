"""A property test over real HTTP: whatever the request line, headers and body (hypothesis draws them, sent as raw
bytes on a socket), the dashboard never answers 500, never prints a traceback, never sends what lies behind a
symlink out of its runs folder, and never even opens it (Python's audit hooks)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.ui.client import signed_in
from tests.ui.reads import reads_under
from tests.ui.test_symlinks import SECRET, trapped_runs

ROUTES = ["/", "/index.html", "/static/", "/static/app.js", "/static/vendor/", "/files/", "/files/clean/v1/",
          "/files/trap/v2/", "/files/clean/v1/export/", "/api/", "/api/runs", "/api/run?run=", "/api/metrics?run=",
          "/api/metrics?run=clean/v1&offset=", "/api/compare?a=clean/v1&b=", "/api/compare?a=", "/api/history",
          "/api/history?recipe=", "/api/chat/models", "/api/example?run=", "/api/chat", "/api/promote", "/nothing"]
PIECES = ["clean/v1", "clean/v3", "trap/v1", "trap/v2", "trap/v3", "trap/v4", "trap/v7", "elsewhere/v1", "hist/v1",
          "hist", "elsewhere", "trap", "recipe.yaml", "metrics.jsonl", "manifest.json", "eval/base-linked.json",
          "loss.png", "..", "../", "%2e%2e/", "..%2F", "%2F", "%00", "\x00", "~", "/etc/passwd", "\\", "²", "١٢",
          "\u202e", "\n", "%0d%0a", "&offset=", "&token=", "?", "#", ";", " ", "v1\n", "%C2%B2", "%ff", "0", "-1"]
METHODS = ["GET"] * 6 + ["POST"] * 4 + ["HEAD", "PUT", "OPTIONS", "get", "G\x00T", ""]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


def paths():
    piece = st.sampled_from(PIECES)
    tail = st.lists(st.one_of(piece, piece, TEXT, TEXT.map(quote)), max_size=4).map("".join)
    return st.tuples(st.sampled_from(ROUTES), tail).map(lambda parts: parts[0] + parts[1])


def header(values: list[str]):
    """None (left out) most often, one of ``values``, or any text."""
    return st.one_of(st.none(), st.none(), st.none(), st.sampled_from(values), TEXT)


def mostly(value: str, values: list[str]):
    """``value`` three times in four, else as ``header``."""
    return st.one_of(st.just(value), st.just(value), st.just(value), header(values))


def json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def bodies():
    turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", ""]),
                                            "content": st.one_of(TEXT, json_values())}), max_size=6)
    chat = st.fixed_dictionaries({}, optional={
        "model": st.one_of(st.sampled_from(["", "x", "base:", "base:trap/v2", "trap/v2:q4_k_m", "clean/v9:q4_k_m",
                                            "../x:f16", "base:../../etc", "clean/v1:zz"]), json_values()),
        "history": st.one_of(turns, json_values()), "message": st.one_of(TEXT, json_values()),
        "max_tokens": st.one_of(st.integers(), st.floats(), TEXT, st.none(), st.booleans()),
        "run": st.one_of(st.sampled_from(PIECES), TEXT), "force": json_values(), "reason": json_values(),
        "name": json_values()})
    return st.one_of(st.none(), st.binary(max_size=64), json_values().map(repr).map(str.encode),
                     chat.map(lambda body: json.dumps(body).encode()))


@pytest.fixture(scope="module")
def target(ui_runs, tmp_path_factory):
    from quicktune.ui.server import serve

    root, outside, _ = trapped_runs(ui_runs, tmp_path_factory.mktemp("fuzz"))
    server = serve(root, "127.0.0.1", 0)
    server.request_timeout = 2.0
    yield server, signed_in(server, timeout=60), outside
    server.shutdown()
    server.server_close()


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), path=paths(), body=bodies(), data=st.data())
def test_no_request_breaks_the_dashboard_or_reads_outside_its_runs_folder(target, capfd, method, path, body, data):
    server, visitor, outside = target
    own, port = f"http://{visitor.netloc}", visitor.port
    headers = {
        "Host": data.draw(mostly(visitor.netloc, [f"evil.example:{port}", "127.0.0.1", f"[::1]:{port}"])),
        "Cookie": data.draw(mostly(visitor.cookie, [f"{visitor.cookie}x", "a=b"])),
        "Origin": data.draw(header([own, "null", "http://evil.example"])),
        "Sec-Fetch-Site": data.draw(header(["same-origin", "none", "cross-site", "same-site"])),
        "X-Quicktune-Token": data.draw(header([server.token, server.gate.secret])),
        "Content-Type": data.draw(header(["application/json", "text/plain"])),
        "Content-Length": data.draw(st.one_of(st.just(None if body is None else str(len(body))),
                                              header(["0", "-1", "²", "99999999999", "1" * 30]))),
    }
    lines = [f"{method} {path} HTTP/1.1".encode("utf-8", "surrogateescape")]
    lines += [f"{name}: {value}".encode() for name, value in headers.items() if value is not None]
    request = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    with reads_under(outside) as opened:
        answer = visitor.raw(request, timeout=60)
    status = answer.split(b"\r\n", 1)[0].split(b" ")
    # no status line: http.server could not read the request line and answered as HTTP/0.9 does (a body alone);
    # nothing at all: a client that sent less than it announced, dropped at the socket's timeout
    code = int(status[1]) if status[0].startswith(b"HTTP/") else None
    event(f"answered {code}")  # (pytest --hypothesis-show-statistics shows how the answers spread)
    assert code is None or code < 500 or code in (501, 505), (request[:300], answer[:300])  # 501/505: http.server
    assert b"Traceback" not in answer and SECRET.encode() not in answer, (request[:300], answer[:300])
    assert opened == [], (request[:300], opened)
    err = capfd.readouterr().err
    assert "Traceback" not in err, (request[:300], err[-2000:])
