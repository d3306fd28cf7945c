"""Intervals against cases with a known answer: a binomial proportion (Clopper-Pearson's published values), coverage
of a known distribution's mean, a paired difference, and the LC win rate where lengths carry no information. (Seeds,
and comparisons of many settings: tests/test_selection.py.)"""

import math

import numpy as np
import pytest

from dpo_ref.evaluation.estimators import Z, binomial_interval, crossed_difference, mean_interval, win_rate_interval
from dpo_ref.evaluation.lc_minimal import lc_interval, lc_win_rate


def test_clopper_pearson_values():
    # 7 of 10 and 0 of 20: exact 95% intervals as tabulated (e.g. Agresti & Coull 1998: [0.348, 0.933]; 0 / n:
    # [0, 1 - 0.025 ** (1 / n)])
    assert binomial_interval(7, 10) == pytest.approx((0.34755, 0.93326), abs=1e-5)
    assert binomial_interval(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)), abs=1e-9)
    assert win_rate_interval([1, 1, 1, 0, 1, 0, 1, 1, 0, 1]) == binomial_interval(7, 10)  # no ties: exact


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        x = rng.choice([0.0, 0.5, 1.0], size=120, p=[0.3, 0.2, 0.5])  # mean 0.6, with ties
        lo, hi = win_rate_interval(x)
        hits += lo <= 0.6 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_paired_difference_is_narrower_than_separate_intervals_and_covers_the_truth():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0, 1, 300)  # shared by both runs: what pairing removes
    a = difficulty + rng.normal(0.2, 0.3, 300)
    b = difficulty + rng.normal(0.0, 0.3, 300)
    lo, hi = crossed_difference(a, b).interval()  # one seed each: the paired t interval over prompts
    assert lo < 0.2 < hi and lo > 0
    (alo, ahi), (blo, bhi) = mean_interval(a), mean_interval(b)
    assert hi - lo < 0.5 * ((ahi - alo) + (bhi - blo))


def test_lc_interval_without_length_information_is_the_mean_preferences_interval():
    rng = np.random.default_rng(3)
    q = rng.choice([0.0, 0.5, 1.0], size=400, p=[0.35, 0.1, 0.55])
    lengths = np.full(400, 7)
    lo, hi = lc_interval(q, lengths, lengths)
    # equal lengths: the GLM is the mean preference on the logit scale; its robust s.e. is the mean's s.e. mapped
    # through the sigmoid's derivative (delta method)
    mean, se = q.mean(), q.std(ddof=0) / math.sqrt(len(q))
    assert lc_win_rate(q, lengths, lengths) == pytest.approx(mean, abs=2e-3)
    assert (lo, hi) == pytest.approx((mean - Z * se, mean + Z * se), abs=3e-3)
