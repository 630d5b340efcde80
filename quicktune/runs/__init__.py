"""The run folder, the ground floor every command reads: ``runs/<recipe>/vN``.

One public surface for train/, export/, evaluate/, ui/ and the CLI (``from quicktune import runs``);
each concern lives in its own module: ``files`` (the one atomic write), ``folder`` (versions and
the manifest), ``locks``, ``checkpoints`` (resume and staging), ``refs`` (naming and listing runs),
``exports`` (a run's GGUFs), ``reports`` (its kept eval reports) and ``promotions`` (which version
of a recipe is promoted, and its history). No torch here.
"""

from quicktune.runs.checkpoints import (
    CHECKPOINT_FILES,
    STALE_IN_EXPORT,
    STALE_IN_RUN,
    WEIGHT_FILES,
    checkpoint_complete,
    checkpoint_dirs,
    data_changes,
    describe_checkpoints,
    find_resumable,
    latest_checkpoint,
    remove_stale,
    restore_final,
    swap_in,
    trim_metrics,
)
from quicktune.runs.exports import QUANT_ORDER, exported_gguf, pick_quantization
from quicktune.runs.files import disk_full_error, now, sha256_file, write_atomic
from quicktune.runs.folder import (
    MANIFEST,
    VERSION,
    create_run_dir,
    next_run_dir,
    read_manifest,
    run_label,
    trained_dir,
    update_manifest,
    versions,
    write_manifest,
)
from quicktune.runs.locks import LOCK, RunInUse, holder, lock_run
from quicktune.runs.promotions import (
    HISTORY,
    PROMOTE,
    ROLLBACK,
    Promotion,
    append_entry,
    in_force,
    lock_history,
    promoted_entry,
    read_history,
)
from quicktune.runs.refs import PROMOTED, RunSummary, list_runs, recipe_dir_named, resolve_run
from quicktune.runs.reports import EVAL_DIR, eval_headline, eval_reports, own_scores, read_own_eval, report_against
from quicktune.runs.resume import RecipeChange, adopt_recipe, recipe_change, resumable_change
from quicktune.runs.resume import refusal as resume_refusal

__all__ = [
    "CHECKPOINT_FILES",
    "EVAL_DIR",
    "HISTORY",
    "LOCK",
    "MANIFEST",
    "PROMOTE",
    "PROMOTED",
    "QUANT_ORDER",
    "ROLLBACK",
    "STALE_IN_EXPORT",
    "STALE_IN_RUN",
    "VERSION",
    "WEIGHT_FILES",
    "Promotion",
    "RecipeChange",
    "RunInUse",
    "RunSummary",
    "adopt_recipe",
    "append_entry",
    "checkpoint_complete",
    "checkpoint_dirs",
    "create_run_dir",
    "data_changes",
    "describe_checkpoints",
    "disk_full_error",
    "eval_headline",
    "eval_reports",
    "exported_gguf",
    "find_resumable",
    "holder",
    "in_force",
    "latest_checkpoint",
    "list_runs",
    "lock_history",
    "lock_run",
    "next_run_dir",
    "now",
    "own_scores",
    "pick_quantization",
    "promoted_entry",
    "read_history",
    "read_manifest",
    "read_own_eval",
    "recipe_change",
    "recipe_dir_named",
    "remove_stale",
    "report_against",
    "resolve_run",
    "restore_final",
    "resumable_change",
    "resume_refusal",
    "run_label",
    "sha256_file",
    "swap_in",
    "trained_dir",
    "trim_metrics",
    "update_manifest",
    "versions",
    "write_atomic",
    "write_manifest",
]
