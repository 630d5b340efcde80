"""The loss curve PNG of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def plot_losses(metrics_path: Path, out_path: Path, *, title: str = "") -> Path | None:
    if not metrics_path.is_file():
        return None
    train, evaluation = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "eval_loss" in record:
            evaluation.append((record["step"], record["eval_loss"]))
    if not train and not evaluation:
        return None
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axes.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evaluation:
        axes.plot(*zip(*evaluation), label="eval loss", color="#d62728", marker="o")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, out_path)


def save_figure(figure, out_path: Path) -> Path:
    """Write a matplotlib figure whole or not at all, and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    temp = out_path.with_name(f".{out_path.name}.tmp.png")
    figure.savefig(temp)
    plt.close(figure)
    temp.replace(out_path)
    return out_path
