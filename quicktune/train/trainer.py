"""Train a recipe: data -> Unsloth model + LoRA -> TRL SFTTrainer -> a run folder.

``train`` reads as its steps, top to bottom (as torchtune's recipes do): set up the run (backend,
data, base model, parent), claim the run folder, set up the model, set up the trainer, train, save.
A ``TrainingRun`` carries what the steps share; a ``Session`` the trainer and what it returned.

Run folders, resume and lineage:
- every run gets a new ``runs/<recipe>/vN``;
- re-running the same command after an interruption resumes the newest unfinished run
  of the same resolved recipe from its last checkpoint (optimizer, scheduler and RNG
  state included);
- ``--from`` starts from another run's adapter and records it as the parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from quicktune import runs
from quicktune.adapters import check_mergeable, read_plan
from quicktune.backend import (
    Backend,
    four_bit_summary,
    load_backend,
    mixed_precision,
    package_versions,
    require_device_for,
)
from quicktune.base_model import BaseModel, prepare_base
from quicktune.data.check import prepare_for_recipe
from quicktune.data.instruction import describe as describe_instruction
from quicktune.data.load import source_identity
from quicktune.data.report import PreparedData
from quicktune.errors import QuicktuneError, RecipeError
from quicktune.recipe import PREFERENCE_METHODS, Recipe, too_many_layers
from quicktune.templates import FAMILY_TEMPLATES
from quicktune.train import grpo, preference, shared_prefix  # the modules: tests wrap preference.preference_trainer
from quicktune.train.config import planned_steps, sft_config
from quicktune.train.lineage import data_added, write_row_hashes
from quicktune.train.plot import plot_losses
from quicktune.train.ranks import Ranks, main_first, on_main, stop_on_interrupt_callback

# training.report_to: the package each integration needs (transformers' TensorBoardCallback uses
# torch.utils.tensorboard, which imports the tensorboard package).
REPORTER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" or "interrupted"
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    method: str = "lora"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def trained_dir(self) -> Path:
        """What the run trained: ``model/`` for full fine-tuning, else ``adapter/``."""
        return self.run_dir / ("model" if self.method == "full" else "adapter")


@dataclass
class TrainingRun:
    """What the steps of one training run share. ``_setup_run`` fills it; ``run_dir`` and
    ``checkpoint`` are set once the main process has claimed the run folder (``_claim_folder``)."""

    recipe: Recipe
    backend: Backend
    prepared: PreparedData
    base: BaseModel
    parent_dir: Path | None  # the run --from names
    parent_is_full: bool  # that run is a full fine-tune: its weights are this run's base
    load_from: str  # what the model loads: the base, or a full-fine-tuned parent's model/
    sha: str  # recipe_sha256: which unfinished run this one resumes
    data: dict[str, Any]  # the manifest's data section
    ranks: Ranks | None  # this process's place in a multi-process run; None alone
    say: Callable[..., None]  # the console's print, or nothing
    run_dir: Path | None = None
    checkpoint: Path | None = None  # the checkpoint a resumed run continues from

    @property
    def main(self) -> bool:
        """Only the main process writes the run folder."""
        return self.ranks is None or self.ranks.is_main

    @property
    def parent(self) -> str | None:
        """The parent as the manifest records it (and resuming matches it)."""
        return str(self.parent_dir) if self.parent_dir else None

    @property
    def new_adapter(self) -> bool:
        """LoRA starts anew: no parent, or a full fine-tune's weights as the base."""
        return self.recipe.method != "full" and (self.parent_dir is None or self.parent_is_full)


@dataclass
class Session:
    """A run's trainer: ``_setup_trainer`` builds it, ``_run_trainer`` fills ``output`` and ``seconds``."""

    trainer: Any
    tokenizer: Any  # the Hugging Face tokenizer, saved with the adapter
    interrupt: Any  # the StopOnInterrupt callback: whether Ctrl-C stopped training
    output: Any = None  # transformers' TrainOutput
    seconds: float = 0.0


def train(
    recipe: Recipe,
    *,
    runs_root: Path,
    parent_ref: str | None = None,
    console=None,
    extra_callbacks: tuple = (),
    allow_data_change: bool = False,
    new_run: bool = False,
    ranks=None,
) -> TrainResult:
    """Train ``recipe`` into a run folder under ``runs_root`` (see the module docstring).

    ``allow_data_change``: resume even when a data file changed since the run started (the
    change is recorded in the manifest); ``new_run``: never resume, start a new ``vN``.
    ``ranks``: this process's place in a multi-process run (quicktune.train.distributed); only the
    main process writes the run folder."""
    run = _setup_run(recipe, runs_root, parent_ref, console, ranks)
    with contextlib.ExitStack() as held:  # the run folder's lock, until training ends
        # the main process claims the folder; the others train in it
        run.run_dir, run.checkpoint = on_main(
            ranks, lambda: _claim_folder(run, runs_root, new_run, allow_data_change, held)
        )
        result = _fit_recording_failure(run, console, extra_callbacks)
    result.resumed_from = run.checkpoint.name if run.checkpoint else None
    return result


# --------------------------------------------------------------------------- set up the run


def _setup_run(recipe: Recipe, runs_root: Path, parent_ref: str | None, console, ranks: Ranks | None) -> TrainingRun:
    """Everything before the run folder: reads the recipe, its data files, the base model and the
    ``--from`` run; returns the run's shared state. Refuses what cannot train (a missing package,
    a device, a parent, a lora.last_layers count) before any folder is made."""
    say = console.print if console is not None else _say_nothing
    backend = _setup_backend(recipe, say)
    mixed_precision(recipe.training.precision, backend)  # one it cannot do fails before a run folder exists
    with main_first(ranks):  # converted tokenizers and GGUF bases land in the cache once
        prepared = prepare_data(recipe)
        base = prepare_base(recipe.model.base, recipe.model.revision)
    shared = prepared.report.shared_instruction
    if shared is not None and shared.mode == "keep":  # what the user must type when serving: said at every run
        say(f"[yellow]warning:[/] {escape(describe_instruction(shared))}")
    parent_dir = load_parent(parent_ref, runs_root, recipe)
    parent_is_full = _parent_is_full(parent_dir)
    load_from = str(runs.trained_dir(parent_dir, {"method": "full"})) if parent_is_full else base.load_from
    run = TrainingRun(recipe=recipe, backend=backend, prepared=prepared, base=base, parent_dir=parent_dir,
                      parent_is_full=parent_is_full, load_from=load_from, sha=recipe_sha256(recipe),
                      data=data_manifest(prepared), ranks=ranks, say=say)
    _check_new_adapter_layers(run)
    return run


def _say_nothing(*args, **kwargs) -> None:
    """``say`` without a console."""


def _setup_backend(recipe: Recipe, say: Callable[..., None]) -> Backend:
    """The training stack, Unsloth first: checks the recipe's reporters, method and device
    against it; returns the backend (and says why Unsloth is not used, when it is not)."""
    check_reporters(recipe)  # before anything slow: a missing package is the user's to install
    backend = load_backend()  # first: Unsloth must be imported before transformers/trl/peft
    if backend.notice:
        say(f"[yellow]notice:[/] {backend.notice}")
    if recipe.method == "full" and recipe.model.load_in_4bit:
        raise QuicktuneError("method full cannot train a 4-bit model")
    require_device_for(recipe.method, bool(recipe.model.load_in_4bit), backend)
    return backend


def check_reporters(recipe: Recipe) -> None:
    """Refuse ``training.report_to`` naming an integration whose package is not installed."""
    missing = [name for name in recipe.training.report_to if importlib.util.find_spec(REPORTER_PACKAGES[name]) is None]
    if missing:
        packages = " ".join(REPORTER_PACKAGES[name] for name in missing)
        raise QuicktuneError(
            f"{recipe.where(('training', 'report_to'))}: training.report_to: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed, so the trainer could not report there",
            hint=f"pip install {packages}, or remove it from training.report_to (metrics.jsonl and "
            "`quicktune ui` keep every logged step either way).",
        )


def prepare_data(recipe: Recipe) -> PreparedData:
    prepared = prepare_for_recipe(recipe)
    if not any(t.trained_tokens for t in prepared.train_tokens):
        raise QuicktuneError("no training row has a token left to train on (all were cut by max_seq_length?)")
    return prepared


def recipe_sha256(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_yaml().encode("utf-8")).hexdigest()


def data_manifest(prepared: PreparedData) -> dict[str, Any]:
    return {
        "files": [
            {"path": item.path, "format": item.format, "rows": item.rows, **source_identity(item.path),
             "split": item.split}
            for item in prepared.report.files
        ],
        "train_rows": prepared.report.train_rows,
        "eval_rows": prepared.report.eval_rows,
        "eval_source": prepared.report.eval_source,
        "removed_duplicates": prepared.report.removed_duplicates,
        "train_tokens": prepared.report.train_tokens.total_tokens if prepared.report.train_tokens else 0,
        # what export and chat send as the system prompt (quicktune.data.system_prompt)
        "system_prompt": prepared.report.system_prompt.to_dict() if prepared.report.system_prompt else None,
    }


def load_parent(parent_ref: str | None, runs_root: Path, recipe: Recipe) -> Path | None:
    """The run ``--from`` names, checked: finished, the same base model, and something this recipe
    can continue. An adapter run continues its adapter (lora/qlora); a full fine-tune's weights
    are the base of the new run (full, or a new adapter on top)."""
    if parent_ref is None:
        return None
    parent_dir = runs.resolve_run(parent_ref, runs_root, recipe.name)
    manifest = runs.read_manifest(parent_dir)
    trained = runs.trained_dir(parent_dir, manifest)
    marker = "config.json" if manifest.get("method") == "full" else "adapter_config.json"
    if manifest.get("status") != "finished" or not (trained / marker).is_file():
        raise QuicktuneError(
            f"--from {parent_ref}: {parent_dir} has no finished {trained.name}/ (status {manifest.get('status')})"
        )
    parent_base = manifest.get("base_model", {}).get("spec")
    if parent_base != recipe.model.base:
        raise QuicktuneError(
            f"--from {parent_ref}: that run trained {parent_base}, this recipe trains {recipe.model.base}"
        )
    if manifest.get("method") == "full":
        return parent_dir
    if recipe.method == "full":
        raise QuicktuneError(
            f"--from {parent_ref}: method full trains every weight of a model; {runs.run_label(parent_dir)} "
            "trained an adapter, which a full fine-tune cannot continue",
            hint=f"Export it (quicktune export {parent_dir}) and set model.base to its export/merged folder, "
            "or continue it with method: lora.",
        )
    read_plan(parent_dir / "adapter")  # training on top of an adapter the export cannot merge is refused now
    _check_parent_layers(recipe, parent_ref, trained / "adapter_config.json")
    return parent_dir


def _check_parent_layers(recipe: Recipe, parent_ref: str, adapter_config: Path) -> None:
    """A continued run trains the parent's adapter where it is: lora.last_layers must say the same."""
    wanted = recipe.lora.last_layers
    if wanted is None:
        return
    layers = json.loads(adapter_config.read_text(encoding="utf-8")).get("layers_to_transform")
    count = None if layers is None else (1 if isinstance(layers, int) else len(layers))
    if count != wanted:
        where = "every layer" if count is None else f"the last {count} layers"
        raise RecipeError(
            f"{recipe.where(('lora', 'last_layers'))}: lora.last_layers is {wanted}, and --from {parent_ref} continues "
            f"an adapter on {where}",
            hint="A continued run trains its parent's adapter where it is: remove lora.last_layers"
            + ("." if count is None else f", or set it to {count}."),
        )


def _parent_is_full(parent_dir: Path | None) -> bool:
    return parent_dir is not None and runs.read_manifest(parent_dir).get("method") == "full"


def _check_new_adapter_layers(run: TrainingRun) -> None:
    """A new adapter's lora.last_layers against the layer count in the config of what the model
    loads: a wrong count is refused before a run folder exists."""
    if run.recipe.lora.last_layers is None or not run.new_adapter:
        return
    from transformers import AutoConfig

    lora_layers(run.recipe, AutoConfig.from_pretrained(run.load_from))


def lora_layers(recipe: Recipe, config) -> list[int] | None:
    """The decoder layers that get LoRA: the last ``lora.last_layers`` of the model, or None for all."""
    wanted = recipe.lora.last_layers
    if wanted is None:
        return None
    total = config.get_text_config().num_hidden_layers
    if wanted > total:
        raise too_many_layers(recipe, wanted, total)
    return list(range(total - wanted, total))


# --------------------------------------------------------------------------- claim the run folder


def _claim_folder(run: TrainingRun, runs_root: Path, new_run: bool, allow_data_change: bool,
                  held: contextlib.ExitStack) -> tuple[Path, Path | None]:
    """On the main process: the run folder, locked for as long as ``held``, with a new run's
    recipe and manifest written or a resume recorded in its manifest; returns the folder and the
    checkpoint it resumes from (None: it starts at step 0)."""
    run_dir, checkpoint, removed = _claim_run(runs_root, run.recipe, run.sha, run.parent, new_run, held)
    for path in removed:
        run.say(f"[dim]removed {path.relative_to(run_dir)}, left by a run that was stopped[/]")
    if checkpoint is None:
        _start_run(run, run_dir)
    else:
        _resume_run(run, run_dir, checkpoint, allow_data_change)
    if run.ranks is not None:
        runs.update_manifest(run_dir, distributed=run.ranks.describe(run.recipe.training))
    return run_dir, checkpoint


def _claim_run(runs_root: Path, recipe: Recipe, sha: str, parent: str | None, new_run: bool,
               held: contextlib.ExitStack) -> tuple[Path, Path | None, list[Path]]:
    """The run folder this process trains in, locked for it: the newest unfinished run of the
    same recipe (resumed from its last complete checkpoint), else a new ``vN``.

    A run another live process holds is refused (``RunInUse``), never resumed twice. What a
    killed process left there (temp files, a checkpoint cut short) is removed first."""
    candidate = None if new_run else runs.find_resumable(runs_root, recipe.name, sha, parent, need_checkpoint=False)
    if candidate is not None:
        with contextlib.ExitStack() as attempt:
            attempt.enter_context(runs.lock_run(candidate, "quicktune train"))
            # It may have finished, or been resumed and stopped, while we looked: look again, holding it.
            if runs.find_resumable(runs_root, recipe.name, sha, parent, need_checkpoint=False) == candidate:
                runs.restore_final(candidate, "model" if recipe.method == "full" else "adapter")
                removed = runs.remove_stale(candidate)
                checkpoint = runs.latest_checkpoint(candidate)
                if checkpoint is None:  # killed before its first checkpoint: it starts again, in the same folder
                    (candidate / "metrics.jsonl").unlink(missing_ok=True)
                    shutil.rmtree(candidate / "checkpoints", ignore_errors=True)
                held.enter_context(attempt.pop_all())
                return candidate, checkpoint, removed
    run_dir = runs.create_run_dir(runs_root, recipe.name)
    held.enter_context(runs.lock_run(run_dir, "quicktune train"))
    return run_dir, None, []


def _start_run(run: TrainingRun, run_dir: Path) -> None:
    """A new run: writes its resolved ``recipe.yaml`` and its manifest (status running)."""
    recipe, base, backend = run.recipe, run.base, run.backend
    runs.write_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    hashes = set(write_row_hashes(run_dir, run.prepared.train))
    runs.write_manifest(
        run_dir,
        {
            "recipe": recipe.name,
            "version": run_dir.name,
            "status": "running",
            "recipe_sha256": run.sha,
            "started": runs.now(),
            "ended": None,
            "parent": run.parent,
            "seed": recipe.training.seed,
            "method": recipe.method,
            "base_model": {"spec": base.spec, "kind": base.kind, "loaded_from": run.load_from,
                           "fingerprint": base.fingerprint},
            "data": run.data,
            # lineage: the files and rows this run trains on that its parent did not (train/lineage.py)
            "data_since_parent": data_added(run.parent_dir, run.data, hashes) if run.parent_dir else None,
            "backend": {"name": backend.name, "device": backend.device,
                        "precision": mixed_precision(recipe.training.precision, backend)},
            "packages": package_versions(),
            "resumes": [],
            "metrics": None,
        },
    )
    run.say(f"run folder: [bold]{run_dir}[/]")


def _resume_run(run: TrainingRun, run_dir: Path, checkpoint: Path, allow_data_change: bool) -> None:
    """A resumed run: refuses data changed since it started (unless ``allow_data_change``), then
    records the resume (and any change) in the manifest and trims metrics.jsonl to the checkpoint."""
    manifest = runs.read_manifest(run_dir)
    changes = runs.data_changes(manifest.get("data"), run.data)
    if changes and not allow_data_change:
        raise QuicktuneError(
            f"{runs.run_label(run_dir)} cannot resume: its data changed since it started "
            "(the rest of the run would train on other data than the manifest records)",
            problems=[_describe_change(change) for change in changes],
            hint="Resume on the data as it is now with --allow-data-change (the change is recorded in the run's "
            "manifest), put the old file back, or start a separate run with --new-run.",
        )
    resume = {"at": runs.now(), "checkpoint": checkpoint.name}
    changed = {}
    if changes:
        resume["data_changed"] = changes
        changed = {"data": run.data, "data_at_start": manifest.get("data_at_start") or manifest.get("data")}
        for change in changes:
            run.say(f"[yellow]warning:[/] resuming on changed data: {_describe_change(change)}")
    runs.update_manifest(run_dir, status="running", resumes=[*manifest.get("resumes", []), resume], **changed)
    runs.trim_metrics(run_dir / "metrics.jsonl", int(checkpoint.name.split("-")[-1]))
    run.say(f"resuming [bold]{run_dir}[/] from {checkpoint.name}")


def _describe_change(change: dict[str, Any]) -> str:
    if change["sha256_was"] is None:
        return f"{change['path']}: not among the files the run started with"
    rows = "" if change["rows_was"] == change["rows_now"] else f", {change['rows_was']} -> {change['rows_now']} rows"
    return f"{change['path']}: changed (sha256 {change['sha256_was'][:12]} -> {change['sha256_now'][:12]}{rows})"


# --------------------------------------------------------------------------- fit: model, trainer, train, save


def _fit_recording_failure(run: TrainingRun, console, extra_callbacks: tuple) -> TrainResult:
    """``_fit``, with a run that did not finish recorded in its manifest (main process): interrupted
    before a checkpoint could be saved, or failed with its error. A user's mistake (out of memory)
    is raised as a QuicktuneError."""
    try:
        return _fit(run, console, extra_callbacks)
    except KeyboardInterrupt:  # before the first step or a second Ctrl-C: resumable only from a saved checkpoint
        if run.main:
            runs.update_manifest(run.run_dir, status="interrupted")
        raise
    except Exception as exc:
        if run.main:
            # a full disk: the manifest stays as it was (running, resumable), the error says why
            with contextlib.suppress(OSError):
                runs.update_manifest(run.run_dir, status="failed", ended=runs.now(),
                                     error=f"{type(exc).__name__}: {exc}"[:500])
        _raise_friendly(exc, run.recipe, run.run_dir)
        raise


def _raise_friendly(exc: Exception, recipe: Recipe, run_dir: Path | None = None) -> None:
    text = str(exc)
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        t = recipe.training
        raise QuicktuneError(
            "the GPU ran out of memory",
            hint=(
                f"Lower training.batch_size (now {t.batch_size}; raise grad_accumulation to keep the effective batch), "
                f"model.max_seq_length (now {recipe.model.max_seq_length}) or lora.r (now {recipe.lora.r}); "
                "keep training.gradient_checkpointing: true."
            ),
        ) from None


def _fit(run: TrainingRun, console, extra_callbacks: tuple) -> TrainResult:
    """Train in the claimed run folder: the model, its trainer, the steps, the saved result."""
    model, tokenizer = _setup_model(run)
    prefix = _share_prefixes(run, model)
    session = _setup_trainer(run, model, tokenizer, console, extra_callbacks)
    _run_trainer(run, session)
    if prefix is not None and prefix.batches:
        run.say(
            f"[dim]shared prefix: {prefix.batches} batches computed the tokens all their rows begin with once "
            f"({prefix.tokens_saved:,} token positions not computed again; first batch checked against the plain "
            f"forward: largest difference {prefix.max_difference:.1e} of the largest hidden value)[/]"
        )
    return _save(run, session)


def _share_prefixes(run: TrainingRun, model) -> shared_prefix.SharedPrefix | None:
    """SFT on the CPU without gradient checkpointing: a batch's common first tokens computed once
    (``train/shared_prefix.py``: exact, checked on the first batch); elsewhere None."""
    recipe = run.recipe
    if recipe.method in PREFERENCE_METHODS or recipe.method == "grpo" or run.backend.device != "cpu":
        return None
    if recipe.training.gradient_checkpointing:
        return None
    return shared_prefix.install(model, say=run.say)


def _setup_model(run: TrainingRun) -> tuple[Any, Any]:
    """The model to train and its tokenizer: what ``run.load_from`` holds, loaded as the recipe
    says, with the recipe's chat template, and LoRA on top (new, or the parent's adapter). Writes
    how a 4-bit base was quantized into the manifest."""
    recipe = run.recipe
    model, hf_tokenizer = run.backend.load_model(
        run.load_from,
        max_seq_length=recipe.model.max_seq_length,
        load_in_4bit=bool(recipe.model.load_in_4bit),
        dtype=recipe.model.dtype,
        full=recipe.method == "full",
    )
    if recipe.model.load_in_4bit and run.main:  # how the base was quantized, as loaded (README: QLoRA on the CPU)
        recorded = runs.read_manifest(run.run_dir).get("backend") or {}
        runs.update_manifest(run.run_dir, backend={**recorded, "four_bit": four_bit_summary(model)})
    if recipe.model.chat_template != "auto":
        # Saved with the adapter: export and chat must use the template training rendered with.
        hf_tokenizer.chat_template = FAMILY_TEMPLATES[recipe.model.chat_template]
    if recipe.method == "full":
        if recipe.training.gradient_checkpointing:
            # Unsloth's full fine-tuning path (and plain transformers) leave it off; LoRA gets it in add_lora.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, hf_tokenizer
    model = _with_adapter(run, model)
    check_mergeable(model)  # the export must be able to merge what is about to be trained
    return model, hf_tokenizer


def _with_adapter(run: TrainingRun, model):
    """``model`` with the adapter it trains: the parent's, continued, or a new LoRA (on the last
    ``lora.last_layers`` layers, when set)."""
    recipe, backend = run.recipe, run.backend
    if not run.new_adapter:
        return backend.load_adapter(model, str(run.parent_dir / "adapter"),
                                    gradient_checkpointing=recipe.training.gradient_checkpointing)
    if backend.name != "unsloth":  # the same LoRA initialisation on 1 process or N (Unsloth seeds its own)
        from transformers import set_seed

        set_seed(recipe.training.seed)
    return backend.add_lora(
        model,
        r=recipe.lora.r,
        alpha=recipe.lora.alpha,
        dropout=recipe.lora.dropout,
        targets=recipe.lora.target_modules,
        dora=recipe.lora.use_dora,
        rslora=recipe.lora.use_rslora,
        gradient_checkpointing=recipe.training.gradient_checkpointing,
        seed=recipe.training.seed,
        layers=lora_layers(recipe, model.config),
    )


def _setup_trainer(run: TrainingRun, model, hf_tokenizer, console, extra_callbacks: tuple) -> Session:
    """The trainer for the recipe's method (SFT, or DPO / ORPO on preference pairs) with quicktune's
    callbacks: metrics.jsonl (main process), Ctrl-C, the progress bar, and ``extra_callbacks``."""
    from transformers import PrinterCallback

    # transformers at its top (it subclasses TrainerCallback): imported here, after the backend
    from quicktune.train.callbacks import LiveProgress, MetricsLog, StopOnInterrupt

    interrupt = StopOnInterrupt() if run.ranks is None else stop_on_interrupt_callback(run.ranks)
    callbacks = [*([MetricsLog(run.run_dir / "metrics.jsonl")] if run.main else []), interrupt, *extra_callbacks]
    if console is not None:
        callbacks.append(LiveProgress(console))
    placement = {} if run.ranks is None else {"ranks": run.ranks}
    make_trainer = preference.preference_trainer if run.recipe.method in PREFERENCE_METHODS else _sft_trainer
    if run.recipe.method == "grpo":
        make_trainer, placement = grpo.grpo_trainer, {"say": run.say}
    trainer = make_trainer(run.recipe, run.backend, model, hf_tokenizer, run.prepared, run.run_dir, callbacks,
                           **placement)
    trainer.remove_callback(PrinterCallback)  # LiveProgress and metrics.jsonl report instead
    return Session(trainer, hf_tokenizer, interrupt)


def _sft_trainer(recipe, backend, model, hf_tokenizer, prepared, run_dir, callbacks, ranks=None):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    train_rows = training_rows(prepared.train_tokens)
    eval_rows = training_rows(prepared.eval_tokens or [])
    total = planned_steps(recipe, len(train_rows))
    args = sft_config(recipe, run_dir, backend, bool(eval_rows), total, ranks)
    if eval_rows and recipe.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping_patience))
    trainer_class = SFTTrainer
    if backend.name != "unsloth" and backend.device == "cpu":
        trainer_class = _cpu_trainer_class(SFTTrainer)
    return trainer_class(
        model=model,
        processing_class=hf_tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        args=args,
        callbacks=callbacks,
    )


def training_rows(tokenized) -> list[dict[str, list[int]]]:
    return [{"input_ids": t.input_ids, "labels": t.labels} for t in tokenized if t.trained_tokens]


def _cpu_trainer_class(sft_trainer):
    """TRL 1.15 always computes the loss through its Triton fused LM-head kernel, which fails
    without a GPU driver ("0 active drivers"). On the plain-transformers CPU fallback, use the
    model's own loss over the labels instead (Unsloth's CPU path has its own chunked loss)."""
    from transformers import Trainer

    class CpuSFTTrainer(sft_trainer):
        compute_loss = Trainer.compute_loss

    return CpuSFTTrainer


def _run_trainer(run: TrainingRun, session: Session) -> None:
    """The training steps, from ``run.checkpoint`` when resuming: fills ``session.output`` and
    ``session.seconds``. A checkpoint cut short by a full disk is removed and explained."""
    started = time.perf_counter()
    resume_from = str(run.checkpoint) if run.checkpoint else None
    try:
        session.output = session.trainer.train(resume_from_checkpoint=resume_from)
    except Exception as exc:
        _raise_if_disk_full(exc, run.run_dir, _checkpoint_bytes(run.run_dir, session.trainer.model, run.recipe.method))
        raise
    session.seconds = time.perf_counter() - started


def _save(run: TrainingRun, session: Session) -> TrainResult:
    """The run's end, written by the main process: checkpoint notes, loss.png, and then either
    the interruption or the final adapter (or model) and metrics in the manifest. The other
    processes wait for it; returns the result."""
    if not run.main:  # the main process writes the run folder; wait until the adapter is there
        run.ranks.wait()
        status = "interrupted" if session.interrupt.requested else "finished"
        return TrainResult(run.run_dir, status, _final_metrics(session), method=run.recipe.method)
    runs.describe_checkpoints(run.run_dir)
    plot_losses(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png", title=f"{run.recipe.name} {run.run_dir.name}")
    if session.interrupt.requested:
        return _save_interrupted(run, session)
    return _save_finished(run, session)


def _save_interrupted(run: TrainingRun, session: Session) -> TrainResult:
    """Ctrl-C stopped training after a checkpoint: the manifest says interrupted, at which step."""
    steps = session.trainer.state.global_step
    saved = runs.latest_checkpoint(run.run_dir)
    runs.update_manifest(run.run_dir, status="interrupted", interrupted_at_step=steps)
    if run.ranks is not None:
        run.ranks.wait()
    return TrainResult(run.run_dir, "interrupted", {"steps": steps, "checkpoint": saved.name if saved else None})


def _save_finished(run: TrainingRun, session: Session) -> TrainResult:
    """A finished run: the adapter (or model) at its final path, the metrics in the manifest."""
    method = run.recipe.method
    try:
        _save_final(session.trainer, session.tokenizer, run.run_dir, method)
    except Exception as exc:
        _raise_if_disk_full(exc, run.run_dir, _weight_bytes(session.trainer.model, method))
        raise
    metrics = _final_metrics(session)
    runs.update_manifest(run.run_dir, status="finished", ended=runs.now(), metrics=metrics)
    if run.ranks is not None:
        run.ranks.wait()
    return TrainResult(run.run_dir, "finished", metrics, method=method)


def _save_final(trainer, hf_tokenizer, run_dir: Path, method: str) -> None:
    """The adapter (or full model) appears at its final path whole, or not at all; one already
    there (a run killed after this and resumed) is swapped out in one step (runs.swap_in)."""
    final = run_dir / ("model" if method == "full" else "adapter")
    staging = run_dir / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.model.save_pretrained(str(staging))
        hf_tokenizer.save_pretrained(str(staging))
        runs.swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _weight_bytes(model, method: str) -> int:
    """What saving the trained weights writes: every weight (full) or the trainable ones (an adapter)."""
    params = [p for p in model.parameters() if method == "full" or p.requires_grad]
    return sum(p.numel() * p.element_size() for p in params)


def _checkpoint_bytes(run_dir: Path, model, method: str) -> int:
    """A checkpoint's size: the last complete one when there is one, else the weights with
    Adam's two float32 states per trainable weight."""
    last = runs.latest_checkpoint(run_dir)
    if last is not None:
        return sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _weight_bytes(model, method) + trainable * 8


def _raise_if_disk_full(exc: BaseException, run_dir: Path, needed: int) -> None:
    """A write that ran out of space: the cut-short files go (so the disk is not left full) and the
    error names the path and the space needed; the run resumes from its last complete checkpoint."""
    cut_short = [p for p in runs.checkpoint_dirs(run_dir) if not runs.checkpoint_complete(p)]
    cut_short += [p for p in (run_dir / ".adapter.partial", run_dir / ".model.partial") if p.exists()]
    # a failed save (something cut short) with less room than it needs is the disk, however torch words it
    error = runs.disk_full_error(exc, cut_short[0] if cut_short else run_dir, needed, suspect=bool(cut_short))
    if error is None:
        return
    for path in cut_short:
        shutil.rmtree(path, ignore_errors=True)
    last = runs.latest_checkpoint(run_dir)
    error.hint = (f"Free some space there and run the same command again: it resumes from {last.name}."
                  if last else "Free some space there and run the same command again (no checkpoint was complete yet: "
                  "it starts again).")
    raise error from None


def _final_metrics(session: Session) -> dict[str, Any]:
    """The manifest's metrics, from what the trainer logged and how long it took."""
    trainer, seconds = session.trainer, session.seconds
    history = trainer.state.log_history
    best = trainer.state.best_model_checkpoint
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    metrics = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "train_loss": losses[-1] if losses else None,
        "mean_train_loss": session.output.training_loss,
        "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": trainer.state.best_metric if evals else None,
        "best_checkpoint": Path(best).name if best else None,
        "seconds": round(seconds, 1),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds and tokens else None,
    }
    metrics.update(preference.logged_metrics(history))  # dpo / orpo: preference accuracy and reward margin
    metrics.update(grpo.logged_metrics(history))  # grpo: rewards, groups without signal, answer length
    import torch

    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return metrics
