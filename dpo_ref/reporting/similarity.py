"""Does a reference's similarity to the policy predict what it is worth? The best win rate DPO reaches against each
reference (its beta chosen on validation prompts), fitted against each similarity measure and against the
reference's own strength, with Pearson's r and its 95% interval (the paper's RQ3 finding, Liu, Liu and Cohan, arXiv
2407.13709, Table 5, names no measure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from .plots import pyplot, save_png

COLUMNS = ["kl_k3", "pair_log_ratio", "logp_corr", "ref_pref_acc", "strength"]
NOTE = (
    "Similarity of each reference to the SFT policy before training: kl_k3 = KL(SFT || ref) estimated on the SFT "
    "policy's own samples at temperature 1 on the test prompts (k3 estimator; k1 as kl in results.json); on the "
    "training pairs: pair_log_ratio = mean log p_sft(y|x) - log p_ref(y|x) over their responses (not a KL: the pairs "
    "are not plain samples of the SFT policy), logp_corr = correlation of the two models' sequence log-probs, "
    "ref_pref_acc = pairs where the reference alone prefers the chosen response. strength = the reference's own win "
    "rate against the SFT baseline (its samples on the test prompts, same judge and sampling)."
)
LABELS = {
    "kl_k3": "KL(SFT || ref), k3",
    "pair_log_ratio": "mean log p_sft - log p_ref (pairs)",
    "logp_corr": "corr. of sequence log-probs (pairs)",
    "ref_pref_acc": "reference's own pair accuracy",
    "strength": "reference's win rate vs SFT",
}
MIN_REFERENCES = 4  # Pearson's interval (Fisher's z, standard error 1/sqrt(n - 3)) needs n > 3


def _points(best: list[dict], similarity: dict) -> dict[str, list[dict]]:
    """Per objective, the best row of every fixed reference, with the reference's measures."""
    out: dict[str, list[dict]] = {}
    for row in best:
        sim = similarity.get(row.get("reference") or "")
        if sim is None or sim.get("kind", "fixed") != "fixed":  # a moving reference's similarity is not fixed
            continue
        out.setdefault(row["objective"], []).append(row | {m: sim.get(m) for m in COLUMNS})
    return out


def fit(best: list[dict], similarity: dict) -> dict:
    """Pearson's r (95% interval by Fisher's z), Spearman's rho and the least-squares line of the best win rate on
    each measure, per objective with at least MIN_REFERENCES fixed references; `short` names those with fewer."""
    fits, short, constant = [], {}, []
    points = _points(best, similarity)
    for objective, rows in points.items():
        if len(rows) < MIN_REFERENCES:
            short[objective] = len(rows)
            continue
        for measure in COLUMNS:
            pts = [(r[measure], r["win_rate"]) for r in rows if _finite(r.get(measure)) and _finite(r["win_rate"])]
            if len(pts) < MIN_REFERENCES:  # a measure this similarity.json lacks (written by an older dporef)
                continue
            x, y = np.array(pts).T
            if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant has no correlation
                constant.append(f"{objective}: {measure}" if np.ptp(x) == 0 else f"{objective}: win rate")
                continue
            pearson = stats.pearsonr(x, y)
            interval = pearson.confidence_interval(0.95)
            line = stats.linregress(x, y)
            fits.append(
                {
                    "objective": objective,
                    "measure": measure,
                    "n": len(pts),
                    "r": float(pearson.statistic),
                    "r_lo": float(interval.low),
                    "r_hi": float(interval.high),
                    "p": float(pearson.pvalue),
                    "spearman": float(stats.spearmanr(x, y).statistic),
                    "slope": float(line.slope),
                    "intercept": float(line.intercept),
                }
            )
    return {
        "fits": fits,
        "too_few_references": short,
        "constant": sorted(set(constant)),
        "points": points,
    }


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def markdown(result: dict) -> str:
    """The fit as a results.md section: one row per (objective, measure)."""
    lines = [
        "\nDoes similarity predict the gain? Best win rate per reference (its beta chosen on validation) against "
        "each measure, over the fixed references:\n"
    ]
    if result["fits"]:
        lines += [
            "| objective | measure | n | Pearson r [95%] | p | Spearman rho | slope |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {f['objective']} | {f['measure']} | {f['n']} | {f['r']:.2f} [{f['r_lo']:.2f}, {f['r_hi']:.2f}] | "
            f"{f['p']:.3f} | {f['spearman']:.2f} | {f['slope']:.3g} |"
            for f in result["fits"]
        ]
        lines.append("\nAn interval that spans 0 is no evidence either way; r is over references, not over prompts.")
    if result["constant"]:
        lines.append(f"\nNot fitted, the same for every reference: {', '.join(result['constant'])}.")
    for objective, n in result["too_few_references"].items():
        lines.append(f"\n{objective}: {n} fixed references; a correlation with an interval needs {MIN_REFERENCES}.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path, title: str) -> bool:
    """Best win rate against each measure, one panel per measure, the references labelled and the fitted line drawn
    with r and its interval; False (nothing written) when there is no fit."""
    if not result["fits"]:
        return False
    plt = pyplot()
    measures = [m for m in COLUMNS if any(f["measure"] == m for f in result["fits"])]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures), 3.6), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for objective, rows in result["points"].items():
            rows = [r for r in rows if _finite(r.get(measure))]
            x, y = [r[measure] for r in rows], [r["win_rate"] for r in rows]
            has_interval = all(r.get("win_rate_lo") is not None for r in rows)
            err = [[r["win_rate"] - r["win_rate_lo"] for r in rows], [r["win_rate_hi"] - r["win_rate"] for r in rows]]
            ax.errorbar(x, y, yerr=err if has_interval else None, fmt="o", capsize=3, label=objective)
            for r in rows:
                ax.annotate(
                    r["reference"], (r[measure], r["win_rate"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
            f = next((f for f in result["fits"] if f["objective"] == objective and f["measure"] == measure), None)
            if f is not None:
                xs = np.linspace(min(x), max(x), 2)
                ax.plot(
                    xs,
                    f["intercept"] + f["slope"] * xs,
                    "--",
                    linewidth=1,
                    label=f"r = {f['r']:.2f} [{f['r_lo']:.2f}, {f['r_hi']:.2f}]",
                )
        ax.set_xlabel(LABELS[measure])
        ax.set_ylabel("best win rate vs SFT")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_png(fig, path)
    return True
