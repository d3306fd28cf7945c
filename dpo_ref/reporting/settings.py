"""Settings (objective, reference, beta) over their seeds: means, spread, intervals, the beta grid and each method's
best beta (the shapes of the paper's Tables 1, 3 and 5, Liu, Liu and Cohan, arXiv 2407.13709)."""

from __future__ import annotations

import math

from . import similarity as sim_fit
from .format import cell, fmt
from .plots import setting_label
from .uncertainty import BEST_RULE, METRICS, group_settings

AGGREGATED = list(METRICS)  # every metric with an interval is a mean over seeds too


def aggregate(rows: list[dict], bounds: dict[tuple, dict] | None = None) -> list[dict]:
    """Finished runs grouped by (objective, reference, beta) across seeds: mean and sample s.d. of each metric, and
    the setting's 95% intervals from `bounds` (reporting.uncertainty.setting_intervals). The s.d. over seeds is the
    noise a difference between betas has to beat."""
    out = []
    for (objective, reference, beta), grp in group_settings(rows).items():
        status = "degenerate" if any(r["status"] == "degenerate" for r in grp) else "done"
        row = {"objective": objective, "reference": reference, "beta": beta, "seeds": len(grp), "status": status}
        for key in AGGREGATED:
            values = [r[key] for r in grp if r.get(key) is not None]
            mean = sum(values) / len(values) if values else None
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
            row[key], row[f"{key}_sd"] = mean, sd
        out.append(row | (bounds or {}).get((objective, reference, beta), {}))
    return out


def seed_table(agg: list[dict]) -> str:
    """Markdown table of means over seeds (± s.d.), shown when some setting has more than one seed."""
    if all(r["seeds"] < 2 for r in agg):
        return ""
    cols = ["objective", "reference", "beta", "seeds"] + AGGREGATED
    lines = [
        "\nMean over seeds (± sample s.d. across seeds; 95% intervals in brackets: the seeds share the prompts and "
        "the baseline samples, so prompts and seeds are two levels of one design):\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in agg:
        cells = [
            cell(r, c) + (f" ± {fmt(r[c + '_sd'], c)}" if c in AGGREGATED and r[c + "_sd"] is not None else "")
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def beta_grid_table(agg: list[dict], metric: str = "win_rate") -> str:
    """Markdown pivot: one row per (objective, reference), one column per beta, mean `metric` over seeds
    (the shape of the paper's Tables 1 and 4, arXiv 2407.13709)."""
    agg = [r for r in agg if r["beta"] is not None]
    betas = sorted({r["beta"] for r in agg}, reverse=True)
    labels = list(dict.fromkeys(setting_label(r) for r in agg))
    at = {(setting_label(r), r["beta"]): r for r in agg}
    lines = [
        f"\n{metric} by beta (mean over seeds; * = degenerate):\n",
        "| | " + " | ".join(f"{b:g}" for b in betas) + " |",
    ]
    lines.append("|---|" + "---|" * len(betas))
    for label in labels:
        values = [
            fmt(at[(label, b)][metric], metric) + ("*" if at[(label, b)]["status"] == "degenerate" else "")
            if (label, b) in at
            else ""
            for b in betas
        ]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


BEST_COLUMNS = [
    "method",
    "best_beta",
    "win_rate",
    "lc_win_rate",
    "rank_acc_policy",
    "length",
    "kl",
    "val_win_rate",
    "seeds",
]


def best_per_method(agg: list[dict], similarity: dict | None = None) -> list[dict]:
    """One row per (objective, reference) at its best beta by BEST_RULE, after the SFT row (the paper's Tables 3 and 5);
    with `similarity` ({reference: measures}), each row that trains against a reference carries its measures."""
    best: dict[str, dict] = {}
    for r in agg:
        label = "SFT" if r["objective"] == "sft" else setting_label(r)
        if r["status"] == "degenerate" or r["val_win_rate"] is None:  # as in the paper: never a method's best
            continue
        if label not in best or r["val_win_rate"] > best[label]["val_win_rate"]:
            best[label] = r
    out = []
    for label, r in best.items():
        row = r | {"method": label, "best_beta": r["beta"]}
        if similarity is not None:
            sim = similarity.get(r["reference"] or "", {})
            row.update({k: sim.get(k) for k in sim_fit.COLUMNS})
        out.append(row)
    return out


def best_table(agg: list[dict], similarity: dict | None = None) -> str:
    best = best_per_method(agg, similarity)
    columns = BEST_COLUMNS + (sim_fit.COLUMNS if similarity is not None else [])
    lines = [f"\nBest beta per method ({BEST_RULE}):\n", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in best]
    if similarity is not None:
        lines.append(f"\n{sim_fit.NOTE}")
    return "\n".join(lines) + "\n"
