"""Which metrics got worse: "v7 is worse than v3" at a glance. Pure Python, no torch.

A share metric (exact match, JSON fields, ...) regressed when it fell by more than the
threshold in percentage points; the loss on the answers when it rose by more than the
threshold in percent of the earlier loss. The default, 2 points, is a little more than one
row of the demo's 60 held-out rows (1.7 points), so a single row's wobble is not flagged.
"""

from __future__ import annotations

DEFAULT_THRESHOLD = 2.0
LOSS = "loss on the answers"


def fell(before: float | None, after: float | None, threshold: float) -> bool:
    """A share in [0, 1] fell by more than ``threshold`` percentage points."""
    return before is not None and after is not None and (before - after) * 100 > threshold + 1e-9


def loss_rose(before: float | None, after: float | None, threshold: float) -> bool:
    """A loss rose by more than ``threshold`` percent of its earlier value."""
    if before is None or after is None or before <= 0:
        return False
    return (after - before) / before * 100 > threshold + 1e-9


def find_regressions(
    before: dict[str, float | None],
    after: dict[str, float | None],
    loss_before: float | None,
    loss_after: float | None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[str]:
    """The metrics ``after`` is worse on than ``before``, in ``before``'s order."""
    names = [name for name in before if fell(before.get(name), after.get(name), threshold)]
    return names + ([LOSS] if loss_rose(loss_before, loss_after, threshold) else [])
