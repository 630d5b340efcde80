"""The OpenAI-compatible client layer against real servers: llama-cpp-python's server on SmolLM2, and a
server of the tests' own that misbehaves (tests/servers.py)."""

from __future__ import annotations

import time

import pytest

from quicktune.endpoints import Endpoint, EndpointError


def quick(url: str, **kwargs) -> Endpoint:
    return Endpoint(url, kwargs.pop("model", "m"), **{"retries": 2, "timeout": 5.0, **kwargs})


def test_echo_and_model_check(fault_server):
    endpoint = quick(fault_server.url("ok"))
    endpoint.check()
    assert endpoint.chat([{"role": "user", "content": "hello"}], max_tokens=8).text == "echo: hello"
    with pytest.raises(EndpointError, match="no model named 'other' there; it serves m"):
        quick(fault_server.url("ok"), model="other").check()


@pytest.mark.parametrize(("mode", "said"), [
    ("429", r"still rate-limited \(429\) \(after 2 retries\): Rate limit reached"),
    ("500", r"answered HTTP 500 \(after 2 retries\): internal error"),
    ("html", r"answered with something that is not JSON \('<html><body>Bad gateway page</body></html>'\)"),
    ("truncated", "answered with JSON that does not parse"),
    ("nochoices", r"answered without a chat completion \(no choices\): model is loading"),
    ("401", r"refused the API key \(401\): Incorrect API key provided"),
])
def test_each_fault_is_one_clear_error(fault_server, mode, said):
    with pytest.raises(EndpointError, match=said) as caught:
        quick(fault_server.url(mode)).chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert str(caught.value).startswith(f"--endpoint {fault_server.url(mode)}: ")
    expected = 3 if mode in ("429", "500") else 1  # retried twice, others not retried
    assert fault_server.requests[mode] == expected


def test_a_429_then_success_is_retried(fault_server):
    reply = quick(fault_server.url("429once")).chat([{"role": "user", "content": "again"}], max_tokens=4)
    assert reply.text == "echo: again"
    assert fault_server.requests["429once"] == 2


def test_a_server_that_hangs_times_out(fault_server):
    start = time.monotonic()
    with pytest.raises(EndpointError, match=r"no answer within 1 s"):
        quick(fault_server.url("hang"), timeout=1.0, retries=0).chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert time.monotonic() - start < 10


def test_an_unreachable_server(fault_server):
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match=r"cannot connect \(.*\)") as caught:
        quick(url, retries=0).check()
    assert "Is the server running" in str(caught.value)


def test_not_a_url_and_no_model():
    with pytest.raises(EndpointError, match="not an http"):
        Endpoint("localhost:11434", "m")
    with pytest.raises(EndpointError, match="no model name"):
        Endpoint("http://localhost:11434/v1", " ")


def test_the_key_comes_from_the_environment_and_is_never_described(fault_server, monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "sk-secret-123")
    endpoint = quick(fault_server.url("ok"), key_env="MY_SERVER_KEY")
    endpoint.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert fault_server.keys[-1] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(endpoint) and "sk-secret" not in str(endpoint.describe())
    monkeypatch.delenv("MY_SERVER_KEY")
    with pytest.raises(EndpointError, match="MY_SERVER_KEY is not set"):
        endpoint.chat([{"role": "user", "content": "hi"}], max_tokens=4)


def test_a_401_never_echoes_the_key(fault_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-456")
    with pytest.raises(EndpointError) as caught:
        quick(fault_server.url("401")).check()
    assert "sk-secret" not in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)


@pytest.mark.slow
def test_the_real_llama_cpp_server_answers_greedily(smollm2_server):
    url, model = smollm2_server
    endpoint = Endpoint(url, model)
    endpoint.check()
    asked = [{"role": "user", "content": "What is 2 + 2?"}]
    reply = endpoint.chat(asked, max_tokens=12)
    assert reply.text.strip() and reply.finish_reason in ("stop", "length")
    with pytest.raises(EndpointError, match="no model named 'nope'"):
        Endpoint(url, "nope").check()
