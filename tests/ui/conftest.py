"""Fixtures for the dashboard tests: run folders in the format training and export write, the
server, a visitor signed in with the URL it prints (``client``), and a real headless Chromium (Debian's
``chromium`` + ``chromium-driver``, driven by selenium), signed in the same way (``browser``).

Screenshots go to ``<pytest tmp>/ui-shots/`` and are copied to ``$QUICKTUNE_UI_SHOTS`` (default
``/tmp/ui-shots``), with ``load-times.json``: how long each page took to be ready in the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import SMOLLM2

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000",
)
EVAL_ROWS = 6


# --- run folders -------------------------------------------------------------------------------


def _recipe(folder: Path, name: str, train: Path, held: Path, learning_rate: float, steps: int):
    from quicktune.recipe import load_recipe

    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmethod: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train}\n  eval: {held}\n  system_prompt: Answer with one JSON object.\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accumulation: 1\n  learning_rate: {learning_rate}\n"
        "  warmup_ratio: 0.0\n  eval_every: 5\nexport:\n  quantizations: [q4_k_m]\n  temperature: 0\n",
        encoding="utf-8",
    )
    return load_recipe(str(path))


def metric_lines(first: int, last: int, start_loss: float, eval_every: int = 5) -> str:
    """metrics.jsonl lines as MetricsLog writes them (one per logged step, an eval line every few steps)."""
    lines = []
    for step in range(first, last + 1):
        loss = round(start_loss * (0.86 ** step) + 0.3, 4)
        lines.append({"step": step, "epoch": round(step / 6, 3), "time": round(time.time(), 3), "loss": loss,
                      "grad_norm": 1.2, "learning_rate": 0.002, "num_tokens": 160.0 * step})
        if step % eval_every == 0:
            lines.append({"step": step, "epoch": round(step / 6, 3), "time": round(time.time(), 3),
                          "eval_loss": round(loss * 1.1, 4), "eval_runtime": 0.4})
    return "".join(json.dumps(line) + "\n" for line in lines)


def _run_folder(root: Path, recipe, version: str, status: str, steps: int, parent: Path | None) -> Path:
    from quicktune import runs
    from quicktune.backend import package_versions
    from quicktune.train.trainer import data_manifest, prepare_data, recipe_sha256

    run_dir = root / recipe.name / version
    run_dir.mkdir(parents=True)
    runs.write_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    finished = status == "finished"
    start_loss = 3.0 if version == "v1" else 2.6
    (run_dir / "metrics.jsonl").write_text(metric_lines(1, steps, start_loss), encoding="utf-8")
    runs.write_manifest(run_dir, {
        "recipe": recipe.name, "version": version, "status": status, "recipe_sha256": recipe_sha256(recipe),
        "started": runs.now(), "ended": runs.now() if finished else None,
        "parent": str(parent) if parent else None, "seed": recipe.training.seed, "method": recipe.method,
        "base_model": {"spec": SMOLLM2, "kind": "gguf", "loaded_from": None, "fingerprint": None},
        "data": data_manifest(prepare_data(recipe)),
        "backend": {"name": "unsloth", "device": "cpu"}, "packages": package_versions(), "resumes": [],
        "metrics": {"steps": steps, "first_loss": 3.3, "train_loss": round(start_loss * 0.86 ** steps + 0.3, 4),
                    "best_eval_loss": 0.45, "seconds": 30.0} if finished else None,
    })
    return run_dir


def _export(run_dir: Path, gguf: Path) -> None:
    """What export writes, with the demo GGUF itself standing in for the run's quantization (a
    symlink: the chat loads it; the file server must refuse it, as it points outside the runs folder)."""
    from quicktune import runs

    export = run_dir / "export"
    export.mkdir()
    name = f"{run_dir.parent.name}-{run_dir.name}"
    (export / f"{name}-q4_k_m.gguf").symlink_to(gguf)
    (export / "Modelfile.q4_k_m").write_text(
        f"FROM ./{name}-q4_k_m.gguf\nPARAMETER num_ctx 2048\nPARAMETER temperature 0\n"
        'PARAMETER stop "<|im_end|>"\nSYSTEM """Answer with one JSON object."""\n', encoding="utf-8")
    manifest = runs.read_manifest(run_dir)
    manifest["export"] = {
        "name": name, "exported": runs.now(), "tools": "llama-cpp-python", "metadata": {}, "timings_s": {},
        "ggufs": {"q4_k_m": {"file": f"export/{name}-q4_k_m.gguf", "bytes": gguf.stat().st_size,
                                "sha256": runs.sha256_file(gguf)}},
        "modelfiles": {"q4_k_m": "export/Modelfile.q4_k_m"},
        "fidelity": {
            "prompts": 8, "max_new_tokens": 96, "reference_stops": 8, "prompt_tokens_equal": 8,
            "template_parity": "12/12 conversations", "ollama_renderer": "Go text/template (Modelfile TEMPLATE)",
            "ggufs": [{"name": "f16", "same_top_token": 1.0, "greedy_agreement": 1.0, "identical_answers": 8,
                       "stops": 8},
                      {"name": "q4_k_m", "same_top_token": 0.974, "greedy_agreement": None, "identical_answers": None,
                       "stops": None}],
            "trained": None, "passed": True, "failures": [], "skipped": [],
        },
    }
    runs.write_manifest(run_dir, manifest)


def _eval_report(run_dir: Path, answers: list[str], rows_sha: str, held: list[dict]) -> None:
    """An eval/base-<rows>.json as ``quicktune eval`` writes it (evaluate/runner.py: EvalReport.to_json)."""
    from quicktune import runs
    from quicktune.metrics import METRICS

    prompts = [row["messages"][-2]["content"] for row in held]
    references = [row["messages"][-1]["content"] for row in held]
    exact = sum(a == r for a, r in zip(answers, references)) / len(references)
    report = {
        "created": runs.now(), "against": "base", "gguf": None, "metric": "exact_match", "metrics": METRICS,
        "data": {"source": "held-out.jsonl", "rows": len(held), "sha256": rows_sha},
        "prompts": prompts, "references": references,
        "subjects": [
            {"label": "base", "kind": "hf", "loss": 2.9, "perplexity": 18.2, "seconds": 3.0,
             "metrics": {"exact_match": 0.0, "json_valid": 0.0, "ends_with_eos": 0.5},
             "answers": [{"text": "Sure! Here is a word.", "stopped": True} for _ in held]},
            {"label": runs.run_label(run_dir), "kind": "hf", "loss": 0.6, "perplexity": 1.8, "seconds": 3.0,
             "metrics": {"exact_match": exact, "json_valid": 1.0, "ends_with_eos": 1.0},
             "answers": [{"text": a, "stopped": True} for a in answers]},
        ],
    }
    runs.write_atomic(run_dir / "eval" / f"base-{rows_sha[:12]}.json", json.dumps(report, indent=2) + "\n")


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory) -> Path:
    """tiny/v1 finished and exported, tiny/v2 finished from v1 (another learning rate), tiny/v3 running."""
    from quicktune.models import resolve_model
    from tests.conftest import TOPICS, chat, write_jsonl

    folder = tmp_path_factory.mktemp("ui")
    train = write_jsonl(folder / "train.jsonl", [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in TOPICS])
    held_words = ("snow", "figs", "moss", "ink", "wool", "reef")
    held_rows = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in held_words]
    held = write_jsonl(folder / "held.jsonl", held_rows)
    root = folder / "runs"
    first = _run_folder(root, _recipe(folder, "tiny", train, held, 0.002, 20), "v1", "finished", 20, None)
    second = _run_folder(root, _recipe(folder, "tiny", train, held, 0.005, 20), "v2", "finished", 20, first)
    _run_folder(root, _recipe(folder, "tiny", train, held, 0.001, 40), "v3", "running", 6, None)
    _export(first, resolve_model(SMOLLM2).path)
    references = [row["messages"][-1]["content"] for row in held_rows]
    sha = "ab12" * 16
    _eval_report(first, [*references[:3], '{"word": "ice"}', '{"word": "fig"}', references[5]], sha, held_rows)
    _eval_report(second, [*references[:5], '{"word": "coral"}'], sha, held_rows)
    return root


@pytest.fixture(scope="session")
def dashboard(ui_runs):
    from quicktune.ui.server import serve

    server = serve(ui_runs, "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(dashboard):
    """A visitor of the session's dashboard, signed in with the URL ``quicktune ui`` prints (its cookie kept)."""
    from tests.ui.client import signed_in

    return signed_in(dashboard)


@pytest.fixture
def start_dashboard():
    """Starts dashboards of their own (``start_dashboard(root, host="127.0.0.1")``, on a free port) and stops
    them after the test."""
    from quicktune.ui.server import serve

    started = []

    def start(root: Path, host: str = "127.0.0.1"):
        server = serve(root, host, 0)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


# --- the browser --------------------------------------------------------------------------------


def sign_in(browser, server) -> None:
    """Opens the URL the server prints, as a user would: the cookie is set and the address bar is left bare."""
    browser.get("about:blank")
    browser.get(server.login_url)
    assert browser.current_url == server.url, browser.current_url  # the key does not stay in the address bar
    cookie = browser.get_cookie(server.gate.cookie)
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie


@pytest.fixture(scope="session")
def browser(chromium, dashboard):
    """The browser, signed in to the session's dashboard."""
    sign_in(chromium, dashboard)
    return chromium


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    missing = [path for path in CHROMIUM if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"no headless Chromium here ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMIUM[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """Where screenshots go; load times are collected here and written at the end."""
    folder = tmp_path_factory.mktemp("ui-shots")
    record: dict = {"folder": folder, "load_ms": {}}
    yield record
    (folder / "load-times.json").write_text(json.dumps(record["load_ms"], indent=2) + "\n", encoding="utf-8")
    copy = Path(os.environ.get("QUICKTUNE_UI_SHOTS", "/tmp/ui-shots"))
    try:
        copy.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            shutil.copy2(item, copy / item.name)
    except OSError:
        pass  # the copy is a convenience; the pytest tmp folder keeps the originals
