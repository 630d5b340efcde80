"""`quicktune ui` in a real headless Chromium: runs, a live curve, compare, a streamed chat, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ui.client import Client
from tests.ui.conftest import metric_lines

READY = "#page[data-ready]"


def wait_for(check, timeout: float = 30.0, what: str = "the page", browser=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = browser.execute_script("return document.body.innerText") if browser else ""
            raise AssertionError(f"timed out waiting for {what}\n{shown}")
        time.sleep(0.2)


def open_page(browser, url: str, shots, name: str) -> float:
    """Load ``url`` from a blank tab (a full load, not a hash change) until the view says it is ready."""
    from selenium.webdriver.common.by import By

    browser.get("about:blank")
    started = time.perf_counter()
    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, READY), what=f"{name} to be ready")
    elapsed = (time.perf_counter() - started) * 1000
    shots["load_ms"][name] = round(elapsed)
    errors = browser.find_elements(By.ID, "error")
    assert not errors, errors[0].text
    return elapsed


def screenshot(browser, shots, name: str) -> Path:
    browser.execute_script("window.scrollTo(0, 0)")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, min(height + 40, 5000)))
    path = shots["folder"] / f"{name}.png"
    browser.save_screenshot(str(path))
    browser.set_window_size(1400, 1000)
    return path


def drawn_pixels(browser, selector: str, color: tuple[int, int, int]) -> int:
    """Pixels of ``color`` on the chart's canvas: what uPlot actually drew for a series."""
    return browser.execute_script(
        """
        const canvas = document.querySelector(arguments[0] + ' canvas');
        if (!canvas) return -1;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
            if (Math.abs(data[i] - arguments[1]) < 30 && Math.abs(data[i + 1] - arguments[2]) < 30 &&
                Math.abs(data[i + 2] - arguments[3]) < 30 && data[i + 3] > 200) n++;
        return n;
        """,
        selector, *color,
    )


LOSS_BLUE = (0x25, 0x63, 0xEB)


def test_runs_page_lists_finished_and_running_runs(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    open_page(browser, dashboard.url, shots, "runs")
    found = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    rows = {row.get_attribute("data-run"): row for row in found}
    assert set(rows) == {"tiny/v1", "tiny/v2", "tiny/v3"}
    assert rows["tiny/v1"].get_attribute("data-status") == "finished"
    assert rows["tiny/v3"].get_attribute("data-status") == "running"
    assert "q4_k_m" in rows["tiny/v1"].text and "exact_match" in rows["tiny/v1"].text
    assert "tiny/v1" in rows["tiny/v2"].text  # its parent
    nested = browser.find_elements(By.CSS_SELECTOR, "#lineage li li")
    assert [item.text for item in nested] == ["tiny/v2"]  # v2 continued from v1
    screenshot(browser, shots, "runs")


def test_running_run_curve_draws_and_grows_without_reload(browser, dashboard, ui_runs, shots):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{dashboard.url}#/run?run=tiny/v3", shots, "run (running)")
    chart = browser.find_element(By.ID, "curve")
    assert chart.get_attribute("data-points") == "7"  # 6 loss points and the eval at step 5
    assert drawn_pixels(browser, "#curve", LOSS_BLUE) > 50
    browser.execute_script("window.__sameDocument = true")
    with (ui_runs / "tiny" / "v3" / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(metric_lines(7, 12, 2.6))  # the trainer logs six more steps (and an eval at 10)
    wait_for(lambda: chart.get_attribute("data-points") == "14", timeout=15, what="the new points")
    assert browser.execute_script("return window.__sameDocument") is True  # no reload
    assert "step 12" in browser.find_element(By.ID, "latest").text
    screenshot(browser, shots, "run-running")


def test_finished_run_shows_manifest_example_fidelity_and_modelfile(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{dashboard.url}#/run?run=tiny/v1", shots, "run (finished)")
    example = browser.find_element(By.ID, "example")
    wait_for(lambda: example.get_attribute("data-trained"), timeout=120, what="the rendered example")
    trained = [span.text for span in example.find_elements(By.CSS_SELECTOR, ".trained")]
    assert '"word"' in "".join(trained)  # the answer is trained
    assert "One word for" not in "".join(trained)  # the prompt is context
    fidelity = browser.find_element(By.ID, "fidelity").text
    assert "q4_k_m" in fidelity and "97.4%" in fidelity
    command = browser.find_element(By.CSS_SELECTOR, ".modelfile .command code").text
    assert command.startswith("ollama create tiny-v1:q4_k_m -f ") and command.endswith("Modelfile.q4_k_m")
    browser.find_element(By.ID, "copy-q4_k_m").click()
    wait_for(lambda: browser.find_element(By.ID, "copy-q4_k_m").text == "copied", timeout=5, what="the copy")
    files = browser.find_element(By.ID, "data-files").text
    assert "train.jsonl" in files and "held.jsonl" in files
    screenshot(browser, shots, "run-finished")


def test_compare_shows_both_runs(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{dashboard.url}#/compare?a=tiny/v1&b=tiny/v2", shots, "compare")
    assert "tiny/v1" in browser.find_element(By.TAG_NAME, "h1").text
    assert "tiny/v2" in browser.find_element(By.TAG_NAME, "h1").text
    differing = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#recipe-diff tr.diff")]
    assert any(row.startswith("training.learning_rate") for row in differing), differing
    assert browser.find_element(By.ID, "compare-curve").get_attribute("data-points") == "48"  # 2 x (20 + 4)
    assert drawn_pixels(browser, "#compare-curve", LOSS_BLUE) > 50
    metrics = browser.find_element(By.ID, "eval-metrics").text
    assert "exact_match (headline) 66.7% 83.3% +16.7 pts" in metrics
    rows = browser.find_elements(By.CSS_SELECTOR, "#differing-rows tbody tr")
    assert len(rows) == 3  # rows 4, 5 and 6 were answered differently
    assert '{"word": "coral"}' in rows[-1].text
    screenshot(browser, shots, "compare")


def test_chat_streams_two_models_side_by_side(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{dashboard.url}#/chat?a=tiny/v1:q4_k_m&b=base:tiny/v1", shots, "chat")
    budget = browser.find_element(By.ID, "max-tokens")
    budget.clear()
    budget.send_keys("24")
    browser.find_element(By.ID, "prompt").send_keys("Write a short poem about snow.")
    browser.find_element(By.ID, "send").click()
    done = wait_for(lambda: len(found := browser.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) == 2 and found,
                    timeout=300, what="both answers", browser=browser)
    for bubble in done:
        assert "error" not in bubble.get_attribute("class"), bubble.text
        assert bubble.text.strip()
        assert int(bubble.get_attribute("data-chunks")) >= 8  # arrived in pieces, as generated
        assert int(bubble.get_attribute("data-first-ms")) < int(bubble.get_attribute("data-total-ms"))
    info = browser.find_element(By.ID, "info-1").text
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in info
    shots["load_ms"]["chat: first text (ms)"] = [int(b.get_attribute("data-first-ms")) for b in done]
    shots["load_ms"]["chat: whole answer (ms)"] = [int(b.get_attribute("data-total-ms")) for b in done]
    screenshot(browser, shots, "chat")


def _get(client: Client, path: str, host: str | None = None) -> tuple[int, str]:
    """(status, text) of a GET sent as written (the path ".." and all), with the client's cookie."""
    response = client.request("GET", path, headers={"Host": host} if host else None)
    return response.status, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../../../etc/passwd",
        "/files/tiny/v1/../../../held.jsonl",
        "/files/tiny/v1/%2e%2e/%2e%2e/%2e%2e/held.jsonl",
        "/files/tiny/v1/export/tiny-v1-q4_k_m.gguf",  # a symlink out of the runs folder
    ],
)
def test_paths_outside_the_runs_folder_are_refused(client, path):
    status, body = _get(client, path)
    assert status == 403, body
    assert "only files inside the runs folder" in body


def test_run_names_that_are_paths_are_refused(client, ui_runs):
    for name in ("../tiny/v1", "tiny/../tiny/v1", str(ui_runs / "tiny" / "v1"), "tiny/v1%0A"):
        status, body = _get(client, f"/api/run?run={name}")
        assert status == 400 and "not a run name" in json.loads(body)["error"]
    assert _get(client, "/files/tiny/v1/metrics.jsonl")[0] == 200
    assert _get(client, "/api/runs", host=f"attacker.example:{client.port}")[0] == 403  # DNS rebinding


def test_browser_is_refused_a_dotdot_path(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    # (Chromium resolves "../" and "%2e%2e/" itself before asking; an encoded slash reaches the server as sent)
    browser.get(f"{dashboard.url}files/tiny/v1/..%2F..%2F..%2Fheld.jsonl")
    assert "only files inside the runs folder" in browser.find_element(By.TAG_NAME, "body").text
    browser.get("about:blank")
    browser.get(f"{dashboard.url}#/run?run=..%2F..%2Fetc")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, READY), what="the page")
    assert "not a run name" in browser.find_element(By.ID, "error").text
    screenshot(browser, shots, "refused")


def test_ui_command_serves_without_torch(ui_runs, tmp_path):
    """`quicktune ui` prints its URL, with the key that signs a browser in, and serves every page but the chat
    without loading torch (checked in the server process's own memory map)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "quicktune", "ui", "--runs-dir", str(ui_runs), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("quicktune ui: http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[2]
        assert "/?token=" in url
        client = Client(url)
        assert client.get("/api/runs").status == 403  # not without the key
        assert client.sign_in(url).status == 303
        for path in ("/", "/static/app.js", "/static/vendor/uplot/uPlot.iife.min.js", "/api/runs",
                     "/api/run?run=tiny/v1", "/api/metrics?run=tiny/v3", "/api/compare?a=tiny/v1&b=tiny/v2",
                     "/api/chat/models", "/files/tiny/v1/eval/base-ab12ab12ab12.json"):
            status, body = _get(client, path)
            assert status == 200, (path, body)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped" in out


def test_ui_refuses_a_missing_runs_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "quicktune", "ui", "--runs-dir", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no runs folder" in done.stderr and "Traceback" not in done.stderr


def test_another_address_is_served_only_when_asked_for_with_a_warning(ui_runs):
    process = subprocess.Popen(
        [sys.executable, "-m", "quicktune", "ui", "--runs-dir", str(ui_runs), "--port", "0", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("quicktune ui: http://"), line
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in " ".join(err.split())
    assert "plain HTTP" in " ".join(err.split())
