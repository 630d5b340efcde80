"""Ollama's command line: the one place quicktune runs ``ollama`` (for ``quicktune runs promote`` / ``rollback``).

The commands, as Ollama documents its CLI (ollama/ollama ``docs/cli.md``, ``ollama --help``):

* ``ollama create MODEL -f Modelfile``: make MODEL from a Modelfile. quicktune's Modelfiles say
  ``FROM ./<run>-<quant>.gguf``, so it runs in the Modelfile's folder. On an existing MODEL it
  replaces the manifest and deletes the old blobs no other model uses.
* ``ollama cp SOURCE DESTINATION``: copy a model; only the manifest is copied, the two names
  share their blobs (so ``NAME:latest`` costs no disk beside ``NAME:vN``).
* ``ollama show MODEL``: describe a model; fails (``Error: model 'x' not found``) when there is none.

A model name here is ``NAME:TAG`` with NAME of lower-case letters, digits and ``-_.``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from quicktune.errors import QuicktuneError

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
LATEST = "latest"
_NAME_RULE = ("use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit; "
              "no ':' (quicktune adds the tags :vN and :latest)")


def ollama_on_path() -> str | None:
    """The ``ollama`` executable on PATH, or None."""
    return shutil.which("ollama")


def check_name(name: str) -> str:
    """``name`` if Ollama takes it as a model name (lower-case letters, digits, ``-_.``; no ``:``), else an error."""
    if NAME.match(name):
        return name
    raise QuicktuneError(
        f"--as {name}: not an Ollama model name",
        problems=[_NAME_RULE],
        hint=f"e.g. --as {default_name(name) or 'my-model'}",
    )


def default_name(recipe_name: str) -> str:
    """The Ollama name a recipe's versions are promoted as: its name in lower case, other characters as ``-``."""
    return re.sub(r"[^a-z0-9._-]+", "-", recipe_name.lower()).strip("-._")


def tag(name: str, version: str) -> str:
    return f"{name}:{version}"


def create_args(model: str, modelfile: Path) -> list[str]:
    """``ollama create MODEL -f Modelfile.q4_k_m``, to run in the Modelfile's folder."""
    return ["ollama", "create", model, "-f", modelfile.name]


def copy_args(source: str, destination: str) -> list[str]:
    return ["ollama", "cp", source, destination]


def show_args(model: str) -> list[str]:
    return ["ollama", "show", model]


def shown(args: list[str]) -> str:
    """A command as a user would type it."""
    return shlex.join(args)


class OllamaFailed(QuicktuneError):
    """``ollama`` ended with an error; the message carries what it printed."""


def run(args: list[str], cwd: Path | None = None) -> str:
    """Runs ``args`` (one of the commands above) with the ``ollama`` on PATH, in ``cwd``; returns what it
    printed. An error exit is an ``OllamaFailed`` naming the command and quoting Ollama's stderr."""
    executable = ollama_on_path()
    if executable is None:
        raise OllamaFailed("ollama is not on PATH", hint="Install Ollama (https://ollama.com), or use --no-ollama.")
    done = subprocess.run([executable, *args[1:]], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "(nothing)").splitlines()[-20:]
        raise OllamaFailed(
            f"`{shown(args)}` failed (exit status {done.returncode})" + (f" in {cwd}" if cwd else ""),
            problems=[f"ollama said: {line}" for line in said],
            hint="Is the Ollama server running (`ollama serve`, or the Ollama app)? Nothing was recorded; "
            "run the command again once Ollama works, or use --no-ollama.",
        )
    return done.stdout


def exists(model: str, cwd: Path | None = None) -> bool:
    """Whether ``ollama show MODEL`` finds it."""
    try:
        run(show_args(model), cwd)
    except OllamaFailed:
        return False
    return True
