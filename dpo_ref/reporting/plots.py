"""Figures: win rate, length and KL against beta, written atomically like every other result file."""

from __future__ import annotations

import io
from pathlib import Path

from ..store import atomic_write_bytes


def setting_label(row: dict) -> str:
    """`objective <- reference`, or the objective alone."""
    return row["objective"] + (f" <- {row['reference']}" if row["reference"] else "")


MARKERS = "osD^vP<X>*"  # with 10 colours: 100 lines before a colour and a marker repeat together


def line_styles(names: list[str]) -> dict[str, dict]:
    """A colour and a marker per line: matplotlib's cycle repeats its 10 colours, and a study of 16 methods (the
    reference-methods one) drew two of them in one colour; tab20's pairs of shades sit apart as separate lines."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {n: {"color": palette[i % len(palette)], "marker": MARKERS[i // len(palette) % len(MARKERS)]}
            for i, n in enumerate(names)}  # fmt: skip


FEW_LINES = 6  # a legend of this many entries fits inside (or below) a panel without hiding or squeezing it


def legend_beside(ax, source) -> None:
    """`source` panel's legend entries on `ax`: inside it for a few, to the right of it for many (inside, they would
    hide points; below, they squeeze the panels flat)."""
    handles, labels = source.get_legend_handles_labels()
    if len(labels) <= FEW_LINES:
        ax.legend(handles, labels, fontsize=8)
    else:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 + len(labels) // 16)


def error_bars(rows: list[dict], key: str) -> list[list[float]] | list[float]:
    """Asymmetric bars from each row's 95% interval (`key`_lo / _hi), else its s.d. over seeds (else none)."""
    if all(r.get(f"{key}_lo") is not None for r in rows):
        return [[r[key] - r[f"{key}_lo"] for r in rows], [r[f"{key}_hi"] - r[key] for r in rows]]
    return [r.get(f"{key}_sd") or 0.0 for r in rows]


def plot_beta(agg: list[dict], path: Path, title: str, comparison: dict | None = None) -> None:
    """Win rate, length and KL against beta (log axis), one line per (objective, reference), from settings aggregated
    over seeds (mean, with 95% interval bars); the SFT model as a dashed line, its interval shaded; on the win-rate
    panel the best setting starred and those not distinguishable from it ringed (`comparison`)."""
    plt = pyplot()
    sft = next((r for r in agg if r["objective"] == "sft"), None)
    lines: dict[str, list[dict]] = {}
    for r in agg:
        if r["beta"] is not None:
            lines.setdefault(setting_label(r), []).append(r)
    style = line_styles(list(lines))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("win_rate", "win rate vs SFT"), ("length", "mean length (tokens)"), ("kl", "KL(policy || ref), k1")]
    for ax, (key, label) in zip(axes, panels):
        for name, grp in lines.items():
            grp = sorted(grp, key=lambda r: r["beta"])
            errors = error_bars(grp, key)
            ax.errorbar(
                [r["beta"] for r in grp], [r[key] for r in grp], yerr=errors, capsize=3, label=name, **style[name]
            )
            bad = [r for r in grp if r["status"] == "degenerate"]
            marked = "degenerate" if bad and key == "win_rate" else None
            ax.scatter([r["beta"] for r in bad], [r[key] for r in bad], marker="x", s=90, color="red", label=marked)
        if sft is not None and key != "kl":
            ax.axhline(sft[key], color="gray", linestyle="--", label="SFT")
            if sft.get(f"{key}_lo") is not None:
                ax.axhspan(sft[f"{key}_lo"], sft[f"{key}_hi"], color="gray", alpha=0.12)
        if comparison is not None and key == "win_rate":
            _mark_best(ax, agg, comparison)
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if len(lines) <= FEW_LINES:
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.24), ncol=2)  # below: clear of the points
    else:  # the win-rate panel's entries (SFT, best, ringed included) beside the last panel
        legend_beside(axes[-1], axes[0])
    fig.suptitle(title)
    save_png(fig, path)


def _mark_best(ax, agg: list[dict], comparison: dict) -> None:
    def points(keys):
        rows = [r for r in agg if [r["objective"], r["reference"], r["beta"]] in keys]
        return [r["beta"] for r in rows], [r["win_rate"] for r in rows]

    ax.scatter(*points([comparison["best_key"]]), marker="*", s=220, color="gold", edgecolor="k", zorder=4,
               label="best (validation rule)")  # fmt: skip
    ax.scatter(*points(comparison["indistinguishable_keys"]), s=160, facecolors="none", edgecolors="k", zorder=4,
               label="not distinguishable from best (95%, all comparisons together)")  # fmt: skip


def plot_frontier(agg: list[dict], path: Path, title: str) -> None:
    """The reward-KL frontier: win rate and judge reward against KL(policy || SFT policy) for every setting, one
    colour per (objective, reference), each point labelled with its beta, 95% interval bars on both axes. The KL is
    to the SFT policy for every run, not to its own reference: a stronger or other-tokenizer reference is far from
    the SFT model before any training, so KL to it would put runs on different axes, the SFT model at 0 on none."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines: dict[str, list[dict]] = {}
    for r in agg:
        if r["beta"] is not None:
            lines.setdefault(setting_label(r), []).append(r)
    sft = next((r for r in agg if r["objective"] == "sft"), None)
    style = line_styles(list(lines))
    for ax, (key, label) in zip(axes, [("win_rate", "win rate vs SFT"), ("reward", "judge reward")]):
        for name, grp in lines.items():
            grp = sorted(grp, key=lambda r: r["kl_sft"])
            ax.errorbar(
                [r["kl_sft"] for r in grp], [r[key] for r in grp], xerr=error_bars(grp, "kl_sft"),
                yerr=error_bars(grp, key), capsize=3, label=name, **style[name],
            )  # fmt: skip
            for r in grp:
                xy = (r["kl_sft"], r[key])
                ax.annotate(f"{r['beta']:g}", xy, textcoords="offset points", xytext=(4, 4), fontsize=7)
        if sft is not None:
            ax.scatter([0.0], [sft[key]], marker="*", s=120, color="black", label="SFT", zorder=3)
        ax.set_xlabel("KL(policy || SFT policy), nats")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    legend_beside(axes[1], axes[0])
    fig.suptitle(f"{title}: reward-KL frontier (labels: beta)")
    save_png(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Write a figure atomically, like every other result file, and free it; `rect`: the part of the figure its axes
    are laid out in (the rest left to a figure legend)."""
    fig.tight_layout(rect=rect)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
