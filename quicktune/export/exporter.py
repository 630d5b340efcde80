"""``quicktune export``: a finished run -> merged model -> GGUF files -> Modelfiles -> fidelity.

Everything lands in ``<run>/export/``::

    merged/                          the adapter merged into 16-bit base weights (Hugging Face)
    <recipe>-<vN>-f16.gguf           the converted model: the reference and the quantizer's input
    <recipe>-<vN>-q4_k_m.gguf        each quantization asked for
    Modelfile.q4_k_m                 one Modelfile per GGUF, FROM the file beside it
    convert.log, quantize.log        the tools' own output

Files already there are reused, never rewritten, so ``quicktune export RUN --quant q8_0``
adds a quantization without touching the rest; each file appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from quicktune import llamacpp
from quicktune.backend import load_backend
from quicktune.base_model import TrainedRun, base_folder, open_run
from quicktune.data.heldout import load_eval_set
from quicktune.data.system_prompt import served_prompt, served_warning
from quicktune.data.tokenizer import ChatTokenizer, gguf_special_tokens, tokenization_warnings
from quicktune.errors import QuicktuneError
from quicktune.export import ollama
from quicktune.export.gate import FidelityFailed, gate
from quicktune.export.merge import merge_adapter
from quicktune.export.merge_target import write_dequantized_base
from quicktune.export.ollama import TurnFormat
from quicktune.export.renderer import OllamaRenderer, ollama_renderer
from quicktune.export.verify import check_fidelity
from quicktune.models import read_gguf_fields, resolve_model
from quicktune.runs import disk_full_error, lock_run, now, remove_stale, sha256_file, update_manifest, write_atomic

CONVERTED = ("f16", "bf16")  # written by the converter; the rest by the quantizer


@dataclass
class ExportResult:
    run_dir: Path
    export_dir: Path
    name: str
    merged: Path
    ggufs: dict[str, Path]
    modelfiles: dict[str, Path]
    metadata: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    fidelity: Any = None
    gate: Any = None  # export/gate.py GateResult, when fidelity was checked
    merge_source: Path | None = None  # the 16-bit weights the adapter is merged into


def export_name(run_dir: Path, recipe_name: str) -> str:
    """The Ollama model name: lower case, ``[a-z0-9._-]``."""
    return re.sub(r"[^a-z0-9._-]+", "-", f"{recipe_name}-{run_dir.name}".lower()).strip("-.")


def gguf_path(export_dir: Path, name: str, quant: str) -> Path:
    return export_dir / f"{name}-{quant}.gguf"


def export_run(
    run_dir: Path,
    quants: list[str] | None = None,
    *,
    verify: bool = True,
    prompts: int = 8,
    max_new_tokens: int = 96,
    console=None,
) -> ExportResult:
    """Export a finished run, holding its folder (one export or training at a time): what a killed
    export left behind is removed first, and every file is reused or written whole."""
    with lock_run(run_dir, "quicktune export"):
        for stale in remove_stale(run_dir):
            if console is not None:
                console.print(f"[dim]removed {stale.relative_to(run_dir)}, left by an export that was stopped[/]")
        return _export_locked(run_dir, quants, verify=verify, prompts=prompts, max_new_tokens=max_new_tokens,
                              console=console)


@dataclass
class _Export:
    """What the steps of one export share: the run, what is written (``result``), the trained chat
    tokenizer, and, once the GGUF is written, the turn format and renderer its Modelfiles use."""

    run: TrainedRun
    result: ExportResult
    tokenizer: ChatTokenizer
    quants: list[str]  # the quantizations asked for (--quant, else the recipe's): a Modelfile each
    checked: list[str]  # those the fidelity check covers: the ones asked for and those exported earlier
    console: Any
    fmt: TurnFormat | None = None
    renderer: OllamaRenderer | None = None

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)


def _export_locked(run_dir: Path, quants: list[str] | None, *, verify: bool, prompts: int, max_new_tokens: int,
                   console) -> ExportResult:
    """The export, step by step, with the run folder held: merge, convert and quantize, check the GGUF's
    metadata, write the Modelfiles, check fidelity, record it all in the manifest."""
    ex = _open_export(run_dir, quants, console)
    _merge(ex)
    _write_ggufs(ex)
    ex.result.metadata = check_metadata(ex.result.ggufs["f16"], ex.tokenizer)
    _write_modelfiles(ex)
    _show_warnings(ex)
    if verify:
        ex.result.fidelity = _verify(ex, prompts, max_new_tokens)
    result = ex.result
    if result.fidelity is not None:
        result.gate = gate(result.fidelity)
    _record(result, ex.run.manifest, ex.quants)
    if result.gate is not None and not result.gate.passed:
        raise FidelityFailed(result)  # after _record: the files stay, the manifest says what failed
    return result


# --- steps ---------------------------------------------------------------------------------------


def _open_export(run_dir: Path, quants: list[str] | None, console) -> _Export:
    """Reads the run's manifest (it must be finished), recipe and trained tokenizer; makes ``export/`` and
    removes the partial files a stopped export left there. Returns the export's shared state."""
    run = open_run(run_dir)
    run.require_finished("; there is no final adapter to export",
                         hint="Resume it with `quicktune train` (the same command), then export.")
    recipe = run.recipe
    # Without --quant: the recipe's quantizations, and the check covers those added earlier too.
    added_earlier = list((run.manifest.get("export") or {}).get("modelfiles") or {})
    checked = list(dict.fromkeys(quants or [*recipe.export.quantizations, *added_earlier]))
    quants = list(dict.fromkeys(quants or recipe.export.quantizations))
    export_dir = run_dir / "export"
    export_dir.mkdir(exist_ok=True)
    for stale in llamacpp.remove_stale_partials(export_dir):
        if console is not None:
            console.print(f"[dim]removed {stale.name}, left by an export that was stopped[/]")
    name = export_name(run_dir, recipe.name)
    tokenizer = _trained_tokenizer(run)
    merged = run.trained if run.full else export_dir / "merged"
    result = ExportResult(run_dir, export_dir, name, merged, {}, {}, {})
    return _Export(run, result, tokenizer, quants, checked, console)


def _merge(ex: _Export) -> None:
    """Writes ``export/merged/``: the adapter merged into the base (``export.merge_target``); kept when
    an earlier export wrote it, and nothing to do for a full fine-tune (its model is the merged one)."""
    result, recipe = ex.result, ex.run.recipe
    if (result.merged / "config.json").is_file():
        result.reused.append("merged")
        return
    what = MERGE_TARGETS[recipe.export.merge_target]
    with (
        _step(result, "merge", ex.console, f"merging the adapter into {what}"),
        _merge_into(recipe, ex.run.manifest, ex.console, result.export_dir) as base,
    ):
        result.merge_source = Path(base)
        merge_adapter(base, ex.run.trained, result.merged)
    ex.say(f"[green]✓[/] merged into {what}: {result.merged} ({result.timings['merge']:.1f} s)")


def _write_ggufs(ex: _Export) -> None:
    """Writes the F16 GGUF (converted from ``merged/``), each quantization asked for and any exported
    before (quantized from the F16 one) into ``result.ggufs``; a file already there is kept."""
    result = ex.result
    base_gguf = _base_gguf(ex.run.manifest)
    earlier = [q for q in ex.checked if gguf_path(result.export_dir, result.name, q).is_file()]
    for quant in dict.fromkeys(["f16", *ex.quants, *earlier]):
        target = gguf_path(result.export_dir, result.name, quant)
        result.ggufs[quant] = target
        if target.is_file():
            result.reused.append(quant)
            continue
        with _step(result, quant, ex.console, f"writing {target.name}"):
            if quant in CONVERTED:
                convert_as_trained(result.merged, target, quant, ex.tokenizer, base_gguf, result.name)
            else:
                with _stderr_to(result.export_dir / "quantize.log"):
                    llamacpp.quantize(result.ggufs["f16"], target, quant)
        ex.say(f"[green]✓[/] {target.name}: {_size(target)} ({result.timings[quant]:.1f} s)")


def _write_modelfiles(ex: _Export) -> None:
    """Reads the trained template's turn format and picks Ollama's renderer (both noted in
    ``result.metadata``); writes a Modelfile per quantization asked for into ``result.modelfiles``."""
    result = ex.result
    ex.fmt = ollama.read_format(
        ex.tokenizer.render, bos=ex.tokenizer.special.get("bos_token"), add_bos=bool(result.metadata.get("add_bos"))
    )
    result.metadata["template_family"] = ex.fmt.family
    # The GGUF carries the trained template (check_metadata): what Ollama's rule looks at.
    ex.renderer = ollama_renderer(ex.tokenizer.chat_template, ex.fmt.go_template())
    result.metadata["ollama_renderer"] = ex.renderer.renderer
    result.metadata["ollama_renderer_reason"] = ex.renderer.reason
    checked = None  # what this export checked of the TEMPLATE, for the header: asked once, when a file is written
    for quant in ex.quants:
        if checked is None and not (result.export_dir / f"Modelfile.{quant}").is_file():
            checked = ollama.template_check(ex.fmt, ex.tokenizer.render)
        result.modelfiles[quant] = _write_modelfile(result, ex.run, quant, ex.fmt, ex.tokenizer, ex.renderer,
                                                    checked)


def _show_warnings(ex: _Export) -> None:
    """Shows what the user should know about the export: tokenization differences between llama.cpp and
    training, and a served system prompt no training row had."""
    warnings = [*ex.result.metadata["tokenization_warnings"], served_warning(ex.run.recipe, ex.run.manifest)]
    for warning in filter(None, warnings):
        ex.say(f"[yellow]warning:[/] {escape(warning)}")


@contextlib.contextmanager
def _step(result: ExportResult, key: str, console, message: str):
    """Times a step into ``result.timings`` and shows a spinner (yielded) while it runs."""
    start = time.perf_counter()
    with console.status(message) if console is not None else contextlib.nullcontext() as status:
        try:
            yield status
        except Exception as exc:
            if key != "verify":  # a write: a full disk is named with the space it needs
                target = result.merged if key == "merge" else gguf_path(result.export_dir, result.name, key)
                error = disk_full_error(exc, target, _space_needed(result, key), suspect=True)
                if error is not None:
                    error.hint = (f"Free some space there and run `quicktune export {result.run_dir}` again: "
                                  "what is already exported is kept.")
                    raise error from None
            raise
        finally:
            result.timings[key] = round(time.perf_counter() - start, 2)


# A quantization's size against the F16 GGUF's (measured on SmolLM2-135M exports, rounded up:
# its k-quants fall back to Q5_0/Q5_1/Q8_0 tensors, README "What q4_k_m and q5_k_m are").
_SIZE_VS_F16 = {"f16": 1.0, "bf16": 1.0, "q8_0": 0.55, "q5_k_m": 0.4, "q4_k_m": 0.37}


def _space_needed(result: ExportResult, key: str) -> int:
    """About how many bytes a step writes: the merge, the base's weights in its own dtype; a
    converted GGUF, 2 bytes per weight twice over (the converter's file and the rewritten one)."""
    def weights(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0

    if key == "merge":
        return weights(result.merge_source) if result.merge_source else 0
    merged = weights(result.merged)
    dtype = "float32"
    if (result.merged / "config.json").is_file():
        config = json.loads((result.merged / "config.json").read_text(encoding="utf-8"))
        dtype = config.get("torch_dtype") or config.get("dtype") or dtype
    f16 = merged // 2 if dtype == "float32" else merged
    if key in CONVERTED:
        return 2 * f16
    return int(f16 * _SIZE_VS_F16.get(key, 1.0))


@contextlib.contextmanager
def _stderr_to(log: Path):
    """llama.cpp's quantizer prints every tensor on the C stderr: send it to a log file."""
    saved = os.dup(2)
    with open(log, "ab") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:,.0f} MiB"


def _trained_tokenizer(run: TrainedRun) -> ChatTokenizer:
    """The chat tokenizer saved with what the run trained; a folder without one is incomplete."""
    if not (run.trained / "tokenizer.json").is_file():
        raise QuicktuneError(f"{run.trained} has no tokenizer.json: the run folder is incomplete")
    return run.chat_tokenizer()


def _base_gguf(manifest: dict[str, Any]) -> Path | None:
    base = manifest.get("base_model") or {}
    if base.get("kind") != "gguf":
        return None
    return resolve_model(base["spec"]).path


MERGE_TARGETS = {"original": "the original 16-bit base weights", "dequantized": "the de-quantized 4-bit base"}


@contextlib.contextmanager
def _merge_into(recipe, manifest: dict[str, Any], console, export_dir: Path):
    """The folder the adapter is merged into (``export.merge_target``). ``dequantized``: the 4-bit
    base as training loaded it, de-quantized into a temporary folder (export/merge_target.py)."""
    if recipe.export.merge_target != "dequantized":
        yield _merge_base(recipe, manifest, console)
        return
    source = Path(base_folder(manifest, recipe)).expanduser()
    if not source.is_dir():  # a hub id: the checkpoint training loaded (a -bnb-4bit one is fine)
        source = _download(str(source), recipe.model.revision, console)
    folder = export_dir / f".dequantized-base.{os.getpid()}"
    try:
        yield write_dequantized_base(source, folder, max_seq_length=recipe.model.max_seq_length,
                                     dtype=recipe.model.dtype)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _merge_base(recipe, manifest: dict[str, Any], console) -> Path:
    """The original 16-bit weights the adapter is merged into (``export.merge_target: original``)."""
    base = manifest.get("base_model") or {}
    if recipe.export.merge_base:
        spec = recipe.export.merge_base
    elif base.get("kind") == "gguf":
        return Path(base_folder(manifest, recipe))
    elif base.get("kind") == "dir":
        spec = base["loaded_from"]
    else:
        spec = re.sub(r"-(unsloth-)?bnb-4bit$", "", base.get("spec") or recipe.model.base)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        folder = _download(spec, recipe.model.revision if spec == recipe.model.base else None, console)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("quantization_config"):
        raise QuicktuneError(
            f"{spec} holds quantized weights; the adapter is merged into 16-bit weights",
            hint="Set export.merge_base to the 16-bit model, "
            "e.g. --set export.merge_base=unsloth/Qwen2.5-7B-Instruct",
        )
    return folder


def _download(repo: str, revision: str | None, console) -> Path:
    from huggingface_hub import snapshot_download

    if console is not None:
        console.print(f"downloading the 16-bit weights of {repo} to merge into")
    try:
        return Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=["*.safetensors", "*.json", "*.model", "*.jinja", "*.txt"]
            )
        )
    except Exception as exc:
        raise QuicktuneError(
            f"could not get {repo} to merge into ({type(exc).__name__}: {exc})".splitlines()[0],
            hint="Set export.merge_base to a local folder with the base model's 16-bit safetensors.",
        ) from None


def convert_as_trained(merged: Path, target: Path, outtype: str, tokenizer, base_gguf: Path | None,
                       name: str) -> None:
    """Convert, then make the metadata say what training used (tokenizer, template, eos, the spacing after
    special tokens)."""
    raw = target.parent / f".{target.stem}.raw.gguf"
    raw.unlink(missing_ok=True)
    # general.name: the export's name (llama.cpp keys a few tokenizer fixes, e.g. Phi-3's, on it)
    llamacpp.convert(merged, raw, outtype, log=target.parent / "convert.log", name=name)
    try:
        fields = read_gguf_fields(raw, "tokenizer.")
        values: dict[str, Any] = {}
        if tokenizer.chat_template and fields.get("tokenizer.chat_template") != tokenizer.chat_template:
            values["tokenizer.chat_template"] = tokenizer.chat_template
        if tokenizer.eos_id is not None and fields.get("tokenizer.ggml.eos_token_id") != tokenizer.eos_id:
            values["tokenizer.ggml.eos_token_id"] = tokenizer.eos_id
        eot_id = tokenizer.token_id(tokenizer.end_of_turn())
        if eot_id is not None and eot_id != tokenizer.eos_id and fields.get("tokenizer.ggml.eot_token_id") != eot_id:
            values["tokenizer.ggml.eot_token_id"] = eot_id  # e.g. Phi-3's <|end|> beside eos <|endoftext|>
        if base_gguf is None:
            values.update(spacing_as_trained(read_gguf_fields(raw, ""), tokenizer))
        if base_gguf is not None or values:
            # A GGUF base: its own vocabulary, merges and pre-tokenizer are what llama.cpp
            # tokenized with, and what training matched; the converter can only guess them
            # from a tokenizer.json that transformers rebuilt.
            llamacpp.rewrite_metadata(raw, target, tokenizer_from=base_gguf, values=values)
        else:
            with llamacpp.atomic_path(target) as temp:
                os.replace(raw, temp)
    finally:
        raw.unlink(missing_ok=True)


# llama.cpp strips the whitespace after every special token of a model whose general.name holds one of
# these (lower-cased; llama-vocab.cpp, a fix for Phi-3's published tokenizer, whose chat tokens rstrip).
_RSTRIP_NAMES = ("phi-3", "phi3")


def spacing_as_trained(fields: dict[str, Any], tokenizer) -> dict[str, Any]:
    """GGUF values that make llama.cpp space the text after a special token as training did, for a
    SentencePiece vocabulary (``tokenizer.ggml.model`` llama) whose chat template opens with a special token.

    * ``tokenizer.ggml.add_space_prefix``: llama.cpp puts '▁' before the text after each special token when
      it is on (the converter's default). A tokenizer.json saved by transformers 5 (legacy=False: Metaspace,
      prepend_scheme 'first') prefixes only the start of the text, which a chat prompt gives to a special
      token: there, off is what training did.
    * ``general.name`` (a Phi-3 model): llama.cpp also strips the whitespace after every special token when
      the name says Phi-3 (``_RSTRIP_NAMES``). Where training's turn marker does not strip it, the name is
      spelled so that the rule does not apply ('phi3' -> 'phi_3'); where it does and the name does not say
      so (an export named after a recipe called e.g. 'support-bot'), '-phi3' is added to it."""
    if fields.get("tokenizer.ggml.model") != "llama" or not tokenizer.chat_template:
        return {}
    try:
        rendered = tokenizer.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}])
    except QuicktuneError:
        return {}
    added = tokenizer.backend.get_added_tokens_decoder().values()
    markers = sorted((t for t in added if t.special and t.content in rendered), key=lambda t: rendered.index(t.content))
    if not markers or not rendered.startswith(markers[0].content):
        return {}
    marker = next((t for t in markers if t.content not in (tokenizer.special.get("bos_token"),)), markers[0])
    values: dict[str, Any] = {}
    after = tokenizer.backend.encode(marker.content + "Hi", add_special_tokens=False).tokens
    spaced = len(after) > 1 and after[1].startswith("\u2581")
    if bool(fields.get("tokenizer.ggml.add_space_prefix", True)) != spaced:
        values["tokenizer.ggml.add_space_prefix"] = spaced
    if fields.get("general.architecture") != "phi3":
        return values
    name = str(fields.get("general.name") or "")
    says_phi3 = any(word in name.lower() for word in _RSTRIP_NAMES)
    if says_phi3 and not marker.rstrip:
        values["general.name"] = re.sub(r"(?i)phi-?3", lambda m: m[0].replace("-", "")[:3] + "_3", name)
    elif marker.rstrip and not says_phi3:
        values["general.name"] = f"{name}-phi3" if name else "phi3"
    return values


def check_metadata(path: Path, tokenizer) -> dict[str, Any]:
    """The GGUF keys that decide how llama.cpp and Ollama talk to the model, checked."""
    fields = read_gguf_fields(path, "")
    tokens = fields.get("tokenizer.ggml.tokens") or []
    eos_id = fields.get("tokenizer.ggml.eos_token_id")
    eot_id = fields.get("tokenizer.ggml.eot_token_id", eos_id)
    meta = {
        "architecture": fields.get("general.architecture"),
        "tokenizer_model": fields.get("tokenizer.ggml.model"),
        "pre_tokenizer": fields.get("tokenizer.ggml.pre"),
        "eos_token": gguf_special_tokens(fields)["eos_token"],
        "eos_token_id": eos_id,
        "eot_token": tokens[eot_id] if eot_id is not None and eot_id < len(tokens) else None,
        "add_bos": fields.get("tokenizer.ggml.add_bos_token"),
        "chat_template_as_trained": fields.get("tokenizer.chat_template") == tokenizer.chat_template,
        "vocab_size": len(tokens),
        "tokenization_warnings": tokenization_warnings(fields, tokenizer),
    }
    problems = []
    if meta["tokenizer_model"] == "gpt2" and meta["pre_tokenizer"] in (None, "default"):
        problems.append("no pre-tokenizer: llama.cpp would split text differently than in training")
    if tokenizer.eos_token and meta["eos_token"] != tokenizer.eos_token:
        problems.append(f"eos is {meta['eos_token']!r}, training used {tokenizer.eos_token!r}")
    if tokenizer.chat_template and not meta["chat_template_as_trained"]:
        problems.append("the chat template differs from the trained one")
    if problems:
        raise QuicktuneError(f"{path.name}: the GGUF metadata is wrong", problems=problems)
    return meta


def _write_modelfile(result: ExportResult, run: TrainedRun, quant: str, fmt, tokenizer, renderer,
                     template_check: str | None = None) -> Path:
    """Writes ``export/Modelfile.<quant>``, FROM the GGUF beside it, unless one is there already."""
    recipe = run.recipe
    path = result.export_dir / f"Modelfile.{quant}"
    if path.is_file():
        return path  # written by an earlier export (and perhaps edited since): kept
    num_ctx, why = chat_context(recipe, result.ggufs[quant])
    settings = ollama.ModelfileSettings(
        gguf_name=result.ggufs[quant].name,
        name=ollama_tag(result.name, quant),
        modelfile_name=str(path),
        stops=ollama.stop_tokens(tokenizer.end_of_turn(), tokenizer.eos_token),
        temperature=recipe.export.temperature,
        top_p=recipe.export.top_p,
        num_ctx=num_ctx,
        system=served_prompt(recipe, run.manifest),  # what training used (README, System prompt)
        system_key=_system_key(recipe, run.manifest),
        num_ctx_note=why,
        renderer=renderer,
        template_check=template_check,
    )
    write_atomic(path, ollama.render_modelfile(fmt, settings))
    return path


def _system_key(recipe, manifest: dict[str, Any]) -> str:
    """Where the served system prompt comes from, for messages about it."""
    if recipe.export.system:
        return "export.system"
    recorded = (manifest.get("data") or {}).get("system_prompt") or {}
    return recorded.get("trained_from") or "data.system_prompt"


CHAT_CONTEXT = 2048  # tokens: a couple of dozen demo-sized exchanges (a demo row is ~140 with its system prompt)


def trained_context(gguf: Path) -> int | None:
    """The context length the base model was trained with (``<arch>.context_length``)."""
    fields = read_gguf_fields(gguf, "")
    return fields.get(f"{fields.get('general.architecture')}.context_length")


def chat_context(recipe, gguf: Path) -> tuple[int, str]:
    """num_ctx for chat (the Modelfile and ``quicktune chat``), and why.

    max_seq_length bounds one training row, not a conversation, which grows by every turn:
    a chat gets at least CHAT_CONTEXT tokens, never more than the base model was trained on."""
    if recipe.export.num_ctx:
        return recipe.export.num_ctx, "export.num_ctx in the recipe"
    trained = trained_context(gguf)
    wanted = max(recipe.model.max_seq_length, CHAT_CONTEXT)
    if trained and trained < wanted:
        return trained, f"the base model's trained context ({trained} tokens)"
    return wanted, (
        f"max(model.max_seq_length {recipe.model.max_seq_length}, {CHAT_CONTEXT}): room for several turns"
        + (f"; the base model was trained on {trained}" if trained else "")
        + "; set export.num_ctx to change it"
    )


def ollama_tag(name: str, quant: str) -> str:
    return f"{name}:{quant}"


def _verify(ex: _Export, prompts: int, max_new_tokens: int):
    """Reads up to ``prompts`` held-out conversations (the last training rows when none is held out) and
    compares the merged model, the model as trained and every checked GGUF on them (export/verify.py).
    Returns the ``Fidelity``, or None when no conversation has an answer to compare on."""
    result = ex.result
    try:
        conversations = load_eval_set(ex.run.recipe, [], prompts, train_if_no_eval=True).prompts
    except QuicktuneError:  # no conversation with an answer: nothing to compare on
        return None
    checked = [q for q in ex.checked if q in result.ggufs]
    ggufs = {"f16": result.ggufs["f16"], **{q: result.ggufs[q] for q in checked if q != "f16"}}
    with _step(result, "verify", ex.console, "checking fidelity") as status:
        return check_fidelity(
            merged_dir=result.merged,
            ggufs=ggufs,
            tokenizer=ex.tokenizer,
            turn_format=ex.fmt,
            conversations=conversations,
            add_bos=bool(result.metadata.get("add_bos")),
            renderer=ex.renderer,
            max_new_tokens=max_new_tokens,
            progress=lambda m: status.update(f"checking fidelity: {m}") if status is not None else None,
            load_trained=_trained_loader(ex.run),
        )


def _trained_loader(run: TrainedRun):
    """The model as trained, for the fidelity row "trained vs merged"; None for a full fine-tune,
    whose trained weights are the merged model."""
    if run.full:
        return None
    recipe = run.recipe

    def load():
        backend = load_backend()
        model = backend.load_trained(
            run.base_folder(),
            str(run.trained),
            max_seq_length=recipe.model.max_seq_length,
            load_in_4bit=bool(recipe.model.load_in_4bit),
            dtype=recipe.model.dtype,
        )
        return model, "4-bit" if recipe.model.load_in_4bit else "16-bit"

    return load


def _record(result: ExportResult, manifest: dict[str, Any], quants: list[str]) -> None:
    """Writes the export into the run's manifest: every GGUF (size, sha256), the Modelfiles, the
    metadata, the timings and the fidelity check (rows not re-checked are kept from earlier)."""
    previous = manifest.get("export") or {}
    files = dict(previous.get("ggufs") or {})
    for quant, path in result.ggufs.items():
        if quant not in files or files[quant].get("bytes") != path.stat().st_size:
            files[quant] = {
                "file": str(path.relative_to(result.run_dir)),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
    modelfiles = dict(previous.get("modelfiles") or {})
    modelfiles.update({q: str(p.relative_to(result.run_dir)) for q, p in result.modelfiles.items()})
    fidelity = dict(previous.get("fidelity") or {})
    if result.fidelity is not None:
        checked = result.fidelity.to_json()
        names = {row["name"] for row in checked["ggufs"]}
        kept = [row for row in fidelity.get("ggufs", []) if row["name"] not in names]  # quantizations not re-checked
        gated = result.gate.to_json() if result.gate is not None else {"failures": [], "skipped": []}
        kept_names = {row["name"] for row in kept}
        gated["failures"] += [f for f in fidelity.get("failures", []) if f.get("row") in kept_names]
        gated["passed"] = not gated["failures"]
        fidelity = {**checked, "ggufs": checked["ggufs"] + kept, **gated}
    update_manifest(
        result.run_dir,
        export={
            "name": result.name,
            "exported": now(),
            "tools": llamacpp.version(),
            "ggufs": files,
            "modelfiles": modelfiles,
            "metadata": result.metadata,
            "timings_s": {**(previous.get("timings_s") or {}), **result.timings},
            "fidelity": fidelity,
        },
    )
