"""What training data a run added since another run: its parent (``--from``), or any run ``runs compare`` names.

Each run keeps the sha256 of every row it trained on (after de-duplication and the held-out split),
16 hex digits a line, sorted, in ``train_rows.sha256`` beside its manifest. Two runs' data differ by:
- the files: a training file of the later run the earlier one did not train on with the same
  contents (path and sha256, from the manifests' ``data.files``), with its rows;
- the rows: the later run's rows whose hash the earlier run's file does not hold (a file that
  changed adds only its new rows). A run trained before the file existed has no row hashes:
  the rows are then unknown (None), the files still shown.
The manifest of a run trained ``--from`` another records the difference as ``data_since_parent``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from quicktune import runs

ROWS_FILE = "train_rows.sha256"
ROW_HASH_DIGITS = 16


def row_hash(row: Any) -> str:
    """A training row's hash (an Example or a preference pair): its content without where it came from."""
    content = dataclasses.asdict(row)
    content.pop("origin", None)
    payload = json.dumps(content, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:ROW_HASH_DIGITS]


def write_row_hashes(run_dir: Path, rows: list) -> list[str]:
    """Writes the sorted hashes of ``rows`` (the rows the run trains on) into ``run_dir``; returns them."""
    hashes = sorted({row_hash(row) for row in rows})
    runs.write_atomic(run_dir / ROWS_FILE, "".join(h + "\n" for h in hashes))
    return hashes


def read_row_hashes(run_dir: Path) -> set[str] | None:
    """The row hashes a run recorded; None when it recorded none (trained before they were kept)."""
    path = run_dir / ROWS_FILE
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def added_files(before: dict | None, after: dict | None) -> list[dict[str, Any]]:
    """The training files of the ``after`` manifest's data section (path, sha256, rows) that the ``before``
    one did not have with the same contents."""
    known = {(f.get("path"), f.get("sha256")) for f in (before or {}).get("files", [])}
    return [
        {"path": f["path"], "sha256": f["sha256"], "rows": f.get("rows")}
        for f in (after or {}).get("files", [])
        if f.get("split", "train") == "train" and (f.get("path"), f.get("sha256")) not in known
    ]


def data_added(earlier: Path, data: dict | None, hashes: set[str] | None) -> dict[str, Any]:
    """What a run (its manifest ``data`` section and row ``hashes``) trains on that run ``earlier`` did not:
    ``{"since": recipe/vN, "files": [...], "new_rows": N or None, "new_rows_sha256": digest or None}``
    (the digest: sha256 of the new rows' sorted hashes, one a line)."""
    before = runs.read_manifest(earlier).get("data")
    known = read_row_hashes(earlier)
    new = None if known is None or hashes is None else sorted(hashes - known)
    return {
        "since": runs.run_label(earlier),
        "files": added_files(before, data),
        "new_rows": None if new is None else len(new),
        "new_rows_sha256": None if new is None else hashlib.sha256("".join(h + "\n" for h in new).encode()).hexdigest(),
    }


def compare_data(earlier: Path, later: Path) -> dict[str, Any]:
    """``data_added`` between two run folders (what ``runs compare A B`` shows)."""
    return data_added(earlier, runs.read_manifest(later).get("data"), read_row_hashes(later))
