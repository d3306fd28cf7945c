"""The LC win rate's interval and pseudo-values against their definitions: a sandwich computed here by hand with plain
numpy, the equal-lengths case worked out on paper, and seeded simulations from the logistic GLM itself, whose true LC
win rate is known (sigmoid(theta) for the minimal GLM; mean sigmoid(psi * difficulty + theta) for v1)."""

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from dpo_ref.evaluation.lc_minimal import glm_fit, lc_interval, lc_pseudo_values, lc_win_rate
from dpo_ref.evaluation.lc_v1 import Gamed, lc_interval_v1

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def glm_sample(rng, n: int, shift: float, phi: float, theta: float, ties: bool = False):
    """(preferences, policy lengths, baseline lengths) with logit P(win) = phi * tanh(d / sd(d)) + theta, d the
    baseline's length less the policy's; with `ties` each preference is the mean of two verdicts (0, 0.5 or 1)."""
    base = rng.normal(1500 + shift, 300, n)
    policy = np.full(n, 1500.0)
    d = base - policy
    p = sigmoid(phi * np.tanh(d / d.std(ddof=1)) + theta)
    q = (rng.random(n) < p).astype(float)
    if ties:
        q = (q + (rng.random(n) < p)) / 2
    return q, policy, base


def hand_sandwich(x, q, w):
    """The HC3 sandwich covariance of the fitted coefficients, n / (n - 1) * B (sum_i (g_i - g)(g_i - g)') B with
    B = (X' diag(p(1 - p)) X)^-1 and g_i = x_i (q_i - p_i) / (1 - h_i), and the one-step correction B X'(q - p)."""
    p = sigmoid(x @ w)
    bread = np.linalg.inv(x.T @ np.diag(p * (1 - p)) @ x)
    hat = np.diag(np.sqrt(p * (1 - p))[:, None] * x @ bread @ x.T * np.sqrt(p * (1 - p))[None, :])
    g = x * ((q - p) / (1 - hat))[:, None]
    g = g - g.mean(axis=0)
    n = len(q)
    return n / (n - 1) * bread @ g.T @ g @ bread, bread @ x.T @ (q - p)


def test_pseudo_values_carry_the_sandwich_variance_and_the_one_step_mean():
    q, policy, base = glm_sample(np.random.default_rng(3), 40, 100, 0.8, 0.5, ties=True)
    d = base - policy
    x = np.column_stack([np.tanh(d / d.std(ddof=1)), np.ones(40)])
    w = glm_fit(x, q, np.ones(40)).w
    cov, step = hand_sandwich(x, q, w)
    lc = sigmoid(w[1])
    pseudo = lc_pseudo_values(q, policy, base)
    assert len(pseudo) == 40 and lc == pytest.approx(lc_win_rate(q, policy, base), abs=1e-12)
    assert pseudo.mean() == pytest.approx(lc + lc * (1 - lc) * step[1], abs=1e-10)
    assert pseudo.var(ddof=1) / 40 == pytest.approx((lc * (1 - lc)) ** 2 * cov[1, 1], rel=1e-8)
    half = student_t.ppf(0.975, 40 - 2) * np.sqrt(cov[1, 1])
    ends = min(w[1], w[1] + step[1]) - half, max(w[1], w[1] + step[1]) + half
    assert lc_interval(q, policy, base) == pytest.approx(sigmoid(np.array(ends)), abs=1e-10)


def test_with_equal_lengths_the_pseudo_values_are_the_preferences():
    """Intercept only: the one-step correction lands on logit(mean q) exactly, h_i = 1/n, so the pseudo-values are
    mean(q) + (q_i - mean(q)) * n / (n - 1): their mean is the raw win rate, their variance / n its squared s.e.
    times n / (n - 1)."""
    q = np.array([1, 0, 1, 1, 0.5, 1, 0, 1, 1, 0.5])
    lengths = np.full(10, 300)
    assert lc_pseudo_values(q, lengths, lengths) == pytest.approx(q.mean() + (q - q.mean()) * 10 / 9, abs=1e-9)


def test_without_a_penalty_the_pseudo_values_average_to_the_lc_win_rate():
    q, policy, base = glm_sample(np.random.default_rng(4), 3000, 200, 0.8, 0.6)
    assert lc_pseudo_values(q, policy, base).mean() == pytest.approx(lc_win_rate(q, policy, base), abs=2e-4)


def coverage(n: int, reps: int, shift: float, phi: float, theta: float, ties: bool, seed: int = 0):
    """Share of seeded samples whose lc_interval, and whose pseudo-value interval mean +- t sd / sqrt(n), holds the
    true LC win rate sigmoid(theta)."""
    rng = np.random.default_rng(seed)
    truth, crit = sigmoid(theta), student_t.ppf(0.975, n - 2)
    held, held_pseudo = 0, 0
    for _ in range(reps):
        q, policy, base = glm_sample(rng, n, shift, phi, theta, ties)
        lo, hi = lc_interval(q, policy, base)
        held += lo <= truth <= hi
        pseudo = lc_pseudo_values(q, policy, base)
        held_pseudo += abs(pseudo.mean() - truth) <= crit * pseudo.std(ddof=1) / np.sqrt(n)
    return held / reps, held_pseudo / reps


@pytest.mark.slow
def test_the_lc_interval_covers_the_true_lc_win_rate():
    """100 prompts, theta about two standard errors from 0, where the cross-validated L1 fit often zeroes it: the
    interval around the estimate alone (before the one-step correction) covered 0.82. (Ties, 400 prompts and the
    hard case of LC_INTERVAL_NOTE were measured the same way, 400 samples each; too slow to run every time.)"""
    held, held_pseudo = coverage(100, 400, 0.0, 0.5, 0.5, False)
    assert 0.93 <= held <= 0.97 and 0.93 <= held_pseudo <= 0.97, (held, held_pseudo)


def v1_sample(rng, n: int, difficulty: np.ndarray, phi: float, psi: float, theta: float):
    """The v1 GLM's own data: two gamed baselines (one verbose, one concise) and the model, logit P(win) =
    phi * tanh(std_delta_len) + psi * difficulty (+ theta for the model)."""
    gamed_x, gamed_q = [], []
    for shift in (-1.0, 1.0):
        std_delta = shift + rng.normal(0, 1, n)
        x = np.column_stack([np.tanh(std_delta), difficulty, np.zeros(n)])
        gamed_x.append(x)
        gamed_q.append((rng.random(n) < sigmoid(x @ [phi, psi, 0.0])).astype(float))
    gamed = Gamed(Path("df_gamed.csv"), np.vstack(gamed_x), np.concatenate(gamed_q), dict(enumerate(difficulty)))
    base = rng.normal(1500, 300, n)
    policy = np.full(n, 1500.0)
    d = base - policy
    q = (rng.random(n) < sigmoid(phi * np.tanh(d / d.std(ddof=1)) + psi * difficulty + theta)).astype(float)
    return q, policy, base, gamed


@pytest.mark.slow
def test_the_v1_interval_covers_the_true_lc_win_rate():
    rng = np.random.default_rng(0)
    n, phi, psi, theta = 150, 0.7, 0.6, 0.4
    difficulty = rng.normal(0, 1, n)
    truth = sigmoid(psi * difficulty + theta).mean()
    held = 0
    for _ in range(300):
        q, policy, base, gamed = v1_sample(rng, n, difficulty, phi, psi, theta)
        lo, hi = lc_interval_v1(q, policy, base, gamed, difficulty)
        held += lo <= truth <= hi
    assert 0.93 <= held / 300 <= 0.97
