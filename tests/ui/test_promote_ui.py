"""The dashboard's promote button (issue 32): ``POST /api/promote`` calls ``quicktune.promote.promote``, the
function ``quicktune runs promote`` calls, on real runs (the session's SmolLM2 run, exported and scored by a real
``quicktune eval``, copied as v1, v2 by tests/runs/test_promote.py's helpers) with its stand-in ``ollama`` on PATH.

Each check is made against the CLI on a twin runs folder: the same history line, the same Ollama commands,
the same refusal. A promotion is accepted only from the dashboard's own page: its Origin and its token.
"""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest

from quicktune.runs import HISTORY, read_history
from tests.runs.test_promote import add_version, calls, flat, promoted_modelfile, runs_cli
from tests.runs.test_promote import evaluated as evaluated  # a fixture: the re-export keeps it (used by name)
from tests.runs.test_promote import ollama as ollama  # a fixture, as above
from tests.ui.client import Client

RECIPE = "tiny-export"


@pytest.fixture
def server(tmp_path):
    """A dashboard on a fresh runs folder (filled by each test), on a free loopback port."""
    from quicktune.ui.server import serve

    (tmp_path / "runs").mkdir()
    started = serve(tmp_path / "runs", "127.0.0.1", 0)
    yield started
    started.shutdown()
    started.server_close()


def request(server, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """(status, JSON or text) for one request with exactly ``headers`` (Host defaults to the server's), from a
    visitor signed in with the URL the server prints."""
    visitor = Client(server.url)
    visitor.sign_in(server.login_url)
    response = visitor.request(method, path, body, headers)
    kind = response.headers.get("Content-Type", "")
    return response.status, response.json() if kind.startswith("application/json") else response.text


def page_token(server) -> str:
    """The token as the page carries it (what the page's script sends back)."""
    status, page = request(server, "GET", "/")
    assert status == 200
    return re.search(r'<meta name="quicktune-token" content="([^"]+)">', page).group(1)


def from_page(server, run: str, **fields) -> tuple[int, dict]:
    """A POST as the dashboard's page sends it: its Origin, its token."""
    origin = server.url.rstrip("/")
    return request(server, "POST", "/api/promote", {"run": run, **fields},
                   {"Origin": origin, "X-Quicktune-Token": page_token(server)})


def promoted_rows(server) -> dict[str, bool]:
    status, shown = request(server, "GET", "/api/runs")
    assert status == 200
    return {row["name"]: row["promoted"] for row in shown["runs"]}


def run_promotion(server, run: str) -> dict:
    status, shown = request(server, "GET", f"/api/run?run={run}")
    assert status == 200, shown
    return shown["promotion"]


def without_when(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "when"}


def test_only_the_dashboards_own_page_can_promote(evaluated, server, ollama):
    v1 = add_version(evaluated, server.root, "v1")
    token, origin, port = page_token(server), server.url.rstrip("/"), server.server_port
    assert len(token) >= 32 and token != "__QUICKTUNE_TOKEN__"
    body = {"run": f"{RECIPE}/v1"}
    refused = [
        ({"Origin": origin}, "token"),  # no token
        ({"Origin": origin, "X-Quicktune-Token": token[:-1] + ("A" if token[-1] != "A" else "B")}, "token"),
        ({"Origin": "http://evil.example", "X-Quicktune-Token": token}, "origin"),
        ({"Origin": f"http://127.0.0.1:{port + 1}", "X-Quicktune-Token": token}, "origin"),
        ({"Origin": "null", "X-Quicktune-Token": token}, "origin"),
        ({"X-Quicktune-Token": token}, "origin"),  # no Origin: not a page's request
        ({"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}", "X-Quicktune-Token": token},
         "DNS rebinding"),
        ({"Origin": origin, "X-Quicktune-Token": token, "Sec-Fetch-Site": "cross-site"}, "another site"),
    ]
    for headers, why in refused:
        status, answer = request(server, "POST", "/api/promote", body, headers)
        assert status == 403 and why.lower() in answer["error"].lower(), (headers, answer)
    visitor = Client(server.url)  # the page's token is not the key: it does not sign a visitor in
    assert visitor.request("POST", "/api/promote", body, {"Origin": origin, "X-Quicktune-Token": token}).status == 403
    assert visitor.sign_in(f"{server.url}?token={token}").status == 403 and visitor.cookie is None
    status, _ = request(server, "GET", f"/api/promote?run={RECIPE}/v1")  # no GET route writes
    assert status == 404
    assert not (v1.parent / HISTORY).exists() and calls(ollama) == []
    assert promoted_rows(server) == {f"{RECIPE}/v1": False}


def test_the_button_promotes_and_refuses_as_the_cli_does(evaluated, server, ollama, tmp_path):
    root, twin = server.root, tmp_path / "cli-runs"
    for folder in (root, twin):
        add_version(evaluated, folder, "v1")
        add_version(evaluated, folder, "v2", worse=True)
    recipe_dir = root / RECIPE

    status, done = from_page(server, f"{RECIPE}/v1")
    assert status == 200, done
    [entry] = read_history(recipe_dir)
    assert done["entry"] == asdict(entry) and entry.why == "passed the checks" and entry.ollama == "done"
    assert f"✓ ollama create tiny-export:v1 -f {promoted_modelfile(root / RECIPE / 'v1')}" in done["output"]
    assert "✓ ollama cp tiny-export:v1 tiny-export:latest" in done["output"]
    assert runs_cli(twin, "promote", "v1").exit_code == 0
    [by_cli] = read_history(twin / RECIPE)
    assert without_when(asdict(entry)) == without_when(asdict(by_cli))
    ui_calls, cli_calls = calls(ollama)[:4], calls(ollama)[4:]
    assert [argv for argv, _ in ui_calls] == [argv for argv, _ in cli_calls] and len(ui_calls) == 4
    assert {cwd for _, cwd in ui_calls} == {str(root / RECIPE / "v1" / "export")}
    assert promoted_rows(server) == {f"{RECIPE}/v1": True, f"{RECIPE}/v2": False}
    assert run_promotion(server, f"{RECIPE}/v1")["now"] and not run_promotion(server, f"{RECIPE}/v2")["now"]

    status, refused = from_page(server, f"{RECIPE}/v2")  # worse on the same held-out rows
    assert status == 400, refused
    assert refused["error"].startswith(f"{RECIPE}/v2 is not promoted: worse than the promoted {RECIPE}/v1 on")
    assert any(p.startswith("loss on the answers: ") for p in refused["problems"]) and "--force" in refused["hint"]
    assert f"{RECIPE}/v1 (promoted) vs {RECIPE}/v2" in refused["output"] and "▼" in refused["output"]
    by_cli = runs_cli(twin, "promote", "v2")
    assert by_cli.exit_code == 2 and refused["error"] in flat(by_cli.output)
    assert all(problem in flat(by_cli.output) for problem in refused["problems"])
    assert len(read_history(recipe_dir)) == 1 and len(calls(ollama)) == 8  # nothing recorded, Ollama not asked

    status, no_reason = from_page(server, f"{RECIPE}/v2", force=True, reason="  ")
    assert status == 400 and "--force needs --reason" in no_reason["error"]
    status, forced = from_page(server, f"{RECIPE}/v2", force=True, reason="fixes the dates")
    assert status == 200, forced
    last = read_history(recipe_dir)[-1]
    assert (last.run, last.why, last.forced, last.replaced) == (f"{RECIPE}/v2", "fixes the dates", True, f"{RECIPE}/v1")
    assert runs_cli(twin, "promote", "v2", "--force", "--reason", "fixes the dates").exit_code == 0
    assert without_when(asdict(last)) == without_when(asdict(read_history(twin / RECIPE)[-1]))

    assert promoted_rows(server) == {f"{RECIPE}/v1": False, f"{RECIPE}/v2": True}
    before = run_promotion(server, f"{RECIPE}/v1")
    assert not before["now"] and before["promoted_at"] == [entry.when]
    assert before["history"]["current"] == f"{RECIPE}/v2"
    status, history = request(server, "GET", "/api/history")
    assert status == 200 and [h["recipe"] for h in history["recipes"]] == [RECIPE]
    assert [(line["run"], line["forced"]) for line in history["recipes"][0]["lines"]] == [
        (f"{RECIPE}/v1", False), (f"{RECIPE}/v2", True)]
    status, one = request(server, "GET", f"/api/history?recipe={RECIPE}")
    assert status == 200 and one["recipes"] == history["recipes"]
    for name in ("../cli-runs/tiny-export", str(twin / RECIPE)):  # only recipes inside the runs folder
        status, _ = request(server, "GET", f"/api/history?recipe={name}")
        assert status == 400, name
    status, again = from_page(server, f"{RECIPE}/v2")
    assert status == 400 and "already the promoted version" in again["error"]
    status, outside = from_page(server, "../cli-runs/tiny-export/v1")
    assert status == 400 and "not a run name" in outside["error"]
    assert len(read_history(recipe_dir)) == 2 and len(read_history(twin / RECIPE)) == 2


def test_without_ollama_the_page_gets_the_commands(evaluated, server, tmp_path, monkeypatch):
    v1 = add_version(evaluated, server.root, "v1")
    (tmp_path / "no-ollama").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    status, done = from_page(server, f"{RECIPE}/v1", name="extractor")
    assert status == 200, done
    assert "ollama is not on PATH" in done["output"] and f"cd {v1 / 'export'}" in flat(done["output"])
    assert f"ollama create extractor:v1 -f {promoted_modelfile(v1)}" in done["output"]
    assert "ollama cp extractor:v1 extractor:latest" in done["output"]
    assert [(e.ollama, e.name) for e in read_history(v1.parent)] == [("printed", "extractor")]


def test_clicking_promote_in_a_browser(evaluated, server, ollama, chromium, shots):
    from selenium.webdriver.common.by import By

    from tests.ui.conftest import sign_in
    from tests.ui.test_dashboard import READY, screenshot, wait_for

    add_version(evaluated, server.root, "v1")
    add_version(evaluated, server.root, "v2", worse=True)
    browser = chromium
    sign_in(browser, server)

    def click_promote(run: str) -> str:
        browser.get("about:blank")
        browser.get(f"{server.url}#/run?run={run}")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, READY), what="the run page", browser=browser)
        browser.find_element(By.ID, "promote").click()
        result = browser.find_element(By.ID, "promote-result")
        return wait_for(lambda: result.get_attribute("data-outcome"), what="the promotion", browser=browser)

    assert click_promote(f"{RECIPE}/v1") == "promoted"
    wait_for(lambda: "★ promoted now" in browser.find_element(By.ID, "promotion-state").text, browser=browser)
    assert [e.run for e in read_history(server.root / RECIPE)] == [f"{RECIPE}/v1"]
    assert click_promote(f"{RECIPE}/v2") == "refused"
    assert "is not promoted: worse than the promoted" in browser.find_element(By.ID, "promote-error").text
    assert "▼" in browser.find_element(By.ID, "promote-output").text
    screenshot(browser, shots, "promote-refused")
    assert len(read_history(server.root / RECIPE)) == 1
    browser.get(f"{server.url}#/")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-run="{RECIPE}/v1"] .promoted'), browser=browser)
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-run="{RECIPE}/v2"] .promoted')
    browser.get(f"{server.url}#/history")
    in_history = f'table.history tr[data-run="{RECIPE}/v1"]'
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, in_history), browser=browser)
    screenshot(browser, shots, "promotions")
