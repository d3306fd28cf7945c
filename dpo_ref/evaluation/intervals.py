"""95% intervals for the numbers a study compares, over the evaluation prompts (scipy for the statistics).

Within one run: the exact (Clopper-Pearson) binomial interval for a win rate without ties, otherwise a BCa bootstrap
of the mean over prompts. Two runs judged on the same prompts against the same baseline samples: a paired bootstrap
of the per-prompt difference, much narrower than two separate intervals when the runs agree on hard prompts. (Across
seeds, reporting/tables.py combines the runs' intervals with the spread between seeds.)
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # the standard normal quantile of a two-sided CONFIDENCE interval
RESAMPLES = 2000
SEED = 0  # bootstrap intervals are reproducible


def mean_interval(x) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of `x` (a constant sample: that constant)."""
    from scipy.stats import bootstrap

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(x.mean()), float(x.mean())
    res = bootstrap((x,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, random_state=SEED)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def binomial_interval(successes: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def win_rate_interval(preferences) -> tuple[float, float]:
    """A win rate's interval: exact binomial when every preference is a win or a loss, else (ties count half, or
    a reward model's soft preferences) the bootstrap of their mean."""
    p = np.asarray(preferences, dtype=np.float64)
    if np.isin(p, (0.0, 1.0)).all():
        return binomial_interval(int(p.sum()), len(p))
    return mean_interval(p)


def paired_difference_interval(a, b) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) for per-prompt values of two runs on the same prompts."""
    return mean_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def normal_interval(mean: float, se: float) -> tuple[float, float]:
    """mean +- z * se, for a mean whose standard error is all that was kept (the KL estimates)."""
    return mean - Z * se, mean + Z * se


def distinguishable(interval: tuple[float, float]) -> bool:
    """Whether a difference's interval excludes zero."""
    return interval[0] > 0 or interval[1] < 0
