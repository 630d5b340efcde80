"""``quicktune data synth`` against real servers: a scripted OpenAI-compatible server of the tests' own
(it answers each row with the reply the test wrote for that row, found by the request's seed), the fault
server of tests/servers.py, and llama-cpp-python's server on SmolLM2 (a weak writer: most rows rejected)."""

from __future__ import annotations

import hashlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.data.synth_check import REASONS
from quicktune.endpoints import Endpoint, EndpointError
from quicktune.synth import SynthRequest, synthesize
from tests.conftest import SMOLLM2, chat, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "Answer in one short sentence."
SEEDS = [
    chat("What colour is the sky on a clear day?", "Blue.", SYSTEM),
    chat("How many legs does a spider have?", "Eight.", SYSTEM),
    chat("Which gas do plants take in to make sugar from sunlight?",
         "Carbon dioxide, which they combine with water using the energy of light.", SYSTEM),
    chat("What is the boiling point of water at sea level in Celsius?", "One hundred degrees.", SYSTEM),
]
EVAL = [chat("Who wrote the play Romeo and Juliet?", "Shakespeare.", SYSTEM)]


def fresh(row: int) -> dict:
    """A row unlike any other: a question about a 40-character code, answered with another."""
    code = hashlib.sha256(str(row).encode()).hexdigest()
    return chat(f"Spell this code backwards: {code[:40]}", code[40:64])


class ScriptedServer:
    """A real OpenAI-compatible HTTP server (a thread) serving model ``writer``: it answers a chat request
    with ``script(seed)`` (the request's seed is the row number under --seed 0), after ``delay`` seconds.
    After ``answers`` replies it stops answering: ``fail`` "drop" closes each connection unanswered (a
    server gone), "429" answers 429. ``requests`` holds every request body, ``keys`` the Authorization."""

    def __init__(self, script: Callable[[int], str], *, delay: float = 0.0, answers: int | None = None,
                 fail: str = "drop") -> None:
        self.requests: list[dict] = []
        self.keys: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "writer", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with owner.lock:
                    owner.requests.append(body)
                    owner.keys.append(self.headers.get("authorization", ""))
                    count = len(owner.requests)
                if answers is not None and count > answers:
                    if fail == "429":
                        self._send(429, {"error": {"message": "Rate limit reached"}})
                    else:
                        self.close_connection = True  # no answer at all: the connection just ends
                    return
                time.sleep(delay)
                text = script(body.get("seed"))
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "writer",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def seeds(self) -> list[int]:
        return [r.get("seed") for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(script, **kwargs) -> ScriptedServer:
        servers.append(ScriptedServer(script, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "seeds.jsonl", SEEDS), write_jsonl(tmp_path / "eval.jsonl", EVAL), tmp_path


def synth(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["data", "synth", *args], env=env)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def as_json(value: dict) -> str:
    return json.dumps(value)


def test_each_row_is_kept_or_rejected_for_its_reason(files, scripted):
    seeds, held, folder = files
    good = [chat("Name the longest river in Africa.", "The Nile."), chat("What is the chemical symbol for gold?",
            "Au."), chat("Which planet is known as the Red Planet?", "Mars.")]
    pirate = {"messages": [{"role": "system", "content": "You are a pirate."}, *good[0]["messages"]]}
    photosynthesis = SEEDS[2]["messages"][2]["content"]
    script = {
        0: "Here is one:\n```json\n" + as_json(pirate) + "\n```\nHope it helps!",  # kept, the seeds' system put in
        1: as_json(chat("how many legs does a SPIDER have", "eight")),  # seed 2 once normalised
        2: as_json(chat("Which gas do plants take in to make sugars from sunlight?", photosynthesis)),
        3: as_json(chat("Who wrote the play Romeo and Juliet?", "William Shakespeare wrote it around 1595.")),
        4: "I'm sorry, I can't help with that.",
        5: as_json({"instruction": "Name a prime number.", "output": "Seven."}),
        6: "Sure: " + as_json(good[1]) + " (one new example)",
        7: as_json(chat("Name the longest river in Africa!", "The Nile river.")),  # like row 0, kept this run
        8: as_json(chat("Tell me a long story.", "word " * 2000)),
        9: as_json(good[2]),
    }
    server = scripted(script.get)
    out = folder / "more.jsonl"
    result = synth(str(seeds), "--endpoint", server.url, "--model", "writer", "-n", "3", "-o", str(out),
                   "--concurrency", "1", "--eval", str(held), "--max-tries", "12", "--api-key-env", "SYNTH_KEY",
                   env={"SYNTH_KEY": "sk-synth-SECRET-42", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output

    system = {"role": "system", "content": SYSTEM}
    assert rows(out) == [{"messages": [system, *row["messages"]]} for row in good]
    rejected = rows(folder / "more.rejected.jsonl")
    assert [(r["row"], r["reason"]) for r in rejected] == [
        (1, "duplicate"), (2, "near duplicate"), (3, "leaks eval"), (4, "not parseable"), (5, "format"),
        (7, "near duplicate"), (8, "too long")]
    details = [r["detail"] for r in rejected]
    assert details[0] == f"the same as {seeds}:2"
    assert details[1].endswith(f"like {seeds}:3")
    assert details[2].startswith(f"asks what {held}:1 asks")
    assert "looks like alpaca" in details[4]
    assert details[5].endswith(f"like {out}:1")
    chars = len(SYSTEM) + len("Tell me a long story.") + len("word " * 2000)  # the system prompt counts too
    assert details[6] == f"{chars} characters > 8192 (no --recipe to count tokens)"
    assert rejected[3]["reply"] == script[4]
    assert "Rejected rows" in result.output and "not parseable" in result.output
    assert "3 of 3 rows in" in result.output

    lineage = json.loads((folder / "more.jsonl.synth.json").read_text())
    assert lineage["endpoint"] == {"url": server.url, "model": "writer"}
    assert lineage["seeds"] == {"path": str(seeds), "sha256": hashlib.sha256(seeds.read_bytes()).hexdigest(),
                                "rows": 4}
    assert (lineage["rows"], lineage["rejected"], lineage["next_row"], lineage["format"]) == (3, 7, 10, "messages")
    (run,) = lineage["runs"]
    assert (run["status"], run["accepted"], run["rejected"], run["params"]["temperature"]) == ("finished", 3, 7, 0.9)

    # one request per row, in order, each with its own seed, three seed rows shown without their system prompt
    assert server.seeds() == list(range(10))
    assert {r["temperature"] for r in server.requests} == {0.9}
    prompt = server.requests[0]["messages"][-1]["content"]
    assert prompt.count('{"messages": [{"role": "user"') == 3 and f"system prompt (left out above):\n{SYSTEM}" in prompt
    assert set(server.keys) == {"Bearer sk-synth-SECRET-42"}
    for path in folder.rglob("*"):  # the key reaches the server and no file
        assert b"sk-synth-SECRET" not in path.read_bytes(), path


HEAVY_PROBE = """\
import sys
from quicktune.cli import main
try:
    main(sys.argv[1:], prog_name="quicktune")
finally:
    print("HEAVY", sorted(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
"""


def test_ctrl_c_keeps_every_row_and_the_same_command_continues(files, scripted):
    seeds, _, folder = files
    # 2 s a reply: the Ctrl-C must land while rows 3-4 are still being asked, even on a loaded machine
    # (at 0.5 s a CI run with a benchmark beside it saw the command finish first)
    server = scripted(lambda seed: as_json(fresh(seed)), delay=2.0)
    out = folder / "more.jsonl"
    command = [sys.executable, "-c", HEAVY_PROBE, "data", "synth", str(seeds), "--endpoint", server.url,
               "--model", "writer", "-n", "4", "-o", str(out), "--concurrency", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(rows(out)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    kept = rows(out)
    assert 2 <= len(kept) < 4
    assert json.loads((folder / "more.jsonl.synth.json").read_text())["runs"][0]["status"] == "interrupted"

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr  # data synth without --recipe loads no torch
    final = rows(out)
    assert final[: len(kept)] == kept and len(final) == 4
    assert len({as_json(r) for r in final}) == 4
    assert len(server.seeds()) == len(set(server.seeds()))  # the second run asked no row number again
    lineage = json.loads((folder / "more.jsonl.synth.json").read_text())
    assert [r["status"] for r in lineage["runs"]] == ["interrupted", "finished"]
    assert lineage["runs"][1]["first_row"] > max(server.seeds()[: len(kept)])


def test_a_server_gone_mid_run_keeps_the_rows_and_a_torn_line_is_cut_on_resume(files, scripted):
    seeds, _, folder = files
    out = folder / "more.jsonl"
    dying = scripted(lambda seed: as_json(fresh(seed)), answers=2)

    def request(url: str) -> SynthRequest:
        return SynthRequest(seeds, out, Endpoint(url, "writer", retries=0, timeout=5.0), count=4, concurrency=2)

    with pytest.raises(EndpointError, match=r"cannot connect") as caught:
        synthesize(request(dying.url))
    assert "The 2 row(s) kept so far are in" in caught.value.hint
    kept = [{"messages": [{"role": "system", "content": SYSTEM}, *fresh(row)["messages"]]} for row in (0, 1)]
    assert sorted(rows(out), key=as_json) == sorted(kept, key=as_json)  # in the order they came back
    assert json.loads((folder / "more.jsonl.synth.json").read_text())["runs"][0]["status"] == "failed"

    with out.open("a") as handle:  # a crash mid-write: half a line, no newline
        handle.write('{"messages": [{"role": "us')
    healthy = scripted(lambda seed: as_json(fresh(seed)))
    summary = synthesize(request(healthy.url))
    assert summary.status == "finished" and summary.accepted == 2
    assert any("removed a last line cut off mid-write" in note for note in summary.notes)
    final = rows(out)
    assert len(final) == 4 and len({as_json(r) for r in final}) == 4
    assert set(healthy.seeds()).isdisjoint(dying.seeds())


def test_a_429_storm_mid_run_is_one_clear_error_and_keeps_the_rows(files, scripted):
    seeds, _, folder = files
    out = folder / "more.jsonl"
    server = scripted(lambda seed: as_json(fresh(seed)), answers=2, fail="429")
    result = synth(str(seeds), "--endpoint", server.url, "--model", "writer", "-n", "5", "-o", str(out),
                   "--concurrency", "1")
    assert result.exit_code == 2, result.output
    assert "still rate-limited (429) (after 4 retries): Rate limit reached" in result.output
    assert "The 2 row(s) kept so far are in" in result.output
    assert "Traceback" not in result.output
    assert rows(out) == [{"messages": [{"role": "system", "content": SYSTEM}, *fresh(r)["messages"]]} for r in (0, 1)]


@pytest.mark.parametrize(("mode", "model", "said"), [
    ("401", "m", "refused the API key (401)"),
    ("ok", "other", "no model named 'other' there; it serves m"),
])
def test_a_bad_endpoint_is_refused_before_any_row(files, fault_server, mode, model, said):
    seeds, _, folder = files
    result = synth(str(seeds), "--endpoint", fault_server.url(mode), "--model", model, "-n", "2",
                   "-o", str(folder / "more.jsonl"))
    assert result.exit_code == 2 and said in result.output, result.output
    assert fault_server.requests == {}  # no row was asked for
    assert sorted(p.name for p in folder.iterdir()) == ["eval.jsonl", "seeds.jsonl"]


def test_echoed_prompts_are_rejected_until_the_tries_run_out(files, fault_server):
    """The fault server echoes the prompt: the first row in that text is a seed shown in it, a duplicate."""
    seeds, _, folder = files
    result = synth(str(seeds), "--endpoint", fault_server.url("ok"), "--model", "m", "-n", "2",
                   "-o", str(folder / "more.jsonl"), "--max-tries", "3", "--concurrency", "2")
    assert result.exit_code == 2, result.output
    assert "0 of 2 rows after 3 tries this run" in result.output
    rejected = rows(folder / "more.rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["duplicate"] * 3
    assert all(r["detail"].startswith(f"the same as {seeds}:") for r in rejected)
    assert all(r["reply"].startswith("echo: Here are 3 examples") for r in rejected)
    assert fault_server.requests == {"ok": 3}
    assert not (folder / "more.jsonl").exists()


def test_a_server_that_hangs_times_out(files, fault_server):
    seeds, _, folder = files
    endpoint = Endpoint(fault_server.url("hang"), "m", retries=0, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(EndpointError, match=r"no answer within 1 s"):
        synthesize(SynthRequest(seeds, folder / "more.jsonl", endpoint, count=2, concurrency=2))
    assert time.monotonic() - start < 15


def test_a_broken_seed_line_names_file_line_and_field(tmp_path, scripted):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [SEEDS[0], '{"messages": [{"role": "user"}]}', "{oops"])
    server = scripted(lambda seed: as_json(fresh(seed)))
    result = synth(str(seeds), "--endpoint", server.url, "--model", "writer", "-n", "2",
                   "-o", str(tmp_path / "more.jsonl"))
    assert result.exit_code == 2
    assert f"{seeds}:2: messages[0].content: missing field" in result.output
    assert f"{seeds}:3: invalid JSON" in result.output
    assert "Traceback" not in result.output
    assert server.requests == [] and sorted(p.name for p in tmp_path.iterdir()) == ["seeds.jsonl"]


@pytest.mark.slow
def test_with_a_recipe_rows_fit_its_tokens_and_its_train_and_eval_files_count(files, scripted, tiny_data):
    seeds, _, folder = files
    train, held = tiny_data
    recipe = folder / "tiny.yaml"
    recipe.write_text(f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 48\n"
                      f"data:\n  train: {train}\n  eval: {held}\n")
    script = {
        0: as_json(chat("Describe the sea.", "The sea is wide and deep and blue and cold and " * 6)),
        1: as_json(chat("One word for snow?", "cold")),  # the recipe's eval file asks this
        2: as_json(chat("One word for tea?", '{"word": "tea"}')),  # a row of the recipe's train file
        3: as_json(chat("One word for fog?", "grey")),
    }
    server = scripted(script.get)
    out = folder / "more.jsonl"
    result = synth(str(seeds), "--endpoint", server.url, "--model", "writer", "-n", "1", "-o", str(out),
                   "--concurrency", "1", "--recipe", str(recipe), "--max-tries", "4")
    assert result.exit_code == 0, result.output
    assert rows(out) == [chat("One word for fog?", "grey", SYSTEM)]
    rejected = rows(folder / "more.rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["too long", "leaks eval", "duplicate"]
    assert rejected[0]["detail"].endswith("tokens > max_seq_length 48")
    assert rejected[2]["detail"] == f"the same as {train}:1"


@pytest.mark.slow
def test_smollm2_behind_llama_cpp_server(smollm2_server, tiny_data, tmp_path):
    """A real, weak writer: whatever it writes, each row is kept only after passing the check, and
    every row tried is accounted for."""
    url, model = smollm2_server
    train, held = tiny_data
    out = tmp_path / "more.jsonl"
    result = synth(str(train), "--endpoint", url, "--model", model, "-n", "3", "-o", str(out), "--eval", str(held),
                   "--max-tokens", "64", "--concurrency", "2", "--max-tries", "6")
    assert result.exit_code in (0, 2), result.output
    kept, rejected = rows(out), rows(tmp_path / "more.rejected.jsonl")
    lineage = json.loads((tmp_path / "more.jsonl.synth.json").read_text())
    assert (lineage["rows"], lineage["rejected"]) == (len(kept), len(rejected))
    assert len(kept) <= 3 and len(kept) + len(rejected) <= 6
    if len(kept) < 3:  # out of tries: every one of them was asked and judged
        assert result.exit_code == 2 and len(kept) + len(rejected) == 6
    else:
        assert result.exit_code == 0
    assert all(r["reason"] in REASONS and r["detail"] for r in rejected)
    seed_texts = {as_json(r) for r in rows(train)}
    assert all("messages" in r and as_json(r) not in seed_texts for r in kept)


@pytest.mark.parametrize(("seed", "reply", "kept"), [
    ({"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi?"},
                        {"from": "gpt", "value": "Hello."}]},
     '{"conversations": [{"from": "human", "value": "Bye?"}, {"from": "gpt", "value": "Goodbye."}], "id": 7}',
     {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Bye?"},
                        {"from": "gpt", "value": "Goodbye."}]}),
    ({"system": "Be kind.", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
     'Here: {"conversations": [{"from": "human", "value": "Bye?"}, {"from": "gpt", "value": "Goodbye."}]}',
     {"conversations": [{"from": "human", "value": "Bye?"}, {"from": "gpt", "value": "Goodbye."}],
      "system": "Be kind."}),
    ({"instruction": "Add.", "input": "1 2", "output": "3", "system": "Be exact."},
     '```\n[{"instruction": "Multiply.", "input": "2 3", "output": "6", "system": "Be vague."}]\n```',
     {"instruction": "Multiply.", "input": "2 3", "output": "6", "system": "Be exact."}),
    ({"text": "The cat sat on the mat."}, '{"text": "A dog slept by the door."}', {"text": "A dog slept by the door."}),
])
def test_each_format_keeps_its_shape_and_the_seeds_system_prompt(tmp_path, seed, reply, kept):
    from quicktune.data.synth_check import LengthLimit, RowCheck, extract_json, read_seeds, with_system

    seeds = read_seeds(write_jsonl(tmp_path / "seeds.jsonl", [seed]))
    row = with_system(extract_json(reply), seeds.fmt, seeds.system(0), seeds.records[0])
    assert row == kept
    assert RowCheck(seeds.fmt, LengthLimit(), pool=list(seeds.examples)).check(reply, row, "new:1").accepted
    assert RowCheck(seeds.fmt, LengthLimit(), pool=list(seeds.examples)).check(
        "", with_system(seed, seeds.fmt, seeds.system(0), seed), "new:1").reason == "duplicate"
