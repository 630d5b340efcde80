"""A Hugging Face Hub cache on disk, in the layout huggingface_hub reads (``HF_HUB_CACHE``):

    datasets--OWNER--NAME/
        refs/main                      the commit sha main points at
        blobs/<sha256 of the content>  each file once
        snapshots/<commit>/<path>      a relative symlink to its blob

with real small data files (JSONL, Parquet), so that tests read Hub datasets with no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest


def jsonl_bytes(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


class HubCache:
    """A Hub cache folder tests add dataset repositories to."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, repo_id: str, files: dict[str, bytes], *, commit: str = "a" * 40, ref: str | None = "main") -> str:
        """One commit of dataset ``repo_id`` holding ``files`` (path in the repository -> bytes); ``ref`` (a
        branch) points at it. Returns the commit."""
        owner, name = repo_id.split("/")
        repo = self.root / f"datasets--{owner}--{name}"
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot = repo / "snapshots" / commit
        for relative, content in files.items():
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
            target = snapshot / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.relpath(blob, target.parent))
        if ref is not None:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        return commit


def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    """An empty Hub cache that this process and the processes it starts read, offline (a test's fixture)."""
    home = tmp_path / "hf-home"
    cache = HubCache(home / "hub")
    for key, value in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_DATASETS_CACHE": home / "datasets",
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, str(value))
    # huggingface_hub and datasets read these when imported: this process may have imported them already.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return cache
