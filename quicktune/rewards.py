"""method grpo's rewards: what scores each sampled answer, named in the recipe (``grpo.rewards``).

A reward has TRL's signature (trl 1.15, ``GRPOTrainer._calculate_rewards``): it is called with
``prompts``, ``completions``, ``completion_ids`` and every dataset column as keyword arguments
(quicktune's: ``reference``, the row's answer, and ``origin``, its file:line) and returns one
``float`` or ``None`` (does not apply) per completion. Here a prompt is the chat-rendered text the
model continues and a completion the answer's text, as the exported model would write it.

Built in, each the metric ``quicktune eval`` reports (``quicktune.metrics``, one implementation),
scored per answer against the row's reference answer:

* ``exact`` (or ``exact_match``), ``normalized_match``, ``json_valid``: 1 or 0;
* ``json_fields``: the share of the reference JSON object's fields the answer gets right (graded,
  so a group of near-misses still carries signal); ``None`` for a reference that is no JSON object;
* ``regex:PATTERN``: 1 when the answer (stripped) matches PATTERN in full, else 0;
* ``max_length:N``: 1 up to N characters, then N / length.

Your own: ``path/to/rewards.py:function``, the file resolved against the recipe's folder.
``resolve`` loads every reward and refuses (``RewardError``, exit 2) one that cannot be used;
``check_on_references`` runs them on reference answers before any model loads; ``for_trainer``
wraps them so that a wrong count or a NaN during training is an error naming the reward.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicktune import metrics
from quicktune.errors import QuicktuneError
from quicktune.recipe import RewardSpec, reward_name_problem

REFERENCE_COLUMN = "reference"
COLUMNS = (REFERENCE_COLUMN, "origin")  # what quicktune passes a reward beside prompts and completions
CHECKED_ROWS = 64  # reference answers each reward is tried on before training


class RewardError(QuicktuneError):
    """A reward that cannot be used: the recipe names what does not exist, or it misbehaves."""


@dataclass(frozen=True)
class Reward:
    """One resolved reward: the recipe's name for it, its weight, and the function."""

    name: str
    weight: float
    function: Callable[..., Sequence[float | None]]
    top: float | None = None  # the best score it can give (the built-ins: 1.0); None: not known
    built_in: bool = True


def _per_answer(score: Callable[[str, str], float | None]) -> Callable[..., list[float | None]]:
    def reward(prompts, completions, reference, **_columns) -> list[float | None]:
        return [score(answer, ref) for answer, ref in zip(completions, reference, strict=True)]

    return reward


def _json_fields(answer: str, reference: str) -> float | None:
    counts = metrics.json_field_counts(answer, reference)
    return None if counts is None else counts[0] / counts[1]


def _regex(pattern: str) -> Callable[[str, str], float]:
    compiled = re.compile(pattern)
    return lambda answer, _reference: float(compiled.fullmatch(answer.strip()) is not None)


def _max_length(limit: int) -> Callable[[str, str], float]:
    return lambda answer, _reference: 1.0 if len(answer) <= limit else limit / len(answer)


_BUILT_IN: dict[str, Callable[[str, str], float | None]] = {
    "exact": metrics.exact_match,
    "exact_match": metrics.exact_match,
    "normalized_match": metrics.normalized_match,
    "json_valid": metrics.json_valid,
    "json_fields": _json_fields,
}


def resolve(specs: Sequence[RewardSpec], recipe_dir: Path | None) -> list[Reward]:
    """The recipe's rewards, loaded: a built-in's scorer, or the function in the user's file. Raises
    ``RewardError`` naming the reward for a name, file or function that cannot be used."""
    return [_resolve_one(spec, recipe_dir) for spec in specs]


def _resolve_one(spec: RewardSpec, recipe_dir: Path | None) -> Reward:
    problem = reward_name_problem(spec.name)
    if problem:
        raise RewardError(f"grpo.rewards: {spec.name!r}: {problem}")
    kind, _, argument = spec.name.partition(":")
    if spec.name in _BUILT_IN:
        return Reward(spec.name, spec.weight, _per_answer(_BUILT_IN[spec.name]), top=1.0)
    if kind == "regex":
        return Reward(spec.name, spec.weight, _per_answer(_regex(argument)), top=1.0)
    if kind == "max_length":
        return Reward(spec.name, spec.weight, _per_answer(_max_length(int(argument))), top=1.0)
    return Reward(spec.name, spec.weight, _load_function(kind, argument, recipe_dir, spec.name), built_in=False)


def _load_function(file: str, function: str, recipe_dir: Path | None, name: str) -> Callable[..., Any]:
    """``function`` from the Python file ``file`` (relative to the recipe's folder), checked to take
    TRL's arguments."""
    path = Path(file).expanduser()
    path = path if path.is_absolute() else (recipe_dir or Path.cwd()) / path
    if not path.is_file():
        raise RewardError(f"grpo.rewards: {name!r}: {path} does not exist",
                          hint="The file is resolved against the recipe's folder.")
    module_name = f"quicktune_reward_{abs(hash(str(path.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error in it is theirs to see, named
        sys.modules.pop(module_name, None)
        raise RewardError(f"grpo.rewards: {name!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    found = getattr(module, function, None)
    if not callable(found):
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise RewardError(f"grpo.rewards: {name!r}: {path} has no function {function}"
                          + (f" (it defines {', '.join(defined)})" if defined else ""))
    problem = _signature_problem(found)
    if problem:
        raise RewardError(f"grpo.rewards: {name!r}: {problem}",
                          hint="A reward is called as f(prompts=[...], completions=[...], completion_ids=[...], "
                          f"{', '.join(f'{c}=[...]' for c in COLUMNS)}, ...) and returns one float or None a "
                          "completion: def my_reward(prompts, completions, **kwargs).")
    return found


def _signature_problem(function: Callable[..., Any]) -> str | None:
    """Why TRL's call would fail on ``function`` (None when it would not)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None  # a builtin or C function: its call will tell
    takes_rest = any(p.kind is p.VAR_KEYWORD for p in parameters)
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    offered = {"prompts", "completions", "completion_ids", *COLUMNS, "trainer_state", "log_extra", "log_metric"}
    missing = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.default is p.empty and p.name not in offered]
    if any(p.kind is p.POSITIONAL_ONLY for p in parameters):
        return "takes positional-only parameters; TRL passes every argument by name"
    if missing:
        return f"needs {', '.join(missing)}, which no call passes (passed: {', '.join(sorted(offered))})"
    if "completions" not in named and not takes_rest:
        return "takes no completions parameter (and no **kwargs): it cannot see the answers it scores"
    if not takes_rest and not offered <= named:
        return "takes no **kwargs, so TRL's call with the other columns would fail"
    return None


def call(reward: Reward, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
         columns: dict[str, list[Any]], **extra: Any) -> list[float | None]:
    """``reward`` on one batch, checked: one finite float (or None) a completion, else ``RewardError``."""
    try:
        scores = reward.function(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                 **columns, **extra)
    except RewardError:
        raise
    except Exception as exc:  # the user's function: say which reward and which row
        raise RewardError(f"reward {reward.name} raised {type(exc).__name__}: {exc} "
                          f"({_rows_named(columns)})") from None
    if isinstance(scores, str | bytes | dict) or not hasattr(scores, "__iter__"):
        raise RewardError(f"reward {reward.name} returned {type(scores).__name__}, not a list of floats")
    scores = list(scores)
    if len(scores) != len(completions):
        raise RewardError(f"reward {reward.name} returned {len(scores)} scores for {len(completions)} completions "
                          "(one float or None a completion)")
    for index, score in enumerate(scores):
        bad = not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score)
        if score is not None and bad:
            origin = columns.get("origin", [None] * len(scores))[index]
            raise RewardError(f"reward {reward.name} scored row {origin or index} {score!r}: a reward is a finite "
                              "number, or None where it does not apply")
    return [None if s is None else float(s) for s in scores]


def _rows_named(columns: dict[str, list[Any]]) -> str:
    origins = [o for o in columns.get("origin", []) if o]
    shown = list(dict.fromkeys(origins))
    if not shown:
        return "?"
    return f"row{'s' if len(shown) > 1 else ''} {', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}"


def for_trainer(rewards: Sequence[Reward]) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """TRL's ``reward_funcs`` and ``reward_weights``: each reward checked on every call (``call``) and
    named as in the recipe, which is the name TRL logs its mean under (``rewards/NAME/mean``)."""
    functions = []
    for reward in rewards:
        def checked(prompts, completions, completion_ids=None, _reward=reward, **columns):
            extra = {k: columns.pop(k) for k in ("trainer_state", "log_extra", "log_metric") if k in columns}
            return call(_reward, prompts, completions, completion_ids or [[] for _ in completions], columns,
                        **(extra if not _reward.built_in else {}))

        checked.__name__ = checked.__qualname__ = reward.name
        functions.append(checked)
    return functions, [r.weight for r in rewards]


@dataclass
class RewardReport:
    """What trying the rewards on reference answers found: one line per reward, and the warnings."""

    checked_rows: int = 0
    means: dict[str, float | None] = field(default_factory=dict)  # each reward's mean on the references
    warnings: list[str] = field(default_factory=list)


def check_on_references(rewards: Sequence[Reward], prompts: list[str], references: list[str | None],
                        origins: list[str], tokenize: Callable[[list[str]], list[list[int]]] | None = None,
                        ) -> RewardReport:
    """Each reward on the reference answers of up to ``CHECKED_ROWS`` rows, as if the model had
    written them: a reward that raises, returns the wrong count or a NaN is a ``RewardError`` naming
    the row; one that gives a reference less than its top score (the built-ins: 1; yours: the best it
    gave any of them) is a warning, since it would push the model away from the right answer."""
    report = RewardReport()
    missing = [o for o, r in zip(origins, references, strict=True) if r is None]
    if missing:
        report.warnings.append(f"{len(missing)} row(s) have no reference answer ({', '.join(missing[:3])}"
                               f"{' ...' if len(missing) > 3 else ''}): the built-in rewards score them None")
    rows = [i for i, r in enumerate(references) if r is not None][:CHECKED_ROWS]
    report.checked_rows = len(rows)
    if not rows:
        return report
    batch_prompts = [prompts[i] for i in rows]
    answers = [references[i] for i in rows]
    columns = {REFERENCE_COLUMN: answers, "origin": [origins[i] for i in rows]}
    ids = tokenize(answers) if tokenize else [[] for _ in answers]
    for reward in rewards:
        try:
            scores = call(reward, batch_prompts, answers, ids, columns)
        except RewardError:
            _raise_for_first_row(reward, batch_prompts, answers, ids, columns)
            raise
        applied = [s for s in scores if s is not None]
        report.means[reward.name] = sum(applied) / len(applied) if applied else None
        report.warnings.extend(_below_top(reward, scores, columns["origin"]))
    return report


def _raise_for_first_row(reward: Reward, prompts: list[str], answers: list[str], ids: list[list[int]],
                         columns: dict[str, list[Any]]) -> None:
    """A reward failed on a batch: call it on one row at a time, so the error names the row it fails on."""
    for index in range(len(answers)):
        one = {key: values[index:index + 1] for key, values in columns.items()}
        call(reward, prompts[index:index + 1], answers[index:index + 1], ids[index:index + 1], one)


def _below_top(reward: Reward, scores: list[float | None], origins: list[str]) -> list[str]:
    applied = [(s, o) for s, o in zip(scores, origins, strict=True) if s is not None]
    if not applied:
        return [(f"reward {reward.name} scored none of {len(scores)} reference answers (None on all): it gives "
                "training no signal on these rows")]
    top = reward.top if reward.top is not None else max(s for s, _ in applied)
    below = [(s, o) for s, o in applied if s < top - 1e-9]
    if not below:
        return []
    shown = ", ".join(f"{o} ({s:.2f})" for s, o in below[:3])
    return [(f"reward {reward.name} gives {len(below)} of {len(applied)} reference answers less than its top score "
            f"{top:g}: {shown}{', ...' if len(below) > 3 else ''}; it would push the model away from those answers: "
            "is it scoring the right thing?")]


def means(rewards: Sequence[Reward], prompts: list[str], answers: list[str], references: list[str | None],
          origins: list[str]) -> dict[str, float | None]:
    """Each reward's mean over ``answers`` (None where it scored none), keyed ``reward:NAME``: what
    ``quicktune eval`` reports beside its metrics for the run, its parent and the base."""
    columns = {REFERENCE_COLUMN: references, "origin": origins}
    found = {}
    for reward in rewards:
        scores = [s for s in call(reward, prompts, answers, [[] for _ in answers], columns) if s is not None]
        found[f"reward:{reward.name}"] = sum(scores) / len(scores) if scores else None
    return found
