"""`quicktune doctor` on this machine: every check reports, and a missing GPU comes with its fix."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quicktune.cli import main
from quicktune.doctor import check_disk, check_python


@pytest.mark.slow  # imports torch and (in a subprocess) unsloth
def test_doctor_json_lists_every_check_with_fixes(tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--json", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.output)}
    for name in (
        "python", "torch", "4-bit (QLoRA)", "unsloth", "llama-cpp-python", "GGUF converter", "ollama", "disk", "hub"
    ):
        assert name in checks, name
    assert checks["llama-cpp-python"]["status"] == "ok" and checks["GGUF converter"]["status"] == "ok"
    import torch

    if not torch.cuda.is_available():  # this CPU box: say clearly what GPU training lacks
        assert checks["gpu"]["status"] == "fail" and "NVIDIA GPU" in checks["gpu"]["fix"]
        assert checks["4-bit (QLoRA)"]["status"] == "ok" and "ran on the CPU" in checks["4-bit (QLoRA)"]["detail"]
    for check in checks.values():
        assert check["status"] in ("ok", "fail", "info")
        if check["status"] == "fail":
            assert check["fix"], check


def test_disk_and_python_checks(tmp_path):
    assert check_python().status == "ok"
    assert check_disk(tmp_path / "not" / "yet", need_gb=0).status == "ok"
    assert check_disk(tmp_path, need_gb=10**9).status == "fail"
