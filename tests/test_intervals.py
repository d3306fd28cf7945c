"""Intervals against cases with a known answer: a binomial proportion (Clopper-Pearson's published values), coverage
of a known distribution's mean, a paired difference, the LC win rate where lengths carry no information, and the
combination over seeds worked by hand."""

import math

import numpy as np
import pytest

from dpo_ref.evaluation.intervals import (
    binomial_interval,
    distinguishable,
    mean_interval,
    normal_interval,
    paired_difference_interval,
    win_rate_interval,
)
from dpo_ref.evaluation.length_controlled import lc_interval, lc_win_rate
from dpo_ref.reporting.tables import aggregate


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
    lo, hi = paired_difference_interval(a, b)
    assert lo < 0.2 < hi and distinguishable((lo, hi))
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
    assert (lo, hi) == pytest.approx(normal_interval(mean, se), abs=3e-3)


def test_the_interval_over_seeds_combines_the_runs_noise_and_their_spread():
    def run(seed, win_rate, lo, hi):
        return {"objective": "dpo", "reference": "sft", "beta": 0.1, "seed": seed, "status": "done",
                "win_rate": win_rate, "win_rate_lo": lo, "win_rate_hi": hi,
                **dict.fromkeys(["lc_win_rate", "val_win_rate", "reward", "length", "eos_rate", "kl",
                                 "rank_acc_reward", "rank_acc_policy"], 0.5)}  # fmt: skip

    z = 1.959963984540054
    # spread across seeds dominates: values 0.50 and 0.60 (s.d. 0.0707), each run's own half-width 0.02
    (row,) = aggregate([run(0, 0.50, 0.48, 0.52), run(1, 0.60, 0.58, 0.62)])
    se = 0.1 / math.sqrt(2) / math.sqrt(2)  # s.d. over seeds / sqrt(seeds)
    assert (row["win_rate_lo"], row["win_rate_hi"]) == pytest.approx((0.55 - z * se, 0.55 + z * se), abs=1e-12)
    # the runs' own noise dominates: equal values, half-widths 0.1 each
    (row,) = aggregate([run(0, 0.55, 0.45, 0.65), run(1, 0.55, 0.45, 0.65)])
    se = math.sqrt(2 * (0.1 / z) ** 2) / 2
    assert (row["win_rate_lo"], row["win_rate_hi"]) == pytest.approx((0.55 - z * se, 0.55 + z * se), abs=1e-12)
