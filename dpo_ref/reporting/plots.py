"""Figures: win rate, length and KL against beta, written atomically like every other result file."""

from __future__ import annotations

import io
from pathlib import Path

from ..store import atomic_write_bytes


def setting_label(row: dict) -> str:
    """`objective <- reference`, or the objective alone."""
    return row["objective"] + (f" <- {row['reference']}" if row["reference"] else "")


def plot_beta(agg: list[dict], path: Path, title: str) -> None:
    """Win rate, length and KL against beta (log axis), one line per (objective, reference), from settings aggregated
    over seeds (mean, with s.d. bars when there are several); the SFT model as a dashed line."""
    plt = pyplot()
    sft = next((r for r in agg if r["objective"] == "sft"), None)
    lines: dict[str, list[dict]] = {}
    for r in agg:
        if r["beta"] is not None:
            lines.setdefault(setting_label(r), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("win_rate", "win rate vs SFT"), ("length", "mean length (tokens)"), ("kl", "KL(policy || ref), k1")]
    for ax, (key, label) in zip(axes, panels):
        for name, grp in lines.items():
            grp = sorted(grp, key=lambda r: r["beta"])
            errors = [r[f"{key}_sd"] or 0.0 for r in grp]
            ax.errorbar([r["beta"] for r in grp], [r[key] for r in grp], yerr=errors, marker="o", capsize=3, label=name)
            bad = [r for r in grp if r["status"] == "degenerate"]
            marked = "degenerate" if bad and key == "win_rate" else None
            ax.scatter([r["beta"] for r in bad], [r[key] for r in bad], marker="x", s=90, color="red", label=marked)
        if sft is not None and key != "kl":
            ax.axhline(sft[key], color="gray", linestyle="--", label="SFT")
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a figure atomically, like every other result file, and free it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
