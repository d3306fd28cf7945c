"""curves.png: the training curves a DPO user reads to see whether a run trained or collapsed, drawn from the log
history each run keeps in its metrics.json: one panel per metric, one line per run, validation points (`eval_steps`)
as markers on the panels that have them."""

from __future__ import annotations

import math
from pathlib import Path

from .plots import pyplot, save_png

# (history key, panel title); the validation value of a key is logged as "eval_" + key ("eval_loss" for "loss")
PANELS = [
    ("loss", "loss"),
    ("rewards/chosen", "rewards/chosen"),
    ("rewards/rejected", "rewards/rejected"),
    ("rewards/margins", "rewards/margins"),
    ("rewards/accuracies", "rewards/accuracies"),
    ("logps/chosen", "logps/chosen (summed)"),
    ("logps/rejected", "logps/rejected (summed)"),
    ("grad_norm", "grad norm (before clipping)"),
    ("learning_rate", "learning rate"),
]


def points(history: list, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in a log history, skipping entries without it; a history read from disk is not
    trusted to hold numbers (a hand-edited file draws fewer points, never a crash), non-finite values are drawn as
    gaps (a diverged run's last loss)."""
    steps, values = [], []
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict):
            continue
        step, value = entry.get("step"), entry.get(key)
        if _number(step) and _number(value):
            steps.append(float(step))
            values.append(float(value) if math.isfinite(value) else math.nan)
    return steps, values


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def plot_curves(histories: dict[str, list], path: Path, title: str) -> bool:
    """Draw every run's history (run id -> its metrics.json `history`) into `path`; False (and no file, a stale one
    removed) when no run has logged a training step yet."""
    histories = {run_id: h for run_id, h in histories.items() if points(h, "loss")[0]}
    if not histories:
        path.unlink(missing_ok=True)
        return False
    plt = pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(14, 10))
    colours = plt.get_cmap("tab10" if len(histories) <= 10 else "viridis")
    for i, (run_id, history) in enumerate(histories.items()):
        colour = colours(i if len(histories) <= 10 else i / (len(histories) - 1))
        for ax, (key, _) in zip(axes.flat, PANELS):
            ax.plot(*points(history, key), color=colour, linewidth=1.2, label=run_id)
            ax.plot(*points(history, f"eval_{key}"), color=colour, marker="o", linestyle="--", markersize=4)
    for ax, (key, label) in zip(axes.flat, PANELS):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: training curves (lines: training logs; dashed with dots: validation, eval_steps)")
    save_png(fig, path, rect=(0, 0.03 + 0.02 * math.ceil(len(labels) / 5), 1, 0.97))
    return True
