"""`quicktune eval RUN --endpoint URL --model NAME`: the run's exported GGUF served by a real
``python -m llama_cpp.server``, scored as one more subject and compared answer by answer with the GGUF."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.metrics import METRICS
from tests.conftest import copy_run

pytestmark = pytest.mark.slow  # a trained, exported run

SECRET = "sk-quicktune-test-secret-789"


@pytest.fixture(scope="module")
def exported_run(trained_run):
    """The session's run, exported (its recipe's q4_k_m; the files are reused when an earlier test exported it)."""
    from quicktune.export.exporter import export_run

    export_run(trained_run.run_dir, verify=False)
    return trained_run


@pytest.fixture(scope="module")
def served_run(exported_run, tmp_path_factory):
    """A plain llama_cpp.server on the run's exported GGUF: (base URL, the model name it lists)."""
    from quicktune.runs import exported_gguf, pick_quantization, read_manifest
    from tests.servers import start_llama_server

    run_dir = exported_run.run_dir
    manifest = read_manifest(run_dir)
    gguf = exported_gguf(run_dir, manifest, pick_quantization(run_dir, manifest))
    with start_llama_server(gguf, tmp_path_factory.mktemp("served") / "server.log") as url:
        yield url, str(gguf)


def _eval(run_dir, *args, env=None):
    return CliRunner().invoke(main, ["eval", str(run_dir), *args, "--runs-dir", str(run_dir.parent.parent)],
                              env=env)


def _report(run_dir, result) -> tuple[dict, str]:
    assert result.exit_code == 0, result.output
    path = max((run_dir / "eval").glob("*+served-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(path.read_text()), path.read_text()


def test_the_served_model_is_one_more_subject_compared_with_the_gguf(served_run, exported_run, fault_server):
    url, model = served_run
    run_dir = exported_run.run_dir
    result = _eval(run_dir, "--limit", "2", "--max-new-tokens", "12", "--endpoint", url, "--model", model,
                   "--judge-endpoint", fault_server.url("ok"), "--judge-model", "m", env={"OPENAI_API_KEY": SECRET})
    report, text = _report(run_dir, result)
    run, gguf, served = report["subjects"][-3:]
    assert [run["kind"], gguf["kind"], served["kind"]] == ["hf", "gguf", "endpoint"]
    assert gguf["label"] == f"{run['label']} q4_k_m" and report["gguf"] == "q4_k_m"
    assert served["label"] == f"served {model.rsplit('/', 1)[-1]}" and served["label"] in result.output
    assert set(served["metrics"]) == set(METRICS) and len(served["answers"]) == 2
    assert served["loss"] is None and served["perplexity"] is None
    info = report["served"]
    assert info["endpoint"] == {"url": url, "model": model} and info["compared_with"] == gguf["label"]
    # the run's system prompt was left to the server: this plain server has no Modelfile to add it
    assert info["system_prompt"]["text"] == "Answer with one JSON object." and not info["system_prompt"]["sent"]
    assert info["system_prompt"]["left_out"] == 2 and "left to the server" in result.output
    same = [a["text"].strip() == b["text"].strip() for a, b in zip(served["answers"], gguf["answers"])]
    assert info["same"] == sum(same) and info["rows"] == 2 and 0 <= info["agreement"] <= 1
    assert info["agreement"] == sum(same) / 2
    if info["agreement"] < 1:
        first = info["first_difference"]
        assert first["row"] == same.index(False) and first["served"] == served["answers"][first["row"]]["text"]
        assert [m["role"] for m in first["sent"]] == ["user"] and "first difference, row" in " ".join(
            result.output.split())
    else:
        assert info["first_difference"] is None
    # the judge behind a server: every differing row asked in both orders, the raw replies kept
    judge = report["judge"]
    assert judge["kind"] == "endpoint" and fault_server.requests.get("ok", 0) == 2 * judge["judged"]
    for row in judge["verdicts"]:
        if not row["identical"]:
            assert row["run_as_a"]["reply"].startswith("echo: You compare two answers")
            assert row["run_as_a"]["verdict"] == "unparsed" and row["outcome"] == "unparsed"
    assert SECRET not in text and SECRET not in result.output
    print(f"served vs GGUF (system prompt left to a plain llama_cpp.server): agreement {info['agreement']}")

    # --with-system: the prompt as the GGUF got it; the report readers take the new subject kind
    result = _eval(run_dir, "--against", "none", "--limit", "2", "--max-new-tokens", "12", "--endpoint", url,
                   "--model", model, "--with-system", "--concurrency", "2")
    report, _ = _report(run_dir, result)
    info = report["served"]
    assert info["system_prompt"]["sent"] and info["system_prompt"]["left_out"] == 0 and info["concurrency"] == 2
    assert "sent with each request" in result.output
    if info["first_difference"]:
        assert info["first_difference"]["sent"][0] == {"role": "system", "content": "Answer with one JSON object."}
    print(f"served vs GGUF (--with-system): agreement {info['agreement']}, first difference "
          f"{info['first_difference']}")
    from quicktune.runs import eval_headline, read_own_eval

    _, own = read_own_eval(run_dir)
    assert own["kind"] == "hf" and eval_headline(run_dir)


def test_a_wrong_model_name_or_url_fails_before_anything_loads(exported_run, served_run):
    from tests.servers import free_port

    run_dir = exported_run.run_dir
    log = run_dir / "library.log"
    logged = log.read_text(errors="replace") if log.exists() else ""
    reports = set((run_dir / "eval").glob("*.json"))
    url, _ = served_run
    for endpoint, said in ((url, "no model named 'nope' there"),
                           (f"http://127.0.0.1:{free_port()}/v1", "cannot connect")):
        start = time.monotonic()
        result = _eval(run_dir, "--endpoint", endpoint, "--model", "nope")
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output
        assert f"--endpoint {endpoint}" in result.output
        assert time.monotonic() - start < 15  # the models take longer than that to load on these cores
    assert "Loading weights" not in (log.read_text(errors="replace") if log.exists() else "")[len(logged):]
    assert set((run_dir / "eval").glob("*.json")) == reports


def test_a_server_that_fails_mid_run_leaves_no_report(exported_run, fault_server):
    run_dir = exported_run.run_dir
    reports = set((run_dir / "eval").glob("*.json"))
    result = _eval(run_dir, "--endpoint", fault_server.url("truncated"), "--model", "m")
    assert result.exit_code == 2 and "answered with JSON that does not parse" in result.output
    assert "Traceback" not in result.output and fault_server.requests["truncated"] == 1
    assert set((run_dir / "eval").glob("*.json")) == reports


def test_a_run_not_exported_and_options_that_do_not_go_together(trained_run, tmp_path, fault_server):
    run_dir = copy_run(trained_run.run_dir, tmp_path / "tiny-export" / "v1")
    result = _eval(run_dir, "--endpoint", fault_server.url("ok"), "--model", "m")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "compares the served model's answers with the run's exported GGUF" in result.output
    assert "quicktune export" in result.output and "has not been exported yet" in result.output
    assert not fault_server.requests  # refused before a single question was asked
    for args, said in (
        (["--model", "m"], "--model is for --endpoint, which was not given"),
        (["--judge-endpoint", fault_server.url("ok")], "--judge-endpoint http"),
        (["--judge-endpoint", fault_server.url("ok"), "--judge-model", "m", "--judge", "x.gguf"],
         "--judge and --judge-endpoint both name a judge"),
        (["--judge-endpoint", fault_server.url("ok"), "--judge-model", "m", "--against", "none"],
         "--judge-endpoint compares two answers per row: it needs --against"),
        (["--probe", "general", "--endpoint", fault_server.url("ok"), "--model", "m"], "does not take --endpoint"),
        (["--concurrency", "3"], "--concurrency is for requests to --endpoint or --judge-endpoint"),
    ):
        result = _eval(run_dir, *args)
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    assert not fault_server.requests
