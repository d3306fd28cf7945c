"""Length-controlled win rate, the headline metric of AlpacaEval 2 (Dubois et al. 2024, arXiv 2404.04475).

The judge's per-prompt preference q_i (1 = policy's response preferred, 0 = baseline's, ties 0.5) is modelled by a
logistic GLM with a length mediator:

    logit q_i = theta + phi * tanh(d_i / sd(d)),   d_i = len(policy response_i) - len(baseline response_i)

fitted by maximum likelihood (soft labels, Newton's method). The length-controlled win rate is the prediction with
the length term set to zero: LC = sigmoid(theta). AlpacaEval's GLM also has an instruction-difficulty term fitted
across many models on its 805 prompts; with one policy against one baseline that term is not identifiable, so it is
left out here. A tiny ridge penalty keeps the fit finite when one side wins every prompt.
"""

import numpy as np


def lc_win_rate(preference, policy_lengths, baseline_lengths, ridge: float = 1e-4, iters: int = 50) -> float:
    """LC win rate in [0, 1] from per-prompt preferences and response lengths (any unit, tokens here)."""
    q = np.asarray(preference, dtype=np.float64)
    d = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    sd = d.std()
    x = np.column_stack([np.ones_like(q), np.tanh(d / sd) if sd > 0 else np.zeros_like(q)])
    w = np.zeros(2)
    penalty = ridge * np.eye(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - q) + penalty @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + np.exp(-w[0])))
