"""The interval estimators (the statistics alone, on arrays; reporting/uncertainty.py applies them to a report's runs):
95% intervals for the numbers a study compares, over the evaluation prompts (scipy for the statistics).

Within one run: the exact (Clopper-Pearson) binomial interval for a win rate without ties, otherwise a BCa bootstrap
of the mean over prompts. Across the seeds of one setting (`crossed_mean`) and between settings (`crossed_difference`)
the per-prompt values form a prompts x seeds table: every seed is judged on the same prompts against the same baseline
samples, so prompt-level error is common to the seeds and the seeds are not independent replicates. The variance of a
mean is then sigma_prompt^2 / n + sigma_seed^2 / k + sigma_residual^2 / (n k): the spread of the seed means carries the
last two, the spread of the per-prompt seed means (less the residual) the first, and each part gets the t quantile of
its own degrees of freedom (few seeds: few degrees of freedom).
Comparing one setting with several others (`simultaneous_differences`) controls the family-wise error: one critical
value for all the comparisons, the 95% quantile of the largest of their t statistics (multivariate t with their
estimated correlation, as multcomp's single-step method; Hothorn, Bretz and Westfall 2008).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # the standard normal quantile of a two-sided CONFIDENCE interval
RESAMPLES = 2000
SEED = 0  # bootstrap intervals and the simultaneous critical value are reproducible
MAX_T_DRAWS = 40_000  # Monte Carlo draws behind a simultaneous critical value (its 95% quantile to about 0.01)


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


@dataclass(frozen=True)
class Estimate:
    """A mean (or a difference of means) and the parts of its variance, each with its degrees of freedom: the
    interval gives each part its own t quantile, value +- sqrt(sum of t(df_i)^2 * variance_i) (Graybill and Wang
    1980), so a between-seed part estimated from three seeds gets t with 2 df and a prompt part over 800 prompts z."""

    value: float
    parts: tuple[tuple[float, float], ...]  # (variance, degrees of freedom)

    @property
    def se(self) -> float:
        return float(np.sqrt(sum(v for v, _ in self.parts)))

    def half_width(self, confidence: float = CONFIDENCE) -> float:
        from scipy.stats import t

        return float(np.sqrt(sum(t.ppf(0.5 + confidence / 2, df) ** 2 * v for v, df in self.parts)))

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        half = self.half_width(confidence)
        return self.value - half, self.value + half

    @property
    def df(self) -> float:
        """The degrees of freedom of one t with the same 95% half-width (for the simultaneous critical value)."""
        from scipy.optimize import brentq
        from scipy.stats import t

        if self.se == 0:
            return float("inf")
        q = self.half_width() / self.se
        if q <= Z * (1 + 1e-9):
            return float("inf")
        return float(np.exp(brentq(lambda log_df: t.ppf(0.5 + CONFIDENCE / 2, np.exp(log_df)) - q, -10.0, 40.0)))


@dataclass(frozen=True)
class _Table:
    """One setting's seeds x prompts table, reduced to what the error of its mean needs."""

    prompt_means: np.ndarray  # per prompt, the mean over seeds
    seeds: int
    between_seeds: float  # variance of the seed means / seeds: seed effects and each seed's own sampling noise
    residual: float  # MS_residual / (n * seeds): the part of the prompt means' variance the seeds already carry


def _table(x) -> _Table:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    k, n = x.shape
    prompt_means = x.mean(axis=0)
    if k < 2:
        return _Table(prompt_means, 1, 0.0, 0.0)
    seed_means = x.mean(axis=1)
    residual = x - seed_means[:, None] - prompt_means[None, :] + x.mean()
    ms_residual = float(np.sum(residual**2)) / max((n - 1) * (k - 1), 1)
    return _Table(prompt_means, k, float(np.var(seed_means, ddof=1)) / k, ms_residual / (n * k))


def _estimate(value: float, prompt_values: np.ndarray, tables: list[_Table]) -> Estimate:
    """A mean over prompts of `prompt_values` (per-prompt seed means, or their difference between settings): the
    variance of its shared prompt part, var(prompt values) / n less what the seeds' own noise put there, plus the
    tables' between-seed variances (df seeds - 1; two settings' together by Welch and Satterthwaite). The prompt part
    keeps df n - 1: both of its mean squares rest on the n prompts, so its error is small next to the whole even when
    the part itself is. With one seed the prompt part is all."""
    n = len(prompt_values)
    replicated = [t for t in tables if t.seeds > 1]
    seeds = sum(t.between_seeds for t in replicated)
    pieces = sum(t.between_seeds**2 / (t.seeds - 1) for t in replicated)
    seed_parts = [(seeds, seeds**2 / pieces)] if pieces > 0 else []  # two settings' seeds: Welch's df
    if n < 2:
        return Estimate(value, tuple(seed_parts))
    prompt_part = float(np.var(prompt_values, ddof=1)) / n - sum(t.residual for t in replicated)
    return Estimate(value, ((max(prompt_part, 0.0), n - 1), *seed_parts))


def crossed_mean(x) -> Estimate:
    """The mean of a seeds x prompts table (one row for one seed): every seed is judged on the same prompts, so the
    prompt-level error is shared and the seeds' spread adds only their own part. With several seeds the variance is
    var(per-prompt seed means) / n + var(seed means) / k - MS_residual / (n k): each source counted once."""
    t = _table(x)
    return _estimate(float(t.prompt_means.mean()), t.prompt_means, [t])


def crossed_difference(a, b) -> Estimate:
    """mean(a) - mean(b) for two settings' seeds x prompts tables on the same prompts: paired over prompts (what the
    two share cancels), each setting's seeds a second level of its own."""
    ta, tb = _table(a), _table(b)
    d = ta.prompt_means - tb.prompt_means
    return _estimate(float(d.mean()), d, [ta, tb])


def simultaneous_differences(best, others: list, confidence: float = CONFIDENCE) -> tuple[list[Estimate], float]:
    """mean(best) - mean(other) for every other setting (seeds x prompts tables on the same prompts), and the one
    critical value c that makes the intervals d +- c * se hold together at `confidence`: the chance that any of them
    misses its difference is at most 1 - confidence. c is the `confidence` quantile of max |T_j|, T multivariate t
    with the differences' correlation (they share `best`, and each pair shares the prompts) and the smallest of their
    degrees of freedom, by seeded Monte Carlo. A difference without error (two identical settings) takes no part."""
    estimates = [crossed_difference(best, other) for other in others]
    varying = [i for i, e in enumerate(estimates) if e.se > 0]
    if not varying:
        return estimates, 0.0
    tb, tables = _table(best), [_table(others[i]) for i in varying]
    diffs = np.array([tb.prompt_means - t.prompt_means for t in tables])
    m, n = diffs.shape
    cov = np.cov(diffs, ddof=1).reshape(m, m) / n if n > 1 else np.zeros((m, m))
    cov = cov + tb.between_seeds + np.diag([t.between_seeds for t in tables])  # for the correlation only
    se = np.sqrt(np.diag(cov))
    eigval, eigvec = np.linalg.eigh(cov / np.outer(se, se))
    df = min(estimates[i].df for i in varying)
    rng = np.random.default_rng(SEED)
    normal = rng.standard_normal((MAX_T_DRAWS, m)) @ (eigvec * np.sqrt(np.clip(eigval, 0, None))).T
    scale = np.sqrt(rng.chisquare(df, MAX_T_DRAWS) / df) if np.isfinite(df) else 1.0
    scale = np.maximum(scale, np.finfo(np.float64).tiny)
    return estimates, float(np.quantile(np.abs(normal).max(axis=1) / scale, confidence))
