"""Length-controlled (LC) win rate, the headline metric of AlpacaEval 2 (Dubois et al. 2024, arXiv 2404.04475),
computed as AlpacaEval 0.6.6 computes it (alpaca_eval/metrics/glm_winrate.py), with the same scikit-learn fit.

The judge's preference q_i in [0, 1] (1 = the policy's response preferred, draws 0.5) is modelled by a logistic GLM

    logit q_i = phi * tanh(d_i / sd(d)) + theta,   d_i = len(baseline response_i) - len(policy response_i)

(sd: sample standard deviation over every row, judged or not, as AlpacaEval's pandas `.std()`). The LC win rate is
the model's mean prediction with the length term set to zero. This is AlpacaEval's `length_controlled_minimal`;
alpaca_lc.py adds the leaderboard's `length_controlled_v1` (instruction difficulty, gamed baselines) on the same fit.

The fit is AlpacaEval's `fit_LogisticRegressionCV` with the same scikit-learn estimator and arguments: soft labels,
no intercept column of its own, liblinear's L1-penalised logistic regression with C chosen from logspace(-4, 4, 10)
by 5-fold GroupKFold cross-validation of the weighted log-loss, then refit on every judged row. With fewer judged
rows than folds (where AlpacaEval stops) the largest C is used.
"""

from __future__ import annotations

import warnings

import numpy as np

CS = np.logspace(-4, 4, 10)  # sklearn's LogisticRegressionCV(Cs=10)
N_SPLITS = 5
EPS = 1e-15  # AlpacaEval's log-loss clip


def tanh_std_delta(baseline_lengths, policy_lengths) -> np.ndarray:
    """AlpacaEval's length feature tanh((len_1 - len_2) / sd), zero when every difference is the same."""
    d = np.asarray(baseline_lengths, dtype=np.float64) - np.asarray(policy_lengths, dtype=np.float64)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def _design(preference, policy_lengths, baseline_lengths) -> tuple[np.ndarray, np.ndarray]:
    """(features [length term, intercept], preferences) of the judged rows; sd(d) is taken over every row."""
    q = np.asarray(preference, dtype=np.float64)
    x = np.column_stack([tanh_std_delta(baseline_lengths, policy_lengths), np.ones_like(q)])
    judged = ~np.isnan(q)
    return x[judged], q[judged]


def lc_win_rate(preference, policy_lengths, baseline_lengths) -> float:
    """AlpacaEval's `length_controlled_minimal` in [0, 1]; NaN preferences (unjudged rows) count in sd(d) only.
    Lengths in any unit: AlpacaEval's are characters, the in-loop evaluation passes tokens."""
    x, q = _design(preference, policy_lengths, baseline_lengths)
    return float(_sigmoid(glm_fit(x, q, np.ones(len(q)))[1]))


def lc_interval(preference, policy_lengths, baseline_lengths) -> tuple[float, float]:
    """Interval of the LC win rate sigmoid(theta): theta +- z * its robust (sandwich) standard error at the fitted
    coefficients, the quasi-likelihood variance of a logistic model of fractional outcomes (Papke & Wooldridge 1996),
    so soft and tied preferences are allowed for; the same fit as `lc_win_rate`. A length feature that is constant
    (every difference equal) drops out, leaving the interval of the mean preference on the logit scale."""
    from .intervals import Z

    x, q = _design(preference, policy_lengths, baseline_lengths)
    w = glm_fit(x, q, np.ones(len(q)))
    keep = [j for j in range(x.shape[1]) if np.ptp(x[:, j]) > 0 or j == 1]  # the intercept column always
    xs, p = x[:, keep], _sigmoid(x @ w)
    bread = np.linalg.pinv((xs * (p * (1 - p))[:, None]).T @ xs)
    meat = (xs * ((q - p) ** 2)[:, None]).T @ xs
    se = float(np.sqrt(max((bread @ meat @ bread)[keep.index(1), keep.index(1)], 0.0)))
    return float(_sigmoid(w[1] - Z * se)), float(_sigmoid(w[1] + Z * se))


def glm_fit(x: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Coefficients of the L1 soft-label logistic regression at the C cross-validation picks: AlpacaEval's
    `fit_LogisticRegressionCV`, through the same scikit-learn estimator. Soft labels q become two rows per item
    (label 1 with weight s*q, label 0 with weight s*(1-q)), the folds group an item's two rows, and the score is the
    weighted log-loss of q itself."""
    from sklearn import config_context
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(q)
    x2, y2 = np.vstack([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    q2, s2 = np.concatenate([q, 1 - q]), np.concatenate([s, s])
    args = {"penalty": "l1", "solver": "liblinear", "fit_intercept": False, "random_state": 123, "dual": False}
    with config_context(enable_metadata_routing=True), warnings.catch_warnings():
        # scikit-learn 1.8-1.9 warn that AlpacaEval's arguments (penalty=...) change in 1.10; AlpacaEval passes them
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Inconsistent values: penalty=l1", category=UserWarning)
        if n < N_SPLITS:  # too few items to cross-validate (AlpacaEval stops there): the least regularised C
            model = LogisticRegression(C=CS[-1], **args).set_fit_request(sample_weight=True)
            return model.fit(x2, y2, sample_weight=q2 * s2).coef_[0]
        scorer = make_scorer(_log_loss, response_method="predict_proba", greater_is_better=False)
        scorer = scorer.set_score_request(true_prob=True, true_weight=True)
        model = LogisticRegressionCV(Cs=len(CS), cv=GroupKFold(n_splits=N_SPLITS), scoring=scorer, **args)
        model.set_fit_request(sample_weight=True)
        groups = np.concatenate([np.arange(n), np.arange(n)])
        model.fit(x2, y2, sample_weight=q2 * s2, groups=groups, true_prob=q2, true_weight=s2)
    return model.coef_[0]


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _log_loss(y, p, true_prob, true_weight) -> float:
    """AlpacaEval's `logloss_continuous`: the weighted cross-entropy of the soft label, averaged over rows."""
    p = np.clip(p, EPS, 1 - EPS)
    q = np.where(y == 1, true_prob, 1 - true_prob)
    return float(-np.mean(true_weight * (q * np.log(p) + (1 - q) * np.log(1 - p))))
