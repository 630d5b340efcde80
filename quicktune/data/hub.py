"""Hugging Face Hub datasets (``hf://OWNER/NAME``, ``quicktune.hubref``): found in the Hub cache, their rows chosen.

The dataset's snapshot is found (or, online, downloaded) with ``huggingface_hub.snapshot_download``, in
the cache every Hugging Face tool shares (``HF_HUB_CACHE``, ``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only
the cache is read. The snapshot folder's name is the commit the rows come from: the run manifest records
it (``source_identity``). ``datasets`` finds the subset's split's files in that folder as ``load_dataset``
would (the dataset card's ``configs``, else its file names); ``quicktune.data.load`` reads them with
quicktune's own readers, one row at a time, so a ``limit`` reads no further and a broken line is named.

Why not ``load_dataset`` itself: with datasets 4.8, ``load_dataset("OWNER/NAME")`` under
``HF_HUB_OFFLINE=1`` raises "Couldn't reach 'OWNER/NAME' on the Hub (OfflineModeIsEnabled)" even with the
snapshot in the Hub cache (it wants its own Arrow cache of an earlier load), and its streaming reader
imports torch (``IterableDataset.__init__``), which ``data check`` and ``plan`` must not.

Each row is named ``hf://OWNER/NAME[split]:row N``: N is the row's index in the split, as
``load_dataset(...)[N]`` and the Hub's dataset viewer number it.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicktune.errors import DataError
from quicktune.hubref import HubDataset, parse_hub_ref
from quicktune.runs.files import sha256_file


@dataclass(frozen=True)
class HubSplit:
    """One split of a dataset snapshot in the cache: the commit, the folder and the split's data files."""

    dataset: HubDataset
    revision: str  # the commit sha of the snapshot
    folder: Path
    files: tuple[Path, ...]

    def fingerprint(self) -> str:
        """sha256 over the split's files, each as its path in the snapshot and the blob it is (the blob's name
        is its content hash), or its bytes where the file is no link into the cache."""
        digest = hashlib.sha256()
        for file in self.files:
            blob = os.readlink(file) if file.is_symlink() else None
            content = Path(blob).name if blob else sha256_file(file)
            digest.update(f"{file.relative_to(self.folder)} {content}\n".encode())
        return digest.hexdigest()


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What this process read for each entry: the manifest records the commit the rows came from, even if the
# cache's main has moved since.
_READ: dict[str, HubSplit] = {}


def hub_dataset(ref: str) -> HubDataset:
    try:
        return parse_hub_ref(ref)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def hub_rows(split: HubSplit, records: Iterable[Any]) -> Iterator[tuple[str, Any, str | None]]:
    """``records`` (the split's files read in order, objects with ``origin``, ``value`` and ``error``) as the
    dataset's rows: the first ``limit``, ``sample`` of them, columns renamed by ``columns``, each as (its row
    reference, its value, why it could not be read or None)."""
    dataset = split.dataset
    label = dataset.label()
    rows: Iterator[tuple[int, Any]] = enumerate(records)
    if dataset.limit is not None:
        rows = _first(rows, dataset.limit)
    if dataset.sample is not None:
        rows = iter(_sample(rows, dataset.sample, dataset.seed or 0))
    checked = False
    for index, record in rows:
        origin = f"{label}:row {index}"
        if record.error is not None:  # named in the snapshot's file too: the line a user can open
            file, _, line = record.origin.rpartition(":")
            yield origin, None, f"{record.error} ({in_snapshot(Path(file), split.folder)}:{line})"
            continue
        value = _without_nulls(record.value)
        if not checked and isinstance(value, dict):
            _check_columns(dataset, value, label)
            checked = True
        yield origin, _renamed(value, dataset.columns) if isinstance(value, dict) else value, None


def source_identity(ref: str) -> dict[str, Any]:
    """What the run manifest records of a Hub entry: the commit its rows came from and a sha256 of its files."""
    split = _READ.get(ref) or open_split(ref)
    return {"revision": split.revision, "sha256": split.fingerprint(), "dataset": split.dataset.hf}


def open_split(ref: str) -> HubSplit:
    """``ref``'s snapshot in the cache (downloaded first when online and missing) and its split's files."""
    dataset = hub_dataset(ref)
    folder = _snapshot(dataset)
    files = _split_files(dataset, folder)
    split = HubSplit(dataset, folder.name, folder, files)
    _READ[ref] = split
    return split


# --- the snapshot ------------------------------------------------------------------------------------


def _snapshot(dataset: HubDataset) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {dataset.revision}" if dataset.revision else ""
    fetch = (f"hf download --repo-type dataset {dataset.hf}"
             + (f" --revision {dataset.revision}" if dataset.revision else ""))
    offline = constants.is_offline_mode()

    def snapshot(local_only: bool) -> Path:
        return Path(snapshot_download(dataset.hf, repo_type="dataset", revision=dataset.revision,
                                      local_files_only=local_only))

    try:
        if _COMMIT.match(dataset.revision or "") and not offline:
            try:  # a commit never changes: the cached one is it
                return snapshot(local_only=True)
            except LocalEntryNotFoundError:
                pass
        return snapshot(local_only=offline)
    except RepositoryNotFoundError:
        raise DataError(f"hf://{dataset.hf}: no such dataset on the Hugging Face Hub (or it is private and no "
                        "token is set)", hint="Check OWNER/NAME on https://huggingface.co/datasets, or log in "
                        "with `hf auth login` for a private or gated dataset.") from None
    except RevisionNotFoundError:
        raise DataError(f"hf://{dataset.hf}: the dataset has no revision {dataset.revision!r}",
                        hint="revision is a commit sha, a branch or a tag of the dataset's repository.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = ("HF_HUB_OFFLINE=1 is set, so quicktune reads Hub datasets from the cache only" if offline
               else "the Hub could not be reached to download it")
        raise DataError(
            f"hf://{dataset.hf}{at}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and {why}",
            hint=f"Download it once while online: `{fetch}` (or run this command again without HF_HUB_OFFLINE); "
            "set HF_HUB_CACHE or HF_HOME if your cache is elsewhere.",
        ) from None
    except HfHubHTTPError as exc:
        raise DataError(f"hf://{dataset.hf}: the Hugging Face Hub answered {exc}",
                        hint=f"Try again, or download it with `{fetch}` and set HF_HUB_OFFLINE=1.") from None


def _split_files(dataset: HubDataset, folder: Path) -> tuple[Path, ...]:
    """The data files of the subset's split, as ``datasets`` finds them in a local folder."""
    builder = _builder(dataset, folder)
    found = builder.config.data_files or {}
    if dataset.split not in found:
        subset = f" (subset {dataset.subset})" if dataset.subset else ""
        raise DataError(f"{dataset.label()}: the dataset{subset} has no split {dataset.split!r}; its splits: "
                        f"{', '.join(found) or 'none'}", hint="Set split to one of them.")
    return tuple(Path(str(name)) for name in found[dataset.split])


def _builder(dataset: HubDataset, folder: Path) -> Any:
    import datasets

    datasets.utils.logging.disable_progress_bar()
    try:
        return datasets.load_dataset_builder(str(folder), dataset.subset)
    except ValueError as exc:  # an unknown subset ("BuilderConfig 'x' not found. Available: [...]"), mixed files
        subset = "BuilderConfig" in str(exc) or "config name" in str(exc).lower()
        raise DataError(f"hf://{dataset.hf}: {exc}", hint="Set subset to one of the dataset's subsets (load_dataset's "
                        "name), or leave it out for the default." if subset else None) from None
    except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError, datasets.exceptions.EmptyDatasetError
            ) as exc:
        raise DataError(f"hf://{dataset.hf}: no data files in its snapshot {folder}: {exc}") from None


def _first(rows: Iterator[tuple[int, Any]], limit: int) -> Iterator[tuple[int, Any]]:
    for item in rows:
        yield item
        if item[0] + 1 >= limit:
            return


def _sample(rows: Iterator[tuple[int, Any]], size: int, seed: int) -> list[tuple[int, Any]]:
    """``size`` rows drawn uniformly (reservoir sampling, one pass), in the dataset's order."""
    chance = random.Random(seed)
    kept: list[tuple[int, Any]] = []
    for seen, item in enumerate(rows):
        if seen < size:
            kept.append(item)
        else:
            slot = chance.randrange(seen + 1)
            if slot < size:
                kept[slot] = item
    return sorted(kept, key=lambda item: item[0])


def in_snapshot(file: Path, folder: Path) -> str:
    """A file of a snapshot as its path in the dataset's repository."""
    return str(file.relative_to(folder)) if file.is_relative_to(folder) else str(file)


def _check_columns(dataset: HubDataset, row: dict[str, Any], label: str) -> None:
    missing = [name for name in dataset.columns if name not in row]
    if missing:
        raise DataError(f"{label}: columns names {', '.join(missing)}, which the dataset does not have; its "
                        f"columns: {', '.join(row)}", hint="columns maps the dataset's column to the field "
                        "quicktune reads, e.g. {question: instruction, answer: output}.")


def _renamed(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    renamed = {columns[key]: value for key, value in row.items() if key in columns}
    return {**{key: value for key, value in row.items() if key not in columns and key not in renamed}, **renamed}


def _without_nulls(value: Any) -> Any:
    """A row as its file wrote it: Arrow gives every row every column and struct field, null where the row has
    none; dropped, so that a missing field reads as missing (as a JSONL line without it)."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value
