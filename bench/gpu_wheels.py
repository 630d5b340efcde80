"""Download the wheels bench/gpu.py needs on the GPU machine, in batches that fit one `run` call each.

The GPU machine has torch, transformers, peft, accelerate, safetensors, tokenizers and triton,
no internet, and takes at most 64 MiB of carried files per call. This walks the requirements of
what quicktune's training path, raw Unsloth and TRL import, with the versions installed in this
environment, leaves out what the GPU image has (and everything those need), and downloads each
remaining distribution for the GPU machine's Python with `pip download --no-deps`, into
.whl/1, .whl/2, ... (git-ignored), none over --batch-mib. torchvision follows the GPU's torch.

    .venv/bin/python bench/gpu_wheels.py [--python 3.12] [--torch 2.11] [--batch-mib 56] [--have FREEZE.txt]

Install them there with `pip install --no-index --no-deps .whl/N/*.whl`, one batch per call
(bench/README.md, "GPU").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# What the GPU machine's image has (shared/FACTS.md, "The GPU machine, when one is lent").
ON_THE_IMAGE = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "triton")
# What the three ways import: the training stacks and quicktune's own training-path imports.
NEEDED = ("unsloth", "unsloth_zoo", "trl", "bitsandbytes", "xformers", "datasets", "cut_cross_entropy",
          "pydantic", "pyyaml", "rich", "click", "jinja2", "numpy", "matplotlib")
MANYLINUX = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_34_x86_64", "linux_x86_64")


def marker_environment(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


def requirements(name: str, extras: set[str], python: str) -> list[Requirement]:
    """The installed distribution's requirements that apply on the GPU machine (with these extras)."""
    found = []
    for text in metadata.distribution(name).requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**marker_environment(python), "extra": extra})
                                 for extra in extras | {""}):
            found.append(requirement)
    return found


def closure(roots, python: str, stop: set[str] = frozenset()) -> dict[str, Requirement | None]:
    """Every distribution the roots need, by canonical name, not walking past ``stop``."""
    seen: dict[str, Requirement | None] = {}
    todo = [(Requirement(root), True) for root in roots]
    while todo:
        requirement, is_root = todo.pop()
        key = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if key in stop:  # on the image already; what its extras add (fsspec[http]) may not be
            if extras:
                plain = {str(r) for r in requirements(key, set(), python)}
                todo.extend((r, False) for r in requirements(key, extras, python) if str(r) not in plain)
            continue
        if key in seen and not extras:
            continue
        seen.setdefault(key, None if is_root else requirement)
        try:
            todo.extend((child, False) for child in requirements(key, extras, python))
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement.name} is needed but not installed here: install quicktune's environment first")
    return seen


def pins(python: str, torch: str, have: set[str] = frozenset()) -> list[str]:
    present = set(closure(ON_THE_IMAGE, python)) | have
    needed = closure(NEEDED, python, stop=present)
    out = []
    for key in sorted(needed):
        if key == "torchvision":  # built against one torch release: 0.(minor + 15) goes with torch 2.minor
            out.append(f"torchvision=={0}.{int(torch.split('.')[1]) + 15}.0")
        else:
            out.append(f"{key}=={metadata.version(key)}")
    return out


def split(files: list[Path], limit: int) -> list[list[Path]]:
    """First fit, largest first: few batches, each under the limit."""
    batches: list[list[Path]] = []
    for file in sorted(files, key=lambda f: f.stat().st_size, reverse=True):
        size = file.stat().st_size
        if size > limit:
            sys.exit(f"{file.name} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB a call may carry")
        home = next((b for b in batches if sum(f.stat().st_size for f in b) + size <= limit), None)
        if home is None:
            batches.append(home := [])
        home.append(file)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--torch", default="2.11", help="the GPU machine's torch release (default 2.11)")
    parser.add_argument("--batch-mib", type=float, default=56, help="most MiB per batch (default 56 of the 64)")
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="git-ignored folder (default .whl/)")
    parser.add_argument("--have", type=Path, help="`pip list --format=freeze` of the GPU machine: skip what it has")
    parser.add_argument("--list", action="store_true", help="print the pins and download nothing")
    args = parser.parse_args()
    have = set()
    if args.have:
        have = {canonicalize_name(line.split("==")[0].split(" @ ")[0].strip())
                for line in args.have.read_text().splitlines() if line.strip() and not line.startswith("#")}
    wanted = pins(args.python, args.torch, have)
    if args.list:
        print("\n".join(wanted))
        return
    staging = args.dest / "all"
    shutil.rmtree(args.dest, ignore_errors=True)
    staging.mkdir(parents=True)
    tag = args.python.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(staging),
               "--python-version", args.python, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3",
               "--abi", "none", *[arg for platform in MANYLINUX for arg in ("--platform", platform)], *wanted]
    subprocess.run(command, check=True)
    files = sorted(staging.glob("*.whl"))
    for number, batch in enumerate(split(files, int(args.batch_mib * 2**20)), start=1):
        folder = args.dest / str(number)
        folder.mkdir()
        for file in batch:
            file.rename(folder / file.name)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}: {len(batch)} wheels, "
              f"{size:.1f} MiB  ({', '.join(sorted(f.name.split('-')[0] for f in batch))})")
    staging.rmdir()


if __name__ == "__main__":
    main()
