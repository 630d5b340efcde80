"""`quicktune serve RUN|GGUF`: the real server (llama_cpp.server with quicktune's chat handler) started as
a user starts it, asked through quicktune's one client layer, and held to what ``quicktune eval --gguf``
reads from the same GGUF in-process: the same answers, string for string, every time."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from quicktune.endpoints import Endpoint, EndpointError
from quicktune.serve import RequestDefaults, RequestError, base_url, conversation
from tests.conftest import copy_run, write_jsonl
from tests.servers import free_port, running

DEMO_EVAL = Path(__file__).parent.parent / "quicktune" / "demo" / "eval.jsonl"


def serve_command(target: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "quicktune", "serve", str(target), "--port", str(port), *extra]


def quicktune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quicktune", *args], capture_output=True, text=True, timeout=300)


# --- the served run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(trained_run):
    """The session's run, exported (its recipe's q4_k_m; the files are reused when another test exported it)."""
    from quicktune.export.exporter import export_run

    export_run(trained_run.run_dir, verify=False)
    return trained_run.run_dir


@pytest.fixture(scope="module")
def questions(exported, tmp_path_factory):
    """Eight held-out conversations as eval reads them (the recipe's system prompt inserted), and the exported
    GGUF's answers to them from ``evaluate_gguf``: (eval set, the run's tokenizer, budget, answers, quant)."""
    from quicktune.base_model import open_run
    from quicktune.data.heldout import load_eval_set
    from quicktune.evaluate.runner import answer_budget, evaluate_gguf
    from quicktune.runs import exported_gguf, pick_quantization

    demo = [json.loads(line) for line in DEMO_EVAL.read_text(encoding="utf-8").splitlines()[:6]]
    rows = [{"messages": [m for m in row["messages"] if m["role"] != "system"]} for row in demo]
    rows += [{"messages": [{"role": "user", "content": f"One word for {t}?"},
                           {"role": "assistant", "content": f'{{"word": "{t}"}}'}]} for t in ("snow", "figs")]
    data = write_jsonl(tmp_path_factory.mktemp("serve-questions") / "questions.jsonl", rows)
    run = open_run(exported)
    eval_set = load_eval_set(run.recipe, [str(data)], None)
    tokenizer = run.chat_tokenizer()
    budget = answer_budget(tokenizer, eval_set.references)
    quant = pick_quantization(exported, run.manifest)
    gguf = exported_gguf(exported, run.manifest, quant)
    answers = evaluate_gguf("gguf", gguf, run.recipe, tokenizer, eval_set, budget).answers
    return eval_set, tokenizer, budget, [a.text for a in answers], quant


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """``quicktune serve RUN`` on a free port: (base URL, the server's log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("serve-run") / "serve.log"
    with running(serve_command(exported, port, "--runs-dir", str(exported.parent.parent)), url, log):
        yield url, log


def without_system(prompt: list[dict]) -> list[dict]:
    return [m for m in prompt if m["role"] != "system"]


@pytest.mark.slow
def test_the_served_run_answers_as_eval_reads_its_gguf(served, questions, exported):
    from quicktune.runs import read_manifest

    url, log = served
    eval_set, _, budget, expected, quant = questions
    name = f"{read_manifest(exported)['export']['name']}:{quant}"  # as its Modelfile names it for Ollama
    endpoint = Endpoint(url, name)
    assert endpoint.models() == [name]
    endpoint.check()
    assert eval_set.prompts[0][0] == {"role": "system", "content": "Answer with one JSON object."}
    client = endpoint.client()
    for attempt in (1, 2):  # the same requests again: the same answers (no KV cache carried between requests)
        answers = [endpoint.chat(without_system(p), max_tokens=budget, client=client).text for p in eval_set.prompts]
        assert answers == expected, f"attempt {attempt}"
    assert len(set(expected)) > 2  # different questions, different answers: the comparison can tell them apart
    printed = log.read_text(encoding="utf-8")
    assert f"at {url} as model {name}" in printed
    assert f"curl {url}/chat/completions" in printed and "Answer with one JSON object." in printed


@pytest.mark.slow
def test_eval_through_quicktune_serve_agrees_with_the_gguf_on_every_row(served, exported, questions):
    """The loop a user runs: ``quicktune serve RUN`` in one terminal, ``quicktune eval RUN --endpoint`` in
    another; the served model gives the exported GGUF's answer on every held-out row."""
    from click.testing import CliRunner

    from quicktune.cli import main

    url, _ = served
    name = Endpoint(url, "any").models()[0]
    data = questions[0].source.split(", ")
    result = CliRunner().invoke(main, ["eval", str(exported), "--against", "none", "--data", *data,
                                       "--endpoint", url, "--model", name, "--json",
                                       "--runs-dir", str(exported.parent.parent)])
    assert result.exit_code == 0, result.output
    served_report = json.loads(result.stdout)["served"]
    assert served_report["rows"] == 8 and served_report["agreement"] == 1.0, served_report["first_difference"]


@pytest.mark.slow
def test_the_system_prompt_is_inserted_only_when_a_request_has_none(served, questions, exported):
    url, _ = served
    eval_set, tokenizer, budget, expected, _ = questions
    client = Endpoint(url, "any").client()
    prompt = eval_set.prompts[0]

    def ask(messages: list[dict], **extra) -> tuple[str, int]:
        reply = client.chat.completions.create(model="any", messages=messages, max_tokens=budget, **extra)
        return reply.choices[0].message.content, reply.usage.prompt_tokens

    trained_length = len(tokenizer.encode_prompt(prompt))
    assert ask(without_system(prompt), temperature=0) == (expected[0], trained_length)
    assert ask(prompt, temperature=0) == (expected[0], trained_length)  # its own system message: not a second one
    other = [{"role": "system", "content": "Reply in French."}, *without_system(prompt)]
    assert ask(other, temperature=0)[1] == len(tokenizer.encode_prompt(other))
    # temperature left out: the Modelfile's (the recipe exports temperature 0), so greedy again
    assert ask(without_system(prompt)) == (expected[0], trained_length)


@pytest.mark.slow
def test_streaming_gives_the_same_answer_piece_by_piece(served, questions):
    url, _ = served
    eval_set, _, budget, expected, _ = questions
    client = Endpoint(url, "any").client()
    stream = client.chat.completions.create(model="any", messages=without_system(eval_set.prompts[1]),
                                            max_tokens=budget, temperature=0, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == expected[1]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_and_an_unsupported_option_are_refused(served):
    import openai

    url, _ = served
    endpoint = Endpoint(url, "any", retries=0)
    with pytest.raises(EndpointError, match=r"HTTP 400: This model's maximum context length is 2048 tokens"):
        endpoint.chat([{"role": "user", "content": "word " * 2100}], max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="quicktune serve does not support logprobs"):
        endpoint.client().chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=4, logprobs=True)


# --- a GGUF no run exported ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_gguf_alone_answers_with_its_own_template_and_stops_then_ctrl_c_ends_it(smollm2_gguf, tmp_path):
    from quicktune import llamacpp
    from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens
    from quicktune.models import read_gguf_fields

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    questions = [[{"role": "user", "content": text}] for text in
                 ("What is the capital of France?", "What is the capital of Spain?", "Name three colours.")]
    fields = read_gguf_fields(smollm2_gguf, "tokenizer.")
    tokenizer = ChatTokenizer(None, fields["tokenizer.chat_template"], gguf_special_tokens(fields))
    llm = llamacpp.load(smollm2_gguf, n_ctx=1024)
    stops = {llm.token_eos(), *llm.tokenize(b"<|im_end|>", add_bos=False, special=True)}
    expected = []
    for messages in questions:
        text = tokenizer.render(messages, add_generation_prompt=True)
        ids = llamacpp.greedy(llm, llm.tokenize(text.encode(), add_bos=True, special=True), stops, 48)
        expected.append(llm.detokenize([t for t in ids if t not in stops]).decode("utf-8", errors="replace"))
    del llm
    with running(serve_command(smollm2_gguf, port, "--ctx", "1024"), url, tmp_path / "serve.log") as process:
        endpoint = Endpoint(url, smollm2_gguf.stem)
        assert endpoint.models() == [smollm2_gguf.stem]
        for _ in (1, 2):  # questions that share a prefix, asked twice: what the GGUF answers in-process, each time
            assert [endpoint.chat(q, max_tokens=48).text for q in questions] == expected
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    printed = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "interrupted" in printed and "Traceback" not in printed


# --- errors ----------------------------------------------------------------------------------------


def one_clear_error(done: subprocess.CompletedProcess, said: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert said in done.stderr.splitlines()[0]


@pytest.mark.slow
def test_a_run_without_an_export_is_one_clear_error(trained_run, tmp_path):
    run_dir = copy_run(trained_run.run_dir, tmp_path / "runs" / "tiny" / "v1")
    one_clear_error(quicktune("serve", str(run_dir), "--port", str(free_port())), "has not been exported yet")


def test_a_port_in_use_and_a_bad_gguf_are_one_clear_error(smollm2_gguf, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_clear_error(quicktune("serve", str(smollm2_gguf), "--port", str(port)),
                        f"cannot serve on 127.0.0.1:{port}: the port is in use")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>not a model</html>" * 100)
    one_clear_error(quicktune("serve", str(bad)), "not a GGUF file")


def test_serve_help_teaches():
    done = quicktune("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for part in ("OpenAI-compatible", "127.0.0.1", "default: 8080", "--name", "--quant", "--ctx",
                 "system prompt", "--endpoint http://127.0.0.1:8080/v1"):
        assert part in text, part


# --- the pieces ----------------------------------------------------------------------------------


def test_the_system_prompt_goes_first_unless_the_request_has_one():
    user = {"role": "user", "content": "hi"}
    assert conversation([user], "S") == [{"role": "system", "content": "S"}, user]
    assert conversation([{"role": "developer", "content": "D"}, user], "S")[0] == {"role": "system", "content": "D"}
    assert conversation([user], None) == [user]
    parts = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    assert conversation([{"role": "user", "content": parts}], None) == [user]
    for bad in ([], [{"role": "tool", "content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(RequestError):
            conversation(bad, "S")


def test_left_out_sampling_options_get_the_modelfiles():
    defaults = RequestDefaults(None, {"temperature": 0.0, "top_p": 0.9, "repeat_penalty": 1.0})
    filled = json.loads(defaults.completed(b'{"messages": [], "temperature": 0.7, "top_p": null}'))
    assert filled == {"messages": [], "temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.0}
    assert defaults.completed(b"not json") == b"not json"
    assert base_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/v1"
    assert base_url("::1", 9000) == "http://[::1]:9000/v1"
