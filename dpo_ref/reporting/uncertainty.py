"""A report's uncertainty: 95% intervals on its numbers, and which settings the best one cannot be told apart from
(evaluation/estimators.py's estimators, applied to the runs' files).

Read from the files the runs wrote (their judged samples in generations.jsonl and validation.jsonl, their validation
pairs in ranking.jsonl, the SFT baseline's samples in baseline/), so a report rebuilt from older runs shows them too.
Every number is a mean over items (prompts, or validation pairs): per run, the exact binomial interval of a share
without ties, else a BCa bootstrap, and AlpacaEval's GLM interval for the LC win rate; per setting with several seeds,
the seeds x items table's interval (evaluation/estimators.py), since the seeds share the items and the baseline
samples. The best setting is chosen by the validation rule, never on the test prompts, and compared with every other
on the test prompts with one family-wise error for the whole comparison.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.estimators import (
    CONFIDENCE,
    crossed_mean,
    mean_interval,
    simultaneous_differences,
    win_rate_interval,
)
from ..evaluation.judges import RewardModelJudge, RuleJudge
from ..evaluation.lc_minimal import LcFit, sigmoid
from ..evaluation.metrics import preference
from ..expdir import EVALUATED, ExperimentDir, baseline_rows, run_rows
from .plots import setting_label

# metrics whose run interval is a share's (exact when every item is 0 or 1); the others' is a mean's (or the LC's)
SHARES = ("win_rate", "val_win_rate", "eos_rate", "rank_acc_reward", "rank_acc_policy")
METRICS = ("win_rate", "lc_win_rate", "val_win_rate", "reward", "length", "eos_rate", "kl", "kl_sft")
METRICS += ("rank_acc_reward", "rank_acc_policy")
INTERVAL_COLUMNS = [f"{m}_{end}" for m in METRICS for end in ("lo", "hi")]
SETTING = ("run_id", "objective", "reference", "beta", "seed")  # what a row says of its run besides its numbers
AGREE = 1e-6  # relative: a run's number and the mean of its items, computed apart, agree to this
BEST_RULE = (
    "the highest mean win rate on the validation prompts (the validation pairs' prompts, judged like the test "
    "prompts); the held-out test prompts never take part in the choice, and a degenerate setting is never best"
)


def per_item(exp_dir: ExperimentDir, run_id: str, judge_kind: str) -> dict[str, np.ndarray] | None:
    """A run's values item by item, one array per metric whose mean the metric is (the LC win rate: its GLM's
    pseudo-values, and `lc` the fit behind them and its interval); None when the files are missing or not as written
    (the checksums of status.json and of the baselines' meta files), or its samples and the baseline's are not on the
    same prompts."""
    run = exp_dir.run(run_id)
    try:
        gens, val, pairs = (run_rows(run, name) for name in ("generations", "validation", "ranking"))
        base, val_base = (baseline_rows(exp_dir, name) for name in ("test", "validation"))
        if [g["prompt"] for g in gens] != [b["prompt"] for b in base]:
            return None
        if [g["prompt"] for g in val] != [b["prompt"] for b in val_base]:
            return None
        prefer = RewardModelJudge.preferences if judge_kind == "reward-model" else RuleJudge.preferences
        prefs = prefer([g["reward"] for g in gens], [b["reward"] for b in base])
        lengths = np.array([g["length"] for g in gens], dtype=np.float64)
        base_lengths = np.array([b["length"] for b in base], dtype=np.float64)
        column = lambda rows, key: np.array([r[key] for r in rows], dtype=np.float64)  # noqa: E731
        with np.errstate(all="ignore"):
            lc = LcFit.of(prefs, lengths, base_lengths)
            return {
                "win_rate": prefs,
                "lc_win_rate": lc.pseudo_values(),
                "val_win_rate": prefer([g["reward"] for g in val], [b["reward"] for b in val_base]),
                "reward": column(gens, "reward"),
                "length": lengths,
                "eos_rate": column(gens, "ended"),
                "kl": column(gens, "kl_log_ratio"),
                "kl_sft": column(gens, "kl_sft_log_ratio"),
                "rank_acc_reward": preference(column(pairs, "reward_chosen"), column(pairs, "reward_rejected")),
                "rank_acc_policy": preference(column(pairs, "logp_chosen"), column(pairs, "logp_rejected")),
                "lc": lc,
            }
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError, np.linalg.LinAlgError):
        return None


def estimate(items: dict, metric: str) -> float:
    """What a run's `metric` is from its items: their mean, or for the LC win rate its GLM's fitted value (the
    evaluation's `lc_win_rate`), which its pseudo-values' mean only approximates."""
    if metric != "lc_win_rate":
        return float(np.mean(items[metric]))
    lc = items["lc"]
    return float(np.mean(lc.q)) if lc.w is None else float(sigmoid(lc.w[1]))


def _same(value: float, expected: float) -> bool:
    """Equal up to the rounding of summing the same numbers in another order (NaN equals NaN)."""
    return (
        value == expected
        or (np.isnan(value) and np.isnan(expected))
        or abs(value - expected) <= AGREE * max(1.0, abs(expected))
    )


def disagreement(row: dict, items: dict) -> str | None:
    """Why a run's numbers (metrics.json) are not those of its samples (its other files), or None: files that passed
    their checksums yet disagree (edited together) are damaged too; no interval is put beside a number it may not
    hold."""
    for metric in METRICS:
        value, expected = row[metric], estimate(items, metric)
        if not _same(value, expected):
            return f"metrics.json's {metric} ({value:.6g}) is not what its samples give ({expected:.6g})"
    return None


def damaged(row: dict, reason: str) -> None:
    """Show `row` as damaged, with `reason`: its setting stays, every number goes (as `tables.collect` shows one)."""
    for key in row:
        if key not in SETTING:
            row[key] = None
    row["status"], row["damage"] = "damaged", reason


def run_interval(items: dict, metric: str) -> tuple[float, float]:
    """One run's 95% interval of `metric` over its items."""
    if metric == "lc_win_rate":
        return items["lc"].interval()
    return (win_rate_interval if metric in SHARES else mean_interval)(items[metric])


def _interval(items: dict, metric: str, value: float) -> tuple[float | None, float | None]:
    """`run_interval`, or (None, None) where there is none to show: items that are not all finite, an estimator that
    fails on them, or an interval that does not hold the run's number (error bars cannot point inwards)."""
    try:
        with np.errstate(all="ignore"):
            lo, hi = run_interval(items, metric) if np.isfinite(items[metric]).all() else (np.nan, np.nan)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):
        return None, None
    ok = np.isfinite([lo, hi]).all() and lo - AGREE <= value <= hi + AGREE
    return (float(lo), float(hi)) if ok else (None, None)


def add_run_intervals(exp_dir: ExperimentDir, rows: list[dict], judge_kind: str) -> dict[str, dict]:
    """Fill each finished row's `<metric>_lo` / `<metric>_hi`; returns the items of every run that has them. A run
    whose numbers disagree with its samples is shown as damaged (`disagreement`)."""
    samples = {}
    for row in rows:
        items = per_item(exp_dir, row["run_id"], judge_kind) if row["status"] in EVALUATED else None
        if items is None:
            continue
        problem = disagreement(row, items)
        if problem:
            damaged(row, problem)
            continue
        samples[row["run_id"]] = items
        for metric in METRICS:
            row[f"{metric}_lo"], row[f"{metric}_hi"] = _interval(items, metric, row[metric])
    return samples


def setting_key(row: dict) -> tuple:
    return row["objective"], row["reference"], row["beta"]


def group_settings(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Finished runs grouped by setting (objective, reference, beta) across seeds, in grid order; degenerate runs
    keep their numbers, marked as such."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] in EVALUATED:
            out.setdefault(setting_key(r), []).append(r)
    return out


def _settings(rows: list[dict], samples: dict) -> dict[tuple, list[dict]]:
    """`group_settings` of the runs whose items were read."""
    return group_settings([r for r in rows if r["run_id"] in samples])


def setting_intervals(rows: list[dict], samples: dict, metrics: tuple[str, ...] = METRICS) -> dict[tuple, dict]:
    """Per setting, the 95% interval of each metric's mean over its seeds: one seed, its run's interval; several,
    centred on the mean of the runs' values, the half-width of the seeds x items table (`crossed_mean`)."""
    out = {}
    for key, runs in _settings(rows, samples).items():
        bounds = {}
        for metric in metrics:
            if len(runs) == 1:
                bounds |= {f"{metric}_{e}": runs[0].get(f"{metric}_{e}") for e in ("lo", "hi")}
                continue
            table = [samples[r["run_id"]][metric] for r in runs]
            if len({len(t) for t in table}) > 1 or not all(np.isfinite(t).all() for t in table):
                continue  # not on the same items (an edited run), or not all numbers: no joint interval
            centre, half = float(np.mean([r[metric] for r in runs])), crossed_mean(table).half_width(CONFIDENCE)
            if np.isfinite([centre, half]).all():
                bounds |= {f"{metric}_lo": centre - half, f"{metric}_hi": centre + half}
        out[key] = bounds
    return out


def name(key: tuple) -> str:
    return f"{setting_label({'objective': key[0], 'reference': key[1]})} beta {key[2]:g}"


def indistinguishable(rows: list[dict], samples: dict) -> dict | None:
    """The trained setting best by the validation rule (BEST_RULE) and, on the test prompts, its win rate minus
    every other's with simultaneous 95% intervals (paired over prompts, seeds a second level; one critical value for
    the whole family, so the chance that any setting is called different when none is stays at most 5%). A setting
    is indistinguishable from the best when its interval includes 0. Degenerate settings take no part."""
    settings = {k: runs for k, runs in _settings(rows, samples).items() if k[2] is not None}
    degenerate = sorted(k for k, runs in settings.items() if any(r["status"] == "degenerate" for r in runs))
    valid = {k: runs for k, runs in settings.items() if k not in degenerate}
    valid = {k: runs for k, runs in valid.items() if all(r.get("val_win_rate") is not None for r in runs)}
    if len(valid) < 2:
        return None
    val = {k: float(np.mean([r["val_win_rate"] for r in runs])) for k, runs in valid.items()}
    best = max(valid, key=lambda k: val[k])
    others = [k for k in valid if k != best]
    table = {k: [samples[r["run_id"]]["win_rate"] for r in runs] for k, runs in valid.items()}
    estimates, critical = simultaneous_differences(table[best], [table[k] for k in others])
    bounds = {k: (e.value - critical * e.se, e.value + critical * e.se) for k, e in zip(others, estimates)}
    same = [k for k in others if bounds[k][0] <= 0 <= bounds[k][1]]
    return {
        "rule": BEST_RULE,
        "best": name(best),
        "best_key": list(best),
        "best_val_win_rate": val[best],
        "indistinguishable": [name(k) for k in same],
        "indistinguishable_keys": [list(k) for k in same],  # (objective, reference, beta), as in the tables
        "worse": [name(k) for k in others if bounds[k][0] > 0],
        "better": [name(k) for k in others if bounds[k][1] < 0],  # better on test than the validation's choice
        "differences": {name(k): list(bounds[k]) for k in others},  # best minus each: simultaneous 95% interval
        "estimates": {name(k): e.value for k, e in zip(others, estimates)},
        "critical_value": critical,  # the multiplier of each difference's standard error
        "comparisons": len(others),
        "left_out_degenerate": [name(k) for k in degenerate],
    }


def describe(result: dict | None) -> str:
    """The markdown/terminal lines saying which settings are distinguishable from the best."""
    if result is None:
        return ""
    same = ", ".join(result["indistinguishable"]) or "none"
    text = (
        f"\nBest setting by the validation rule: {result['best']} (validation win rate "
        f"{result['best_val_win_rate']:.3f}). On the test prompts, not distinguishable from it: {same} "
        f"(simultaneous 95% intervals of the per-prompt win-rate difference over {result['comparisons']} "
        f"comparisons, family-wise error 5%; paired over prompts, seeds as a second level)."
    )
    if result["better"]:
        text += f" Better on the test prompts than the validation's choice: {', '.join(result['better'])}."
    if result["left_out_degenerate"]:
        text += f" Left out as degenerate: {', '.join(result['left_out_degenerate'])}."
    return text + "\n"
