"""model.revision pins the weights as well as the tokenizer: training loads that commit's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicktune.errors import QuicktuneError


def test_a_revision_loads_the_weights_of_that_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from quicktune.base_model import prepare_base

    # A hub cache as huggingface_hub lays it out, with two commits of one repository (offline).
    repo = tmp_path / "hub" / "models--someone--tiny"
    old, new = "a" * 40, "b" * 40
    for commit, weights in ((old, b"old weights"), (new, b"new weights")):
        folder = repo / "snapshots" / commit
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    pinned = prepare_base("someone/tiny", old)
    assert Path(pinned.load_from) == repo / "snapshots" / old
    assert (Path(pinned.load_from) / "model.safetensors").read_bytes() == b"old weights"
    assert pinned.fingerprint == old and pinned.kind == "hub"
    assert prepare_base("someone/tiny").load_from == "someone/tiny"  # no revision: the hub id, as before
    with pytest.raises(QuicktuneError, match=f"model.revision {'c' * 40}: could not get someone/tiny at that revision"):
        prepare_base("someone/tiny", "c" * 40)
