"""The length-controlled win rate (AlpacaEval 2's GLM) on constructed judgements."""

import numpy as np
import pytest

from dpo_ref.evaluation.length_controlled import lc_win_rate


def test_lc_is_near_half_when_length_alone_explains_the_raw_win_rate():
    rng = np.random.default_rng(0)
    base = rng.integers(20, 60, size=800)
    policy = base + rng.integers(-10, 40, size=800)  # the policy is longer on most prompts ...
    pref = np.where(policy > base, 1.0, np.where(policy == base, 0.5, 0.0))  # ... and the judge only likes length
    raw = pref.mean()
    assert raw > 0.7
    assert lc_win_rate(pref, policy, base) == pytest.approx(0.5, abs=0.05)


def test_lc_keeps_a_real_advantage_that_length_does_not_explain():
    rng = np.random.default_rng(1)
    base = rng.integers(20, 60, size=2000)
    policy = base + rng.integers(-20, 21, size=2000)  # no systematic length difference
    logit = 1.0 + 0.8 * np.tanh((policy - base) / (policy - base).std())  # quality edge theta = 1 plus length bias
    pref = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(float)
    assert lc_win_rate(pref, policy, base) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.04)


def test_equal_lengths_give_the_raw_win_rate():
    pref = np.array([1, 1, 0, 0.5, 1, 0, 1, 1.0])
    lengths = np.full(8, 10)
    assert lc_win_rate(pref, lengths, lengths) == pytest.approx(pref.mean(), abs=1e-3)  # up to the tiny ridge
