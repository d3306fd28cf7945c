"""Evaluation metrics against hand computations and a distribution whose KL is known exactly."""

import math

import numpy as np
import pytest

from dpo_ref.evaluation.metrics import kl_estimates, mean_se, preference, ranking_accuracy

# a categorical policy p and reference q over six outcomes: KL(p || q) is a finite sum
P = [0.40, 0.25, 0.15, 0.10, 0.06, 0.04]
Q = [0.10, 0.20, 0.30, 0.20, 0.10, 0.10]
KL_PQ = sum(p * math.log(p / q) for p, q in zip(P, Q))


def test_exact_kl_of_the_test_distribution():
    # written out term by term, so the constant the estimators are held to is itself checked
    terms = [0.4 * math.log(4), 0.25 * math.log(1.25), 0.15 * math.log(0.5), 0.1 * math.log(0.5)]
    terms += [0.06 * math.log(0.6), 0.04 * math.log(0.4)]
    assert KL_PQ == pytest.approx(sum(terms), abs=1e-15)
    assert KL_PQ == pytest.approx(0.3697157, abs=1e-7)  # 0.5545 + 0.0558 - 0.1040 - 0.0693 - 0.0306 - 0.0367


def test_k1_and_k3_estimate_the_exact_kl_from_samples_of_the_policy():
    n = 20_000
    y = np.random.default_rng(0).choice(len(P), size=n, p=P)  # y ~ p, as the policy's own samples
    est = kl_estimates(np.log(P)[y], np.log(Q)[y])
    # both estimators are unbiased: within 4 standard errors of the exact value
    assert abs(est["kl"] - KL_PQ) < 4 * est["kl_se"]
    assert abs(est["kl_k3"] - KL_PQ) < 4 * est["kl_k3_se"]
    # and the standard errors are those of the estimators' exact distributions (s.d. by summation over outcomes)
    l = [math.log(p / q) for p, q in zip(P, Q)]  # noqa: E741
    k3 = [math.exp(-x) - 1 + x for x in l]
    sd1 = math.sqrt(sum(p * x * x for p, x in zip(P, l)) - KL_PQ**2)
    mean3 = sum(p * x for p, x in zip(P, k3))
    assert mean3 == pytest.approx(KL_PQ, abs=1e-12)  # E_p[q/p] = 1, so E_p[k3] = KL exactly
    sd3 = math.sqrt(sum(p * (x - mean3) ** 2 for p, x in zip(P, k3)))
    assert est["kl_se"] * math.sqrt(n) == pytest.approx(sd1, rel=0.05)
    assert est["kl_k3_se"] * math.sqrt(n) == pytest.approx(sd3, rel=0.05)
    assert est["kl_k3_se"] < est["kl_se"]  # k3's point: lower variance here
    # samples drawn from the reference instead would not estimate KL(p || q): the test can tell
    wrong = np.random.default_rng(0).choice(len(Q), size=n, p=Q)
    off = kl_estimates(np.log(P)[wrong], np.log(Q)[wrong])
    assert abs(off["kl"] - KL_PQ) > 10 * off["kl_se"]


@pytest.mark.parametrize("outcome", range(len(P)))
def test_k3_is_nonnegative_per_sample_while_k1_is_not(outcome):
    one = kl_estimates([math.log(P[outcome])], [math.log(Q[outcome])])
    ratio = Q[outcome] / P[outcome]
    assert one["kl"] == pytest.approx(-math.log(ratio), abs=1e-12)
    assert one["kl_k3"] == pytest.approx(ratio - 1 - math.log(ratio), abs=1e-12)
    assert one["kl_k3"] >= 0
    assert one["kl_se"] == 0 and one["kl_k3_se"] == 0  # a single sample has no spread to estimate
    if P[outcome] < Q[outcome]:
        assert one["kl"] < 0


def test_kl_estimates_by_hand():
    # log-ratios 0, 1, 2: k1 = 1, s.d. 1, s.e. 1/sqrt(3); k3 = [0, e^-1, e^-2 + 1]
    est = kl_estimates([-1.0, 0.0, 1.0], [-1.0, -1.0, -1.0])
    assert est["kl"] == pytest.approx(1.0, abs=1e-12)
    assert est["kl_se"] == pytest.approx(1 / math.sqrt(3), abs=1e-12)
    k3 = [0.0, math.exp(-1), math.exp(-2) + 1]
    mean = sum(k3) / 3
    assert est["kl_k3"] == pytest.approx(mean, abs=1e-12)
    sd = math.sqrt(sum((x - mean) ** 2 for x in k3) / 2)
    assert est["kl_k3_se"] == pytest.approx(sd / math.sqrt(3), abs=1e-12)


def test_mean_se_by_hand():
    # mean 2.5; sample variance ((1.5^2 + 0.5^2) * 2) / 3 = 5/3; s.e. sqrt(5/3) / sqrt(4)
    m, se = mean_se([1, 2, 3, 4])
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2, abs=1e-12)
    assert se == pytest.approx(0.6454972, abs=1e-7)
    m, se = mean_se([1.0, 0.0, 0.5, 0.5, 1.0])  # win/loss/tie preferences: mean 0.6, variance 0.175
    assert m == pytest.approx(0.6, abs=1e-12) and se == pytest.approx(math.sqrt(0.175 / 5), abs=1e-12)
    assert mean_se([0.7]) == (0.7, 0.0)


def test_preference_wins_ties_losses():
    assert preference([0.3, 0.5, 0.7, -1.0], [0.5, 0.5, 0.5, -2.0]).tolist() == [0.0, 0.5, 1.0, 1.0]


def test_ranking_accuracy_counts_ties_as_half():
    # wins, tie, loss, win: (1 + 0.5 + 0 + 1) / 4
    assert ranking_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 5.0, -1.0]) == 0.625
    assert ranking_accuracy([-3.0, -3.0], [-3.0, -3.0]) == 0.5
    assert ranking_accuracy([-9.0, -8.0, -7.0], [-1.0, -2.0, -3.0]) == 0.0
