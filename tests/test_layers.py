"""The house's floors hold: import-linter's contracts in pyproject.toml (data flows one way, down the
floors; no import circle between sibling modules), checked on the code as it is, and shown to fail
on an arrow up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extras (pip install -e '.[test]')")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=300)


def test_the_layer_contracts_are_kept():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(("module", "line", "broken", "reported"), [
    # the run folder (a low floor) importing the trainer: an arrow up (and so a circle too)
    ("runs/files.py", "from quicktune.train import trainer", "0 kept, 2 broken",
     "quicktune.runs.files -> quicktune.train.trainer"),
    # data/records.py importing data/check.py, which imports it: a circle on one floor
    ("data/records.py", "from quicktune.data import check", "1 kept, 1 broken", ".records -> .check"),
])
def test_an_arrow_up_or_a_circle_breaks_a_contract(tmp_path, module, line, broken, reported):
    """The same check on a copy of the package with one import added."""
    shutil.copytree(ROOT / "quicktune", tmp_path / "quicktune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "quicktune" / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"Contracts: {broken}." in done.stdout
    assert reported in done.stdout, done.stdout


# Modules that subclass a library's class at import time, and so import it at their top.
HEAVY_AT_TOP = {"quicktune.train.callbacks"}  # transformers.TrainerCallback
HEAVY = ("torch", "transformers", "trl", "peft", "unsloth", "datasets", "accelerate", "bitsandbytes", "llama_cpp")


def test_importing_any_module_imports_no_heavy_library():
    """Every module keeps torch, transformers and the rest inside the functions that use them:
    Unsloth must be imported before transformers/trl/peft (quicktune.backend does it when a
    command loads a model), and commands that need no model must start fast."""
    probe = (
        "import importlib, pkgutil, sys, quicktune\n"
        f"skip = {sorted(HEAVY_AT_TOP)!r} + ['quicktune.__main__']\n"
        "found = pkgutil.walk_packages(quicktune.__path__, 'quicktune.')\n"
        "names = sorted(m.name for m in found if m.name not in skip)\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        f"print('MODULES', len(names), 'HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    modules, heavy = done.stdout.split("HEAVY")
    assert int(modules.split()[1]) > 70
    assert heavy.strip() == "[]", f"imported at module level somewhere: {heavy.strip()}"
