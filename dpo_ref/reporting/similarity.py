"""Does a reference's similarity to the policy predict what it is worth, beyond its strength? The best win rate DPO
reaches against each reference (its beta chosen on validation prompts) is fitted, for each similarity measure, on that
measure and the reference's strength together: across a family of references the stronger ones are also the less
alike, so a correlation with similarity alone can be strength's. The similarity measures are several tests of one
question, so their p-values are Holm-adjusted per objective (the paper's RQ3 finding, Liu, Liu and Cohan, arXiv
2407.13709, Table 5, names no measure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from ..evaluation.estimators import Z
from .plots import pyplot, save_png

SIMILARITY_MEASURES = ["sft_ref_kl", "token_log_ratio", "token_logp_corr"]
STRENGTH = "strength"  # the second regressor of every similarity fit
STRENGTH_MEASURES = [STRENGTH, "ref_pref_acc"]
COLUMNS = ["sft_ref_kl", "sft_ref_kl_k3", "token_log_ratio", "token_logp_corr", "strength", "ref_pref_acc"]
NOTE = (
    "Similarity of each reference to the SFT policy before training: sft_ref_kl = KL(SFT || ref) estimated on the "
    "SFT policy's own samples at temperature 1 on the test prompts by k1 (the mean log-ratio; the measure fitted), "
    "sft_ref_kl_k3 by k3 (runs low when the samples miss the heavy tail; sample count and standard errors in "
    "results.json); on the training pairs, per policy token (a response's log-prob divided by its length in the "
    "policy's tokens, so that length drives neither): token_log_ratio = mean log p_sft(y|x) - log p_ref(y|x) (not a "
    "KL: the pairs are not plain samples of the SFT policy), token_logp_corr = correlation of the two models' "
    "per-token log-probs. Strength, not similarity: strength = the reference's own win rate against the SFT baseline "
    "(its samples on the test prompts, same judge and sampling); ref_pref_acc = pairs where the reference alone "
    "prefers the chosen response."
)
LABELS = {
    "sft_ref_kl": "KL(SFT || ref), k1",
    "token_log_ratio": "per-token log p_sft - log p_ref (pairs)",
    "token_logp_corr": "corr. of per-token log-probs (pairs)",
    "strength": "reference's win rate vs SFT",
    "ref_pref_acc": "reference's own pair accuracy",
}
ALPHA = 0.05
MIN_REFERENCES = 5  # the partial correlation's interval (Fisher's z, standard error 1/sqrt(n - 4)) needs n > 4


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
    """Per objective with at least MIN_REFERENCES fixed references: for each similarity measure, the best win rate's
    least-squares fit on it and strength together, the partial correlation given strength, and the simple Pearson
    fit, with Holm-adjusted p-values across the similarity measures; for each strength measure, the simple fit.
    `too_few_references` names the objectives with fewer, `not_fitted` the measures no fit can separate."""
    fits, strength_fits, short, not_fitted = [], [], {}, []
    points = _points(best, similarity)
    for objective, rows in points.items():
        if len(rows) < MIN_REFERENCES:
            short[objective] = len(rows)
            continue
        for measure in STRENGTH_MEASURES:
            x, win = _finite_columns(rows, measure, "win_rate")
            if len(win) < MIN_REFERENCES:  # a measure this similarity.json lacks (written by an older dporef)
                continue
            if np.ptp(x) == 0 or np.ptp(win) == 0:
                not_fitted.append(f"{objective}: {measure if np.ptp(x) == 0 else 'win rate'} (the same throughout)")
                continue
            strength_fits.append({"objective": objective, "measure": measure, "n": len(win), **_simple(x, win)})
        tested = []
        for measure in SIMILARITY_MEASURES:
            x, strength, win = _finite_columns(rows, measure, STRENGTH, "win_rate")
            if len(win) < MIN_REFERENCES:
                continue
            design = np.column_stack([np.ones_like(x), x, strength])
            if np.ptp(win) == 0:
                not_fitted.append(f"{objective}: win rate (the same throughout)")
                continue
            if np.linalg.matrix_rank(design) < 3:
                not_fitted.append(f"{objective}: {measure} (constant, or a line in strength: inseparable from it)")
                continue
            fitted = {"objective": objective, "measure": measure, "n": len(win), **_simple(x, win)}
            tested.append(fitted | _given_strength(design, win))
        for key in ("p", "partial_p"):
            for f, adjusted in zip(tested, holm([f[key] for f in tested])):
                f[f"{key}_holm"] = adjusted
        fits += [f | {"survives_holm": f["partial_p_holm"] < ALPHA} for f in tested]
    return {
        "fits": fits,
        "strength_fits": strength_fits,
        "alpha": ALPHA,
        "too_few_references": short,
        "not_fitted": sorted(set(not_fitted)),
        "points": points,
    }


def _finite_columns(rows: list[dict], *keys: str) -> list[np.ndarray]:
    """One array per key, over the rows where every key holds a finite number."""
    kept = [[r[k] for k in keys] for r in rows if all(_finite(r.get(k)) for k in keys)]
    return list(np.array(kept, dtype=np.float64).reshape(-1, len(keys)).T)


def _simple(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson's r (95% interval by Fisher's z), Spearman's rho and the least-squares line of y on x alone."""
    pearson = stats.pearsonr(x, y)
    interval = pearson.confidence_interval(0.95)
    line = stats.linregress(x, y)
    return {
        "r": float(pearson.statistic),
        "r_lo": float(interval.low),
        "r_hi": float(interval.high),
        "p": float(pearson.pvalue),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "slope": float(line.slope),
        "intercept": float(line.intercept),
    }


def _given_strength(design: np.ndarray, win: np.ndarray) -> dict:
    """win ~ intercept + similarity + strength (`design`'s columns) by least squares, each slope with its 95% interval
    (t with n - 3 df); and the partial correlation of win and similarity given strength, from the pairwise
    correlations, with its interval by Fisher's z (standard error 1/sqrt(n - 4)). The similarity slope's t-test is
    the partial correlation's, so `partial_p` serves both."""
    n = len(win)
    coef, *_ = np.linalg.lstsq(design, win, rcond=None)
    df = n - 3
    residual_var = float(np.sum((win - design @ coef) ** 2)) / df
    se = np.sqrt(residual_var * np.diag(np.linalg.inv(design.T @ design)))
    half = stats.t.ppf(0.975, df) * se
    r = np.corrcoef([win, design[:, 1], design[:, 2]])
    partial = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    z, z_half = np.arctanh(partial), Z / math.sqrt(n - 4)  # a perfect fit (partial = +-1) gives [+-1, +-1]
    return {
        "coef_similarity": float(coef[1]),
        "coef_similarity_lo": float(coef[1] - half[1]),
        "coef_similarity_hi": float(coef[1] + half[1]),
        "coef_strength": float(coef[2]),
        "coef_strength_lo": float(coef[2] - half[2]),
        "coef_strength_hi": float(coef[2] + half[2]),
        "coef_intercept": float(coef[0]),
        "partial_r": float(partial),
        "partial_r_lo": float(np.tanh(z - z_half)),
        "partial_r_hi": float(np.tanh(z + z_half)),
        "partial_p": float(2 * stats.t.sf(abs(coef[1] / se[1]), df)),
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: reading the adjusted p-values at a level keeps the chance of any false finding
    among the tests under it, whatever their dependence (the similarity measures are far from independent)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return adjusted.tolist()


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _interval(value: float, lo: float, hi: float, spec: str = ".2f") -> str:
    return f"{value:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def markdown(result: dict) -> str:
    """The fits as a results.md section: one row per (objective, similarity measure), then the strength measures."""
    lines = [
        "\nDoes similarity predict the gain? Best win rate per reference (its beta chosen on validation) over the "
        "fixed references, fitted on each similarity measure and the reference's strength together (stronger "
        "references can also be the less alike); p and its Holm adjustment (across the similarity measures, per "
        "objective) test the similarity slope given strength, r alone ignores strength:\n"
    ]
    if result["fits"]:
        lines += [
            "| objective | measure | n | similarity slope [95%] | strength slope [95%] | "
            "partial r given strength [95%] | p | Holm p | r alone [95%] | Holm p, r alone |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {f['objective']} | {f['measure']} | {f['n']} | "
            f"{_interval(f['coef_similarity'], f['coef_similarity_lo'], f['coef_similarity_hi'], '.3g')} | "
            f"{_interval(f['coef_strength'], f['coef_strength_lo'], f['coef_strength_hi'], '.3g')} | "
            f"{_interval(f['partial_r'], f['partial_r_lo'], f['partial_r_hi'])} | {f['partial_p']:.3f} | "
            f"{f['partial_p_holm']:.3f} | {_interval(f['r'], f['r_lo'], f['r_hi'])} | {f['p_holm']:.3f} |"
            for f in result["fits"]
        ]
        surviving = [f"{f['objective']}: {f['measure']}" for f in result["fits"] if f["survives_holm"]]
        lines.append(
            f"\nSimilarity slopes that survive Holm's correction at {result['alpha']:.0%}, given strength: "
            f"{', '.join(surviving) or 'none'}. An interval that spans 0 is no evidence either way; the fits are over "
            "references, not over prompts."
        )
    if result["strength_fits"]:
        lines += [
            "\nStrength alone (not similarity; not corrected):\n",
            "| objective | measure | n | Pearson r [95%] | p | Spearman rho | slope |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {f['objective']} | {f['measure']} | {f['n']} | {_interval(f['r'], f['r_lo'], f['r_hi'])} | "
            f"{f['p']:.3f} | {f['spearman']:.2f} | {f['slope']:.3g} |"
            for f in result["strength_fits"]
        ]
    if result["not_fitted"]:
        lines.append(f"\nNot fitted: {'; '.join(result['not_fitted'])}.")
    for objective, n in result["too_few_references"].items():
        lines.append(
            f"\n{objective}: {n} fixed references; a fit on similarity and strength with an interval on the partial "
            f"correlation needs {MIN_REFERENCES}."
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path, title: str) -> bool:
    """One panel per measure, the references labelled. A similarity panel is the added-variable plot: win rate and
    the measure each with strength's linear part removed, so that its line's slope is the similarity slope given
    strength; a strength panel is the plain scatter and line. False (nothing written) when there is no fit."""
    kinds = [("fits", SIMILARITY_MEASURES), ("strength_fits", STRENGTH_MEASURES)]
    panels = [(m, kind) for kind, measures in kinds for m in measures if any(f["measure"] == m for f in result[kind])]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (measure, kind) in zip(axes[0], panels):
        for objective, rows in result["points"].items():
            f = next((f for f in result[kind] if f["objective"] == objective and f["measure"] == measure), None)
            if f is None:
                continue
            if kind == "fits":
                rows = [r for r in rows if all(_finite(r.get(k)) for k in (measure, STRENGTH, "win_rate"))]
                x, y = _beyond_strength(rows, measure), _beyond_strength(rows, "win_rate")
                xs, line = np.linspace(min(x), max(x), 2), f"partial r = {_interval(*_keys(f, 'partial_r'))}"
                ys = f["coef_similarity"] * xs
            else:
                rows = [r for r in rows if _finite(r.get(measure)) and _finite(r.get("win_rate"))]
                x, y = np.array([r[measure] for r in rows]), np.array([r["win_rate"] for r in rows])
                xs, line = np.linspace(min(x), max(x), 2), f"r = {_interval(*_keys(f, 'r'))}"
                ys = f["intercept"] + f["slope"] * xs
            err = None
            if all(r.get("win_rate_lo") is not None for r in rows):
                err = [
                    [r["win_rate"] - r["win_rate_lo"] for r in rows],
                    [r["win_rate_hi"] - r["win_rate"] for r in rows],
                ]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=objective)
            for r, px, py in zip(rows, x, y):
                ax.annotate(r["reference"], (px, py), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.plot(xs, ys, "--", linewidth=1, label=line)
        beyond = "\n(beyond strength)" if kind == "fits" else ""
        ax.set_xlabel(LABELS[measure] + beyond)
        ax.set_ylabel("best win rate vs SFT" + beyond)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_png(fig, path)
    return True


def _keys(f: dict, name: str) -> tuple[float, float, float]:
    return f[name], f[f"{name}_lo"], f[f"{name}_hi"]


def _beyond_strength(rows: list[dict], key: str) -> np.ndarray:
    """The residuals of `key` after its least-squares line on strength, over `rows`."""
    values, strength = np.array([r[key] for r in rows]), np.array([r[STRENGTH] for r in rows])
    design = np.column_stack([np.ones_like(strength), strength])
    return values - design @ np.linalg.lstsq(design, values, rcond=None)[0]
