"""A run ``--from`` an adapter run continues that adapter as it is: its rank, alpha, dropout, modules, DoRA and
rsLoRA come from the parent's ``adapter_config.json``, not from the recipe. A recipe that says otherwise would
be accepted and ignored (and its recipe.yaml would record values the adapter does not have), so it is refused,
naming the keys. ``lora.last_layers`` is checked where the parent is read (trainer.load_parent)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from quicktune import runs
from quicktune.errors import RecipeError
from quicktune.recipe import Recipe

# recipe lora key -> the adapter_config.json key PEFT writes
ADAPTER_KEYS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
                "use_dora": "use_dora", "use_rslora": "use_rslora"}


def lora_differences(recipe: Recipe, adapter_config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The recipe's lora keys whose values the saved adapter does not have: key -> (recipe's, adapter's).
    Module lists compare as sets; a key the config lacks (or a module pattern, a string) is not compared."""
    found = {}
    for key, saved_key in ADAPTER_KEYS.items():
        ours, theirs = getattr(recipe.lora, key), adapter_config.get(saved_key)
        if theirs is None or (key == "target_modules" and not isinstance(theirs, list)):
            continue
        same = set(ours) == set(theirs) if key == "target_modules" else ours == theirs
        if not same:
            found[key] = (sorted(ours) if key == "target_modules" else ours,
                          sorted(theirs) if key == "target_modules" else theirs)
    return found


def check_parent_lora(recipe: Recipe, parent_ref: str | None, parent_dir: Path | None) -> None:
    """Refuse a recipe whose lora keys differ from the adapter ``--from`` continues (nothing to check when
    there is no parent, the recipe trains every weight, or the parent is a full fine-tune: a new adapter)."""
    if parent_dir is None or recipe.method == "full":
        return
    if runs.read_manifest(parent_dir).get("method") == "full":
        return
    config_file = parent_dir / "adapter" / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # load_parent has refused a parent without a readable adapter already
    differ = lora_differences(recipe, config if isinstance(config, dict) else {})
    if not differ:
        return
    label = runs.run_label(parent_dir)
    problems = [f"{recipe.where(('lora', key))}: lora.{key} is {_show(ours)}, and {label}'s adapter has "
                f"{_show(theirs)}" for key, (ours, theirs) in differ.items()]
    sets = " ".join(shlex.quote(f"--set=lora.{key}={json.dumps(theirs)}") for key, (_, theirs) in differ.items())
    raise RecipeError(
        f"--from {parent_ref}: a continued run trains its parent's adapter as it is, and {len(differ)} lora "
        f"key(s) of this recipe say otherwise",
        problems=problems,
        hint=f"Give the adapter's values ({sets}, or the same in the recipe), or leave out --from to train a new "
        "adapter with the recipe's.",
    )


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)
