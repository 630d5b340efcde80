"""Validate Axolotl configs with Axolotl's own code; run with the Python of a virtualenv that has
Axolotl (tests/test_axolotl.py runs it in /tmp/axo-venv, made by .ci/axolotl-venv).

For each YAML file given: ``axolotl.utils.config.validate_config``, the call ``axolotl train``
makes after reading a config, with the capabilities of a machine described here (two bf16 GPUs,
compute capability 8.9) since this one has none. Axolotl's schema ignores keys it does not know,
so the keys and dataset keys it has no field for are reported too, and every written value is
compared with the validated one. Prints one JSON object per file.

Axolotl's config modules also import torch, transformers, accelerate, PIL and yaml; those come from
the project's own environment, named by QUICKTUNE_STACK_SITE (the test passes its interpreter's
site-packages folders, joined by os.pathsep) and searched after the virtualenv's packages, so
Axolotl's pinned pydantic is the one it validates with.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.extend(p for p in os.environ.get("QUICKTUNE_STACK_SITE", "").split(os.pathsep) if p)

import yaml
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
from axolotl.utils.schemas.config import AxolotlInputConfig
from axolotl.utils.schemas.datasets import SFTDataset

CAPABILITIES = {"bf16": True, "tf32": True, "fp8": False, "n_gpu": 2, "n_node": 1, "compute_capability": "sm_89"}
OWN_KEY = "quicktune"


def _names(model) -> set[str]:
    names = set(model.model_fields)
    names |= {f.alias for f in model.model_fields.values() if f.alias}
    return names


def check(path: str, torch_version: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    top, dataset = _names(AxolotlInputConfig), _names(SFTDataset)
    unknown = sorted(k for k in raw if k not in top and k != OWN_KEY)
    for key in ("datasets", "test_datasets"):
        for index, entry in enumerate(raw.get(key) or []):
            unknown += [f"{key}[{index}].{k}" for k in entry if k not in dataset]
    result = {"path": path, "unknown_keys": unknown}
    try:
        validated = validate_config(DictDefault(json.loads(json.dumps(raw))), capabilities=CAPABILITIES,
                                    env_capabilities={"torch_version": torch_version})
    except Exception as exc:  # what axolotl train would stop with
        return {**result, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    changed = {}
    for key, value in raw.items():
        if key == OWN_KEY:
            continue
        got = validated.get(key)
        if key in ("datasets", "test_datasets"):
            got = [{k: v for k, v in dict(d).items() if k in entry} for d, entry in zip(got, value)]
        elif isinstance(value, dict) and got is not None:  # a section (trl:): the keys written, as validated
            got = {k: v for k, v in dict(got).items() if k in value}
        if got != value and not (isinstance(value, float) and got == value):
            changed[key] = {"written": value, "validated": got}
    return {**result, "ok": True, "kept_own_key": OWN_KEY in validated, "changed": changed}


def main() -> None:
    import torch

    for path in sys.argv[1:]:
        print(json.dumps(check(path, torch.__version__.split("+")[0]), default=str))


if __name__ == "__main__":
    main()
