"""Train a recipe: data -> Unsloth model + LoRA -> TRL SFTTrainer -> a run folder.

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
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from quicktune import runs
from quicktune.backend import four_bit_summary, load_backend, require_device_for
from quicktune.data.check import prepare_for_recipe
from quicktune.data.report import PreparedData
from quicktune.errors import QuicktuneError, RecipeError
from quicktune.recipe import PREFERENCE_METHODS, Recipe
from quicktune.train.config import planned_steps, sft_config

PACKAGES = ("quicktune", "torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "datasets", "accelerate")


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


def recipe_sha256(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_yaml().encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def prepare_data(recipe: Recipe) -> PreparedData:
    prepared = prepare_for_recipe(recipe)
    if not any(t.trained_tokens for t in prepared.train_tokens):
        raise QuicktuneError("no training row has a token left to train on (all were cut by max_seq_length?)")
    return prepared


def _data_manifest(prepared: PreparedData) -> dict[str, Any]:
    return {
        "files": [
            {"path": item.path, "format": item.format, "rows": item.rows, "sha256": runs.sha256_file(item.path)}
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


def _rows(tokenized) -> list[dict[str, list[int]]]:
    return [{"input_ids": t.input_ids, "labels": t.labels} for t in tokenized if t.trained_tokens]


# training.report_to: the package each integration needs (transformers' TensorBoardCallback uses
# torch.utils.tensorboard, which imports the tensorboard package).
REPORTER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_reporters(recipe: Recipe) -> None:
    """Refuse ``training.report_to`` naming an integration whose package is not installed."""
    import importlib.util

    missing = [name for name in recipe.training.report_to if importlib.util.find_spec(REPORTER_PACKAGES[name]) is None]
    if missing:
        packages = " ".join(REPORTER_PACKAGES[name] for name in missing)
        raise QuicktuneError(
            f"{recipe.where(('training', 'report_to'))}: training.report_to: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed, so the trainer could not report there",
            hint=f"pip install {packages}, or remove it from training.report_to (metrics.jsonl and "
            "`quicktune ui` keep every logged step either way).",
        )


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
    from quicktune.adapters import read_plan

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


def lora_layers(recipe: Recipe, config) -> list[int] | None:
    """The decoder layers that get LoRA: the last ``lora.last_layers`` of the model, or None for all."""
    wanted = recipe.lora.last_layers
    if wanted is None:
        return None
    total = config.get_text_config().num_hidden_layers
    if wanted > total:
        raise RecipeError(
            f"{recipe.where(('lora', 'last_layers'))}: lora.last_layers is {wanted}, and {recipe.model.base} has "
            f"{total} decoder layers",
            hint=f"Set it to at most {total}, or remove it to put LoRA on every layer.",
        )
    return list(range(total - wanted, total))


def _parent_is_full(parent_dir: Path | None) -> bool:
    return parent_dir is not None and runs.read_manifest(parent_dir).get("method") == "full"


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
    check_reporters(recipe)  # before anything slow: a missing package is the user's to install
    backend = load_backend()  # first: Unsloth must be imported before transformers/trl/peft
    say = console.print if console is not None else (lambda *a, **k: None)
    if backend.notice:
        say(f"[yellow]notice:[/] {backend.notice}")
    if recipe.method == "full" and recipe.model.load_in_4bit:
        raise QuicktuneError("method full cannot train a 4-bit model")
    require_device_for(recipe.method, bool(recipe.model.load_in_4bit), backend)

    from quicktune.base_model import prepare_base
    from quicktune.train.ranks import main_first, on_main

    with main_first(ranks):  # converted tokenizers and GGUF bases land in the cache once
        prepared = prepare_data(recipe)
        base = prepare_base(recipe.model.base, recipe.model.revision)
    parent_dir = load_parent(parent_ref, runs_root, recipe)
    parent = str(parent_dir) if parent_dir else None
    sha = recipe_sha256(recipe)
    main = ranks is None or ranks.is_main
    load_from = str(runs.trained_dir(parent_dir, {"method": "full"})) if _parent_is_full(parent_dir) else base.load_from
    data = _data_manifest(prepared)
    new_adapter = recipe.method != "full" and (parent_dir is None or _parent_is_full(parent_dir))
    if recipe.lora.last_layers is not None and new_adapter:
        from transformers import AutoConfig

        lora_layers(recipe, AutoConfig.from_pretrained(load_from))  # a wrong count is refused before a run folder
    with contextlib.ExitStack() as held:
        def claim() -> tuple[Path, Path | None]:
            run_dir, checkpoint, removed = _claim_run(runs_root, recipe, sha, parent, new_run, held)
            for path in removed:
                say(f"[dim]removed {path.relative_to(run_dir)}, left by a run that was stopped[/]")
            _start_or_resume(recipe, run_dir, checkpoint, sha, parent, base, load_from, data, backend,
                             allow_data_change, say)
            if ranks is not None:
                runs.update_manifest(run_dir, distributed=ranks.describe(recipe.training))
            return run_dir, checkpoint

        run_dir, checkpoint = on_main(ranks, claim)  # the main process claims; the others train in its folder
        try:
            result = _fit(recipe, backend, load_from, prepared, run_dir, parent_dir, checkpoint, console,
                          extra_callbacks, ranks)
        except KeyboardInterrupt:  # before the first step or a second Ctrl-C: resumable only from a saved checkpoint
            if main:
                runs.update_manifest(run_dir, status="interrupted")
            raise
        except Exception as exc:
            if main:
                try:
                    runs.update_manifest(run_dir, status="failed", ended=runs.now(),
                                         error=f"{type(exc).__name__}: {exc}"[:500])
                except OSError:  # a full disk: the manifest stays as it was (running, resumable), the error says why
                    pass
            _raise_friendly(exc, recipe, run_dir)
            raise
    result.resumed_from = checkpoint.name if checkpoint else None
    return result


def _start_or_resume(recipe, run_dir, checkpoint, sha, parent, base, load_from, data, backend, allow_data_change,
                     say) -> None:
    """Write a new run's recipe and manifest, or record a resume (refusing one on changed data)."""
    if checkpoint is None:
        runs.write_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
        runs.write_manifest(
            run_dir,
            {
                "recipe": recipe.name,
                "version": run_dir.name,
                "status": "running",
                "recipe_sha256": sha,
                "started": runs.now(),
                "ended": None,
                "parent": parent,
                "seed": recipe.training.seed,
                "method": recipe.method,
                "base_model": {"spec": base.spec, "kind": base.kind, "loaded_from": load_from,
                               "fingerprint": base.fingerprint},
                "data": data,
                "backend": {"name": backend.name, "device": backend.device},
                "packages": package_versions(),
                "resumes": [],
                "metrics": None,
            },
        )
        say(f"run folder: [bold]{run_dir}[/]")
        return
    manifest = runs.read_manifest(run_dir)
    changes = runs.data_changes(manifest.get("data"), data)
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
        changed = {"data": data, "data_at_start": manifest.get("data_at_start") or manifest.get("data")}
        for change in changes:
            say(f"[yellow]warning:[/] resuming on changed data: {_describe_change(change)}")
    runs.update_manifest(run_dir, status="running", resumes=manifest.get("resumes", []) + [resume], **changed)
    runs.trim_metrics(run_dir / "metrics.jsonl", int(checkpoint.name.split("-")[-1]))
    say(f"resuming [bold]{run_dir}[/] from {checkpoint.name}")


def _describe_change(change: dict[str, Any]) -> str:
    if change["sha256_was"] is None:
        return f"{change['path']}: not among the files the run started with"
    rows = "" if change["rows_was"] == change["rows_now"] else f", {change['rows_was']} -> {change['rows_now']} rows"
    return f"{change['path']}: changed (sha256 {change['sha256_was'][:12]} -> {change['sha256_now'][:12]}{rows})"


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


def _fit(recipe, backend, load_from, prepared, run_dir, parent_dir, checkpoint, console, extra_callbacks,
         ranks=None) -> TrainResult:
    from transformers import PrinterCallback

    from quicktune.train.callbacks import LiveProgress, MetricsLog, StopOnInterrupt
    from quicktune.train.plot import plot_losses

    model, hf_tokenizer = backend.load_model(
        load_from,
        max_seq_length=recipe.model.max_seq_length,
        load_in_4bit=bool(recipe.model.load_in_4bit),
        dtype=recipe.model.dtype,
        full=recipe.method == "full",
    )
    main = ranks is None or ranks.is_main
    if recipe.model.load_in_4bit and main:  # how the base was quantized, as loaded (README: QLoRA on the CPU)
        recorded = runs.read_manifest(run_dir).get("backend") or {}
        runs.update_manifest(run_dir, backend={**recorded, "four_bit": four_bit_summary(model)})
    if recipe.model.chat_template != "auto":
        from quicktune.templates import FAMILY_TEMPLATES

        # Saved with the adapter: export and chat must use the template training rendered with.
        hf_tokenizer.chat_template = FAMILY_TEMPLATES[recipe.model.chat_template]
    if recipe.method == "full" and recipe.training.gradient_checkpointing:
        # Unsloth's full fine-tuning path (and plain transformers) leave it off; LoRA gets it in add_lora.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.method != "full":
        if parent_dir is not None and not _parent_is_full(parent_dir):
            model = backend.load_adapter(model, str(parent_dir / "adapter"),
                                         gradient_checkpointing=recipe.training.gradient_checkpointing)
        else:
            if backend.name != "unsloth":  # the same LoRA initialisation on 1 process or N (Unsloth seeds its own)
                from transformers import set_seed

                set_seed(recipe.training.seed)
            model = backend.add_lora(
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
        from quicktune.adapters import check_mergeable

        check_mergeable(model)  # the export must be able to merge what is about to be trained
    if ranks is None:
        interrupt = StopOnInterrupt()
    else:
        from quicktune.train.ranks import stop_on_interrupt_callback

        interrupt = stop_on_interrupt_callback(ranks)
    callbacks = [*([MetricsLog(run_dir / "metrics.jsonl")] if main else []), interrupt, *extra_callbacks]
    if console is not None:
        callbacks.append(LiveProgress(console))
    make_trainer, placement = _sft_trainer, {}
    if ranks is not None:
        placement = {"ranks": ranks}
    if recipe.method in PREFERENCE_METHODS:  # DPO / ORPO on preference pairs
        from quicktune.train.preference import preference_trainer as make_trainer
    trainer = make_trainer(recipe, backend, model, hf_tokenizer, prepared, run_dir, callbacks, **placement)
    trainer.remove_callback(PrinterCallback)  # LiveProgress and metrics.jsonl report instead
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:
        _raise_if_disk_full(exc, run_dir, _checkpoint_bytes(run_dir, trainer.model, recipe.method))
        raise
    seconds = time.perf_counter() - started
    if not main:  # the main process writes the run folder; wait until the adapter is there
        ranks.wait()
        status = "interrupted" if interrupt.requested else "finished"
        return TrainResult(run_dir, status, _final_metrics(trainer, output, seconds), method=recipe.method)
    runs.describe_checkpoints(run_dir)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{recipe.name} {run_dir.name}")
    if interrupt.requested:
        saved = runs.latest_checkpoint(run_dir)
        runs.update_manifest(run_dir, status="interrupted", interrupted_at_step=trainer.state.global_step)
        if ranks is not None:
            ranks.wait()
        return TrainResult(run_dir, "interrupted", {"steps": trainer.state.global_step,
                                                     "checkpoint": saved.name if saved else None})
    try:
        _save_final(trainer, hf_tokenizer, run_dir, recipe.method)
    except Exception as exc:
        _raise_if_disk_full(exc, run_dir, _weight_bytes(trainer.model, recipe.method))
        raise
    metrics = _final_metrics(trainer, output, seconds)
    runs.update_manifest(run_dir, status="finished", ended=runs.now(), metrics=metrics)
    if ranks is not None:
        ranks.wait()
    return TrainResult(run_dir, "finished", metrics, method=recipe.method)


def _sft_trainer(recipe, backend, model, hf_tokenizer, prepared, run_dir, callbacks, ranks=None):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    train_rows = _rows(prepared.train_tokens)
    eval_rows = _rows(prepared.eval_tokens or [])
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


def _cpu_trainer_class(sft_trainer):
    """TRL 1.15 always computes the loss through its Triton fused LM-head kernel, which fails
    without a GPU driver ("0 active drivers"). On the plain-transformers CPU fallback, use the
    model's own loss over the labels instead (Unsloth's CPU path has its own chunked loss)."""
    from transformers import Trainer

    class CpuSFTTrainer(sft_trainer):
        compute_loss = Trainer.compute_loss

    return CpuSFTTrainer


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


def _final_metrics(trainer, output, seconds: float) -> dict[str, Any]:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    metrics = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "train_loss": losses[-1] if losses else None,
        "mean_train_loss": output.training_loss,
        "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": trainer.state.best_metric if evals else None,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint).name if trainer.state.best_model_checkpoint else None,
        "seconds": round(seconds, 1),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds and tokens else None,
    }
    from quicktune.train.preference import logged_metrics

    metrics.update(logged_metrics(history))  # dpo / orpo: preference accuracy and reward margin
    import torch

    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return metrics
