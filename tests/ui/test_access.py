"""Who may use the dashboard, attacked over real HTTP: the launch's key (cookie), the Host header (DNS rebinding),
requests from another site's page, and the headers every response carries."""

from __future__ import annotations

import socket

import pytest

from tests.ui.client import Client, signed_in


def assert_refused(response, page: bool) -> None:
    assert response.status == 403, (response.status, response.text[:300])
    if page:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "printed" in response.text and "?token=" in response.text  # how to get in
    else:
        assert "printed" in response.json()["hint"]


# --- 1. the launch's key ------------------------------------------------------------------------------


def test_without_the_key_every_request_is_refused(dashboard, ui_runs):
    stranger = Client(dashboard.url)
    for path in ("/", "/index.html", "/static/app.js", "/files/tiny/v1/metrics.jsonl", "/nothing"):
        assert_refused(stranger.get(path), page=True)
    for path in ("/api/runs", "/api/run?run=tiny/v1", "/api/metrics?run=tiny/v3", "/api/example?run=tiny/v1",
                 "/api/chat/models", "/api/history"):
        assert_refused(stranger.get(path), page=False)
    # a POST with no Origin and no cookie (a local process, a script): refused before its body is read
    chat = stranger.request("POST", "/api/chat", {"model": "tiny/v1:q4_k_m", "history": [], "message": "hi"})
    assert_refused(chat, page=False)
    assert_refused(stranger.request("POST", "/api/promote", {"run": "tiny/v1"}), page=False)
    # a wrong key, a key in the wrong cookie, another port's cookie, the page's promotion token as a key
    key, cookie = dashboard.gate.secret, dashboard.gate.cookie
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for sent in (f"{cookie}={wrong}", f"quicktune-ui-1={key}", f"{cookie}=", f"{cookie}={dashboard.token}",
                 f"other={key}", "garbage;;;===", f"{cookie}={key[:16]}"):
        assert_refused(stranger.request("GET", "/api/runs", headers={"Cookie": sent}), page=False)
    refused = stranger.sign_in(f"{dashboard.url}?token={wrong}")
    assert refused.status == 403 and "Set-Cookie" not in refused.headers and stranger.cookie is None
    assert stranger.get(f"/api/runs?token={key}").status == 303  # the key works on any path


def test_the_printed_url_signs_in_once_with_a_strict_cookie(dashboard):
    visitor = Client(dashboard.url)
    assert dashboard.login_url == f"{dashboard.url}?token={dashboard.gate.secret}"
    first = visitor.sign_in(dashboard.login_url)
    assert first.status == 303 and first.headers["Location"] == "/"  # to the bare URL: the key leaves the bar
    attributes = [part.strip() for part in first.headers["Set-Cookie"].split(";")]
    assert attributes[0] == f"{dashboard.gate.cookie}={dashboard.gate.secret}"
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    page = visitor.get("/")
    assert page.status == 200 and dashboard.gate.secret not in page.text  # the page never holds the key
    assert dashboard.token in page.text  # (the promotion token, derived from it)
    assert visitor.get("/api/runs").status == 200
    deeper = visitor.get(f"/api/run?run=tiny/v1&token={dashboard.gate.secret}")
    assert deeper.status == 303 and deeper.headers["Location"] == "/api/run?run=tiny%2Fv1"


# --- 2. the Host header -------------------------------------------------------------------------------


def test_a_loopback_dashboard_answers_to_loopback_names_only(dashboard):
    visitor = signed_in(dashboard)
    port = visitor.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.2:{port}", f"[::1]:{port}"):
        assert visitor.request("GET", "/api/runs", headers={"Host": host}).status == 200, host
    for host in (f"evil.example:{port}", f"localhost.evil.example:{port}", f"127.0.0.1.nip.io:{port}",
                 f"10.0.0.1:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"127.0.0.1:{port}@evil.example",
                 f"[::1:{port}", "", "evil.example", f"127.0.0.1:{port}\tx"):
        response = visitor.request("GET", "/api/runs", headers={"Host": host})
        assert response.status == 403, (host, response.status)
    assert visitor.request("GET", "/api/runs", headers={"Host": None}).status == 403  # no Host at all


def test_every_address_dashboard_refuses_names_that_are_not_this_machine(start_dashboard, ui_runs):
    server = start_dashboard(ui_runs, "0.0.0.0")
    visitor = signed_in(server)
    port = visitor.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"{socket.gethostname()}:{port}", f"10.9.8.7:{port}"):
        assert visitor.request("GET", "/api/runs", headers={"Host": host}).status == 200, host
    for host in (f"evil.example:{port}", f"attacker.localhost.example:{port}", f"10.9.8.7:{port + 1}"):
        assert visitor.request("GET", "/api/runs", headers={"Host": host}).status == 403, host


def _this_machines_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_dashboard_on_one_address_answers_to_that_address(start_dashboard, ui_runs):
    address = _this_machines_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    server = start_dashboard(ui_runs, address)
    visitor = signed_in(server)
    port = visitor.port
    assert visitor.request("GET", "/api/runs", headers={"Host": f"{address}:{port}"}).status == 200
    for host in (f"evil.example:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"10.9.8.7:{port}"):
        assert visitor.request("GET", "/api/runs", headers={"Host": host}).status == 403, host


# --- 3. another site's page ---------------------------------------------------------------------------


def test_another_sites_page_cannot_make_it_work(start_dashboard, ui_runs):
    server = start_dashboard(ui_runs)
    visitor = signed_in(server)
    own = f"http://{visitor.netloc}"
    attacks = ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"},
               {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{visitor.port + 1}"},
               {"Origin": f"https://{visitor.netloc}"}, {"Sec-Fetch-Site": "cross-site", "Origin": own})
    for headers in attacks:
        response = visitor.request("GET", "/api/example?run=tiny/v1", headers=headers)
        assert response.status == 403, (headers, response.status)
        chat = visitor.request("POST", "/api/chat", {"model": "tiny/v1:q4_k_m", "history": [], "message": "hi"},
                               headers)
        assert chat.status == 403, headers
    assert server.examples == {} and server.chats.loaded() == []  # no work was started
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": own}, {"Sec-Fetch-Site": "none"}, {}):
        assert visitor.request("GET", "/api/runs", headers=headers).status == 200, headers


def test_every_response_forbids_framing_and_cross_origin_reads(dashboard, capfd):
    visitor, stranger = signed_in(dashboard), Client(dashboard.url)
    host = f"Host: {visitor.netloc}\r\nCookie: {visitor.cookie}\r\n".encode()
    responses = {
        "page": visitor.get("/"), "static": visitor.get("/static/app.js"), "api": visitor.get("/api/runs"),
        "file": visitor.get("/files/tiny/v1/metrics.jsonl"), "404": visitor.get("/nothing"),
        "400": visitor.get("/api/run?run=..%2Fx"), "refused": stranger.get("/api/runs"),
        "sign-in": stranger.get(f"/?token={dashboard.gate.secret}"),
        "501": visitor.request("PUT", "/api/runs", b"{}"),
        "413": visitor.request("POST", "/api/chat", headers={"Content-Length": str(1 << 30),
                                                            "Origin": f"http://{visitor.netloc}"}),
    }
    raw = visitor.raw(b"GET /api/runs HTTP/1.1\r\n" + host + b"X-Long: " + b"x" * 70000 + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 431")  # answered by http.server itself
    expected = {"cross-origin-resource-policy: same-origin", "x-frame-options: deny"}
    assert expected <= {line.lower() for line in raw.decode("latin-1").split("\r\n")}
    assert "frame-ancestors 'none'" in raw.decode("latin-1")
    for name, response in responses.items():
        assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin", name
        assert response.headers["X-Frame-Options"] == "DENY", name
        policies = response.headers.get_all("Content-Security-Policy")
        assert len(policies) == 1 and "frame-ancestors 'none'" in policies[0], (name, policies)
    assert {name: r.status for name, r in responses.items()} == {
        "page": 200, "static": 200, "api": 200, "file": 200, "404": 404, "400": 400, "refused": 403,
        "sign-in": 303, "501": 501, "413": 413}
    assert "Traceback" not in capfd.readouterr().err
