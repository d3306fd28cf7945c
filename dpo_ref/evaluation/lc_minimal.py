"""AlpacaEval's `length_controlled_minimal`: the LC GLM of one model against one baseline, its fit and its interval
(lc_v1.py builds the leaderboard's v1 on this fit). The LC win rate is the headline metric of AlpacaEval 2 (Dubois et
al. 2024, arXiv 2404.04475), computed as AlpacaEval 0.6.6 computes it (alpaca_eval/metrics/glm_winrate.py), with the
same scikit-learn fit.

The judge's preference q_i in [0, 1] (1 = the policy's response preferred, draws 0.5) is modelled by a logistic GLM

    logit q_i = phi * tanh(d_i / sd(d)) + theta,   d_i = len(baseline response_i) - len(policy response_i)

(sd: sample standard deviation over every row, judged or not, as AlpacaEval's pandas `.std()`). The LC win rate is
the model's mean prediction with the length term set to zero. This is AlpacaEval's `length_controlled_minimal`;
lc_v1.py adds the leaderboard's `length_controlled_v1` (instruction difficulty, gamed baselines) on the same fit.

The fit is AlpacaEval's `fit_LogisticRegressionCV` with the same scikit-learn estimator and arguments: soft labels,
no intercept column of its own, liblinear's L1-penalised logistic regression with C chosen from logspace(-4, 4, 10)
by 5-fold GroupKFold cross-validation of the weighted log-loss, then refit on every judged row. With fewer judged
rows than folds (where AlpacaEval stops) the largest C is used.

Uncertainty (`lc_interval`, `lc_pseudo_values`, lc_v1.py's v1 interval) comes from the robust (sandwich) variance of
the fitted coefficients, the quasi-likelihood variance of a logistic model of fractional outcomes (Papke & Wooldridge
1996), so soft and tied preferences are allowed for. Two small-sample troubles are dealt with. The cross-validated L1
penalty can shrink theta to zero (in simulation at n = 100 with a true theta 0.4-0.5, two standard errors from zero,
in 15-34% of samples), so an interval around the estimate alone misses a true LC a little way from one half (0.82 of
such samples covered); the interval also spans the one-step (Newton) correction of that shrinkage,
theta + [bread @ X'(q - p)]_theta, which the sandwich describes (the desparsified lasso of van de Geer et al. 2014).
And the sandwich understates the variance where a few rows carry much leverage: each row's term is scaled by
1 / (1 - h_i) (HC3; MacKinnon & White 1985) and the quantile is t with rows - coefficients degrees of freedom.

Degenerate samples. Where AlpacaEval 0.6.6 returns a value dporef returns the same (the same scikit-learn fit;
tests/test_lc_degenerate.py runs AlpacaEval's code on each case), artefacts included, since the LC is meant to be
AlpacaEval's; where AlpacaEval raises, dporef defines the value as below.
- Every judged preference a loss, 5 rows or more: 0.5, AlpacaEval's value. No finite GLM fits a unanimous sample, and
  liblinear, given no weight on label 1, fits zero coefficients (and prints "class label 1 specified in weight is not
  found", which dporef keeps off the terminal). The raw win rate is 0: the 0.5 is an artefact, kept because it is
  AlpacaEval's; the interval (below) runs from 0 to it.
- Every one a win, 5 rows or more: AlpacaEval's value, just under 1 (the penalised fit at the C cross-validation
  picks: about 1 - 3e-5 at 5 rows, 1 - 2e-7 at 805). Every one a draw: 0.5 (AlpacaEval's; the fit is exact).
- Fewer judged rows than AlpacaEval's 5 folds: AlpacaEval raises (GroupKFold needs 5 groups). dporef fits at the
  least-regularised C, bar a unanimous sample, which gets its raw win rate, 0 or 1 (liblinear's fit at that C gives
  about 0.9999 for all losses and all wins alike). One judged row: also AlpacaEval raises (the s.d. of one length
  difference is NaN); dporef's length term is 0, so the estimate is that row's preference.
- Every length difference the same, nonzero (zero s.d.): AlpacaEval's d / sd is +-inf and its tanh +-1 on every row,
  a length term collinear with the intercept, between which the L1 fit splits the logit; dporef does the same (its
  estimate is AlpacaEval's). The data cannot tell length from quality here: the interval and pseudo-values take the
  split as given (the length coefficient a known offset), so they hold only the intercept's uncertainty.
- Identical lengths (every difference 0): AlpacaEval's 0 / 0 is NaN and it raises; dporef's length term is 0, so the
  GLM is the (penalised) logit of the mean preference, and a unanimous sample of 5 rows or more gets the value
  AlpacaEval gives it at any lengths.
A unanimous sample (every judged preference 0, or every one 1) has no sandwich: its interval is the exact binomial
interval of its raw win rate widened to hold the estimate (0.5 for all losses: (0, 0.5)), its pseudo-values the
estimate on every row (their mean is the estimate, as for any sample; the sample has no spread to carry).

The fit's own noise stays inside it: scikit-learn's ConvergenceWarning (liblinear stopping at max_iter, common in the
cross-validation folds at large C) is caught, and `GlmFit.converged` / `LcFit.converged` say whether the final fit,
whose coefficients give the LC, converged.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .estimators import CONFIDENCE, win_rate_interval

CS = np.logspace(-4, 4, 10)  # sklearn's LogisticRegressionCV(Cs=10)
N_SPLITS = 5
EPS = 1e-15  # AlpacaEval's log-loss clip
LC_INTERVAL_NOTE = (  # for a results caption; the hard case is tests/test_lc_coverage.py's, 400 samples a case
    "The LC win rate's 95% interval (robust GLM sandwich, small-sample corrected) held the true value in 94-99% of "
    "samples of 100 and 400 prompts simulated from the GLM itself, but in 92% at 100 prompts when nearly every "
    "policy response was far longer than the baseline's and the judge strongly favoured length (LC then extrapolates)."
)


def tanh_std_delta(baseline_lengths, policy_lengths) -> np.ndarray:
    """AlpacaEval's length feature tanh((len_1 - len_2) / sd), sd the sample s.d. of every row's difference. When
    every difference is the same (sd 0) AlpacaEval's d / 0 is +-inf for a nonzero difference, tanh +-1 (kept: the
    sign of d), and NaN for a zero one, where AlpacaEval raises (here 0: no length term); one row (sd NaN, AlpacaEval
    raises) also gets 0."""
    d = np.asarray(baseline_lengths, dtype=np.float64) - np.asarray(policy_lengths, dtype=np.float64)
    if len(d) < 2:
        return np.zeros_like(d)
    sd = d.std(ddof=1)
    return np.tanh(d / sd) if sd > 0 else np.sign(d)


def _design(preference, policy_lengths, baseline_lengths) -> tuple[np.ndarray, np.ndarray]:
    """(features [length term, intercept], preferences) of the judged rows; sd(d) is taken over every row."""
    q = np.asarray(preference, dtype=np.float64)
    x = np.column_stack([tanh_std_delta(baseline_lengths, policy_lengths), np.ones_like(q)])
    judged = ~np.isnan(q)
    return x[judged], q[judged]


def _unanimous(q: np.ndarray) -> float | None:
    """0.0 when every judged preference is a loss, 1.0 when every one is a win, else None: a sample no GLM fits (the
    maximum likelihood is at an infinite intercept) and no length adjustment can move (module docstring)."""
    if len(q) and np.all(q == 0):
        return 0.0
    if len(q) and np.all(q == 1):
        return 1.0
    return None


def lc_win_rate(preference, policy_lengths, baseline_lengths) -> float:
    """AlpacaEval's `length_controlled_minimal` in [0, 1]; NaN preferences (unjudged rows) count in sd(d) only.
    Lengths in any unit: AlpacaEval's are characters, the in-loop evaluation passes tokens. Degenerate samples (all
    losses, all wins, fewer than 5 judged rows, equal length differences) as the module docstring says."""
    return LcFit.of(preference, policy_lengths, baseline_lengths).estimate


def lc_interval(preference, policy_lengths, baseline_lengths) -> tuple[float, float]:
    """95% interval of the LC win rate sigmoid(theta), on the logit scale: the union of theta +- t * se and of
    (theta + its one-step correction) +- t * se, se the HC3 sandwich standard error (module docstring), so it holds
    both AlpacaEval's estimate and the mean of `lc_pseudo_values`. A unanimous sample gets the exact binomial interval
    of its win rate, widened to hold the estimate (module docstring); a sample with no residual degrees of freedom (a
    single row) gets (0, 1). Every interval holds its estimate and lies in [0, 1].
    Coverage in simulation (400 samples a case): 0.94-0.96 where theta is two s.e. from zero (0.82-0.92 before),
    up to 0.985 elsewhere (conservative); it stays short of 0.93 at n = 100 only when the policy's responses are about
    two s.d. longer than the baseline's and the length slope is strong (0.92; 0.89 before; 0.96 at n = 400), where
    the LC is an extrapolation of the fit. LC_INTERVAL_NOTE says so for a caption."""
    return LcFit.of(preference, policy_lengths, baseline_lengths).interval()


def lc_pseudo_values(preference, policy_lengths, baseline_lengths) -> np.ndarray:
    """One value per judged row, sigmoid(theta) + sigmoid'(theta) * phi_i with phi_i = n * [bread @ x_i * (q_i - p_i)]_
    theta (its deviation from the mean scaled by HC3's 1 / (1 - h_i)): their mean is the LC win rate plus
    sigmoid'(theta) times the one-step correction of the L1 shrinkage (zero where the penalty does not bind), their
    sample variance / n is the squared (HC3 sandwich) standard error of the LC win rate. So several training seeds
    can be averaged per prompt before an interval mean +- t * sd / sqrt(n); for one seed that interval covered 0.94-0.95
    in simulation, but 0.81 (n = 100) and 0.915 (n = 400) in lc_interval's hard case, where lc_interval keeps the
    band around the uncorrected estimate too. Unanimous samples: the estimate on every row."""
    return LcFit.of(preference, policy_lengths, baseline_lengths).pseudo_values()


@dataclass(frozen=True)
class LcFit:
    """One fit of the minimal GLM to a sample and its sandwich, which `lc_win_rate`, `lc_interval` and
    `lc_pseudo_values` all read: a report wanting several pays for one cross-validated fit. `estimate` is the LC win
    rate; `converged` is False when liblinear's final fit stopped at its iteration limit (the estimate is then where
    it stopped, as AlpacaEval's is); a unanimous sample has no sandwich (`spread` None), and below 5 rows no fit
    either (`w` None, `converged` True)."""

    q: np.ndarray
    estimate: float
    converged: bool
    w: np.ndarray | None
    spread: Sandwich | None

    @classmethod
    def of(cls, preference, policy_lengths, baseline_lengths) -> LcFit:
        x, q = _design(preference, policy_lengths, baseline_lengths)
        unanimous = _unanimous(q)
        if unanimous is not None and len(q) < N_SPLITS:
            return cls(q, unanimous, True, None, None)
        fit = glm_fit(x, q, np.ones(len(q)))
        estimate = float(sigmoid(fit.w[1]))
        if unanimous is not None:
            return cls(q, estimate, fit.converged, fit.w, None)
        offset = 0.0
        if len(q) and np.ptp(x[:, 0]) == 0 and x[0, 0] != 0:  # every length difference the same: the length term is
            offset, x = x[:, 0] * fit.w[0], x * [0.0, 1.0]  # +-1, collinear with theta; taken as a known offset
        return cls(q, estimate, fit.converged, fit.w, sandwich(x, q, np.ones(len(q)), fit.w, offset))

    def interval(self) -> tuple[float, float]:
        if self.spread is None:
            lo, hi = win_rate_interval(self.q)
            return min(lo, self.estimate), max(hi, self.estimate)
        s = self.spread
        return logit_interval(self.w[1], s.shift[1], s.se(s.terms[:, 1]), s.dof)

    def pseudo_values(self) -> np.ndarray:
        if self.spread is None:
            return np.full(len(self.q), self.estimate)
        lc = self.estimate
        return lc + lc * (1 - lc) * (self.spread.shift[1] + len(self.q) * self.spread.terms[:, 1])


@dataclass(frozen=True)
class Sandwich:
    """The robust variance of a fitted GLM's coefficients, as per-row terms (so any function of the coefficients
    gets its variance from its gradient): the covariance is n / (n - 1) * terms' @ terms."""

    shift: np.ndarray  # bread @ sum_i s_i x_i (q_i - p_i): the one-step correction of the fit (0 unpenalised)
    terms: np.ndarray  # row i: bread @ x_i s_i (q_i - p_i) / (1 - h_i), less their mean
    dof: int  # rows - estimable coefficients: the t quantile's degrees of freedom

    def se(self, terms: np.ndarray) -> float:
        """Standard error of a function of the coefficients from its per-row terms (terms @ gradient)."""
        n = len(terms)
        return float(np.sqrt(n / (n - 1) * np.sum(terms**2))) if n > 1 else 0.0


def sandwich(x: np.ndarray, q: np.ndarray, s: np.ndarray, w: np.ndarray, offset=0.0) -> Sandwich:
    """The sandwich of the weighted quasi-likelihood fit w of rows x (plus a known `offset` to the linear predictor),
    preferences q, weights s. A feature that is zero on every row (identical lengths) has no variance and takes no
    degree of freedom."""
    p = sigmoid(x @ w + offset)
    v = s * p * (1 - p)
    bread = np.linalg.pinv((x * v[:, None]).T @ x)
    leverage = v * np.einsum("ij,jk,ik->i", x, bread, x)
    terms = (x @ bread) * (s * (q - p))[:, None]
    adjusted = terms / np.maximum(1 - leverage, np.finfo(np.float64).eps)[:, None]
    return Sandwich(terms.sum(axis=0), adjusted - adjusted.mean(axis=0), len(q) - np.linalg.matrix_rank(x))


def logit_interval(estimate: float, shift: float, se: float, dof: int) -> tuple[float, float]:
    """sigmoid of [min(a, b) - t * se, max(a, b) + t * se], a = estimate and b = estimate + shift on the logit scale,
    t the two-sided CONFIDENCE quantile with `dof` degrees of freedom; (0, 1) with none."""
    from scipy.stats import t

    if dof < 1:
        return 0.0, 1.0
    half = float(t.ppf(0.5 + CONFIDENCE / 2, dof)) * se
    low, high = min(estimate, estimate + shift) - half, max(estimate, estimate + shift) + half
    return float(sigmoid(low)), float(sigmoid(high))


@dataclass(frozen=True)
class GlmFit:
    """The coefficients of `glm_fit` and whether liblinear's final fit, the one at the C cross-validation chose (whose
    coefficients these are), stopped before its iteration limit (max_iter 100). Fold fits at other Cs that stop at
    the limit (common at large C on nearly separable samples) do not count: they only score their C."""

    w: np.ndarray
    converged: bool


def glm_fit(x: np.ndarray, q: np.ndarray, s: np.ndarray) -> GlmFit:
    """Coefficients of the L1 soft-label logistic regression at the C cross-validation picks: AlpacaEval's
    `fit_LogisticRegressionCV`, through the same scikit-learn estimator. Soft labels q become two rows per item
    (label 1 with weight s*q, label 0 with weight s*(1-q)), the folds group an item's two rows, and the score is the
    weighted log-loss of q itself. scikit-learn's warnings stay inside (ConvergenceWarning becomes `converged`;
    others are passed on) and so do liblinear's stderr lines (`_liblinear_stderr_held`)."""
    from sklearn import config_context
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(q)
    x2, y2 = np.vstack([x, x]), np.concatenate([np.ones(n), np.zeros(n)])
    q2, s2 = np.concatenate([q, 1 - q]), np.concatenate([s, s])
    args = {"penalty": "l1", "solver": "liblinear", "fit_intercept": False, "random_state": 123, "dual": False}
    with (
        config_context(enable_metadata_routing=True),
        warnings.catch_warnings(record=True) as caught,
        _liblinear_stderr_held(),
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        # scikit-learn 1.8-1.9 warn that AlpacaEval's arguments (penalty=...) change in 1.10; AlpacaEval passes them
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Inconsistent values: penalty=l1", category=UserWarning)
        if n < N_SPLITS:  # too few items to cross-validate (AlpacaEval stops there): the least regularised C
            model = LogisticRegression(C=CS[-1], **args).set_fit_request(sample_weight=True)
            model.fit(x2, y2, sample_weight=q2 * s2)
            converged = bool(np.max(model.n_iter_) < model.max_iter)
        else:
            scorer = make_scorer(_log_loss, response_method="predict_proba", greater_is_better=False)
            scorer = scorer.set_score_request(true_prob=True, true_weight=True)
            model = LogisticRegressionCV(Cs=len(CS), cv=GroupKFold(n_splits=N_SPLITS), scoring=scorer, **args)
            model.set_fit_request(sample_weight=True)
            groups = np.concatenate([np.arange(n), np.arange(n)])
            model.fit(x2, y2, sample_weight=q2 * s2, groups=groups, true_prob=q2, true_weight=s2)
            converged = True
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                # LogisticRegressionCV keeps no iteration count of its final fit: liblinear ignores the warm start
                # and takes random_state, so the plain fit at the chosen C repeats it exactly
                final = LogisticRegression(C=model.C_[0], **args).set_fit_request(sample_weight=True)
                final.fit(x2, y2, sample_weight=q2 * s2)
                converged = bool(np.max(final.n_iter_) < final.max_iter)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return GlmFit(model.coef_[0], converged)


LIBLINEAR_NOISE = b"WARNING: class label "  # liblinear's "... specified in weight is not found", to the C stderr


@contextmanager
def _liblinear_stderr_held():
    """Holds file descriptor 2 in a temporary file while liblinear fits, then writes back all but liblinear's own
    lines: it prints "WARNING: class label 1 specified in weight is not found" from C (no Python warning to catch)
    for every fit that sees no weight on one label, so 51 lines for a unanimous sample. Anything else written to
    stderr meanwhile (another thread's) comes out after the fit, unchanged. Where fd 2 cannot be held, no-op."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    held = tempfile.TemporaryFile()
    try:
        os.dup2(held.fileno(), 2)
        yield
    finally:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)
        rest = b"".join(line for line in held if not line.startswith(LIBLINEAR_NOISE))
        held.close()
        if rest:
            os.write(2, rest)


def sigmoid(z):
    """The logistic function, without overflow."""
    return np.exp(-np.logaddexp(0.0, -z))


def _log_loss(y, p, true_prob, true_weight) -> float:
    """AlpacaEval's `logloss_continuous`: the weighted cross-entropy of the soft label, averaged over rows."""
    p = np.clip(p, EPS, 1 - EPS)
    q = np.where(y == 1, true_prob, 1 - true_prob)
    return float(-np.mean(true_weight * (q * np.log(p) + (1 - q) * np.log(1 - p))))
