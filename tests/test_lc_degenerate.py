"""The LC win rate on degenerate samples against AlpacaEval's own code (alpaca_eval.metrics.glm_winrate, run here on
the same rows): every prompt lost, won or drawn, every length difference the same, identical lengths, fewer prompts
than AlpacaEval's five folds, one prompt; where AlpacaEval gives a value dporef gives the same, where it raises dporef
defines one (lc_minimal.py's docstring says which), and every interval holds its estimate inside [0, 1]. Then the
fit's own noise: scikit-learn's ConvergenceWarning and liblinear's stderr lines stay inside the fit, which says
whether it converged."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from test_lc import TOL, alpaca_eval_lc, annotations, cache_df_gamed, difficulties
from test_lc import hub as hub  # noqa: F401  (the fixture: a temporary Hugging Face cache both codes read)

from dpo_ref.evaluation.estimators import binomial_interval
from dpo_ref.evaluation.lc_minimal import LcFit, lc_interval, lc_pseudo_values, lc_win_rate
from dpo_ref.evaluation.lc_v1 import LcFitV1, lc_interval_v1, lc_win_rate_v1, read_gamed

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:pkg_resources is deprecated:UserWarning")

MINIMAL, V1 = "length_controlled_minimal", "length_controlled_v1"
KINDS = {"loss": 1.0, "win": 2.0, "draw": 0.0}  # AlpacaEval's preference: 1 baseline, 2 model, 0 a draw


def columns(rows: list[dict]) -> tuple[list[float], list[int], list[int]]:
    """(the policy's wins in [0, 1], len(output_2), len(output_1)), as alpaca_eval.py reads annotations."""
    wins = [0.5 if r["preference"] == 0 else r["preference"] - 1 for r in rows]
    return wins, [len(r["output_2"]) for r in rows], [len(r["output_1"]) for r in rows]


def rows_of(n: int, preferences, difficulty, policy_len=None, baseline_len=None) -> list[dict]:
    """The first n rows of test_lc's annotations with these preferences (one for all, or one each), and optionally
    every policy / baseline response of one length."""
    prefs = np.broadcast_to(np.asarray(preferences, dtype=np.float64), (n,))
    rows = []
    for r, p in zip(annotations(200, 0.2, difficulty)[:n], prefs):
        row = dict(r, preference=float(p))
        if policy_len is not None:
            row["output_2"] = "m" * policy_len
        if baseline_len is not None:
            row["output_1"] = "b" * baseline_len
        rows.append(row)
    return rows


def raises(rows: list[dict], glm: str) -> bool:
    try:
        alpaca_eval_lc(rows, glm)
    except ValueError:
        return True
    return False


def assert_holds(interval: tuple[float, float], estimate: float):
    lo, hi = interval
    assert 0.0 <= lo <= estimate <= hi <= 1.0, (interval, estimate)


@pytest.mark.parametrize("n", [5, 40])
def test_every_prompt_lost_won_or_drawn_is_alpaca_evals_lc(hub, n):
    """AlpacaEval's minimal GLM gives 0.5 for all losses (liblinear sees no weight on a win and fits zeros), just
    under 1 for all wins and 0.5 for all draws; dporef gives the same, with an interval that holds it and the exact
    binomial interval of the raw win rate, and pseudo-values whose mean is it. v1 (gamed baselines) is finite."""
    difficulty = difficulties()
    gamed = read_gamed(cache_df_gamed(hub, difficulty))
    for kind, preference in KINDS.items():
        rows = rows_of(n, preference, difficulty)
        wins, len_2, len_1 = columns(rows)
        minimal = alpaca_eval_lc(rows, MINIMAL)
        if kind != "win":
            assert minimal == 0.5, kind  # AlpacaEval's own value (the artefact documented in lc_minimal.py)
        ours = lc_win_rate(wins, len_2, len_1)
        assert ours == pytest.approx(minimal, abs=TOL), kind
        interval = lc_interval(wins, len_2, len_1)
        assert_holds(interval, ours)
        if kind != "draw":
            lo, hi = binomial_interval(int(sum(wins)), n)
            assert interval[0] <= lo and hi <= interval[1], kind
        assert lc_pseudo_values(wins, len_2, len_1).mean() == pytest.approx(ours, abs=1e-12), kind
        v1 = alpaca_eval_lc(rows, V1)
        ours_v1 = lc_win_rate_v1(wins, len_2, len_1, gamed, difficulty[:n])
        assert ours_v1 == pytest.approx(v1, abs=TOL), kind
        assert_holds(lc_interval_v1(wins, len_2, len_1, gamed, difficulty[:n]), ours_v1)


@pytest.mark.parametrize("n", [10, 60])
@pytest.mark.parametrize("longer", [50, -50])
def test_every_length_difference_the_same_is_alpaca_evals_lc(hub, n, longer):
    """A zero s.d. of a nonzero difference: AlpacaEval's d / sd is +-inf, its tanh +-1 on every row (collinear with
    the intercept in the minimal GLM, pinned by the gamed baselines in v1); dporef had dropped the length term."""
    difficulty = difficulties()
    gamed = read_gamed(cache_df_gamed(hub, difficulty))
    preferences = np.random.default_rng(3).choice([1.0, 2.0, 0.0], size=n)
    rows = rows_of(n, preferences, difficulty, policy_len=100 + longer, baseline_len=100)
    wins, len_2, len_1 = columns(rows)
    ours = lc_win_rate(wins, len_2, len_1)
    assert ours == pytest.approx(alpaca_eval_lc(rows, MINIMAL), abs=TOL)
    lo, hi = lc_interval(wins, len_2, len_1)
    assert_holds((lo, hi), ours)
    assert lo <= lc_pseudo_values(wins, len_2, len_1).mean() <= hi  # the estimate plus the one-step correction
    ours_v1 = lc_win_rate_v1(wins, len_2, len_1, gamed, difficulty[:n])
    assert ours_v1 == pytest.approx(alpaca_eval_lc(rows, V1), abs=TOL)
    assert_holds(lc_interval_v1(wins, len_2, len_1, gamed, difficulty[:n]), ours_v1)


def test_where_alpaca_eval_raises_dporef_defines_the_lc(hub):
    """Identical lengths (AlpacaEval's 0 / 0 s.d.) and fewer judged prompts than its five folds make AlpacaEval
    raise. dporef fits with the length term zero, so all losses over identical lengths get the value AlpacaEval gives
    all losses over any lengths; below five prompts it fits at the least-regularised C, a unanimous sample getting
    its raw win rate and exact binomial interval (that C's liblinear fit would give about 1 for losses too)."""
    difficulty = difficulties()
    gamed = read_gamed(cache_df_gamed(hub, difficulty))
    for kind in ("loss", "win"):
        same = rows_of(10, KINDS[kind], difficulty, policy_len=300, baseline_len=300)
        assert raises(same, MINIMAL) and raises(same, V1)
        wins, len_2, len_1 = columns(same)
        ours = lc_win_rate(wins, len_2, len_1)
        assert ours == pytest.approx(alpaca_eval_lc(rows_of(10, KINDS[kind], difficulty), MINIMAL), abs=1e-4), kind
        assert_holds(lc_interval(wins, len_2, len_1), ours)
        ours_v1 = lc_win_rate_v1(wins, len_2, len_1, gamed, difficulty[:10])
        assert_holds(lc_interval_v1(wins, len_2, len_1, gamed, difficulty[:10]), ours_v1)
    for n in range(1, 5):
        for kind, preferences in {**KINDS, "mixed": [1.0, 2.0, 1.75, 0.0][:n]}.items():
            rows = rows_of(n, preferences, difficulty)
            assert raises(rows, MINIMAL)
            wins, len_2, len_1 = columns(rows)
            ours = lc_win_rate(wins, len_2, len_1)
            if kind in ("loss", "win"):
                assert ours == wins[0]
                assert lc_interval(wins, len_2, len_1) == pytest.approx(binomial_interval(int(sum(wins)), n))
            assert_holds(lc_interval(wins, len_2, len_1), ours)
            assert lc_pseudo_values(wins, len_2, len_1).mean() == pytest.approx(ours, abs=0.2)
            ours_v1 = lc_win_rate_v1(wins, len_2, len_1, gamed, difficulty[:n])
            if n > 1:  # v1 fits below five prompts (the gamed rows fill the folds); one row's s.d. is NaN
                assert ours_v1 == pytest.approx(alpaca_eval_lc(rows, V1), abs=TOL), (n, kind)
            else:
                assert raises(rows, V1)
            assert_holds(lc_interval_v1(wins, len_2, len_1, gamed, difficulty[:n]), ours_v1)


# liblinear stops at max_iter (100) in the final fit, at the C (1e4) cross-validation picks: found by search
STALLS = {"policy": [108, 84, 123, 101, 83], "baseline": [139, 99, 113, 116, 98], "win": [0.0, 0.0, 0.5, 0.0, 0.0]}


def test_a_fit_that_does_not_converge_says_so_and_no_warning_escapes(hub, capfd):
    """AlpacaEval's fit of these rows warns (scikit-learn's ConvergenceWarning, its final fit's among them); dporef's
    gives the same LC, lets no warning out, and says the final fit did not converge."""
    difficulty = difficulties()
    gamed = read_gamed(cache_df_gamed(hub, difficulty))
    rows = [
        dict(r, output_1="b" * b, output_2="m" * p, preference=0.0 if w == 0.5 else 1 + w)
        for r, p, b, w in zip(annotations(200, 0.2, difficulty), *STALLS.values())
    ]
    with pytest.warns(ConvergenceWarning):  # AlpacaEval's fit of the same rows warns
        theirs = alpaca_eval_lc(rows, MINIMAL)
    capfd.readouterr()
    stalls = STALLS["win"], STALLS["policy"], STALLS["baseline"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = LcFit.of(*stalls)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert "converge" not in capfd.readouterr().err
    assert fit.converged is False
    assert fit.estimate == pytest.approx(theirs, abs=TOL) and lc_win_rate(*stalls) == fit.estimate
    assert_holds(fit.interval(), fit.estimate)
    rows = rows_of(40, np.random.default_rng(0).choice([1.0, 2.0, 0.0], size=40), difficulty)
    assert LcFit.of(*columns(rows)).converged is True
    assert LcFitV1.of(*columns(rows), gamed, difficulty[:40]).converged is True


def test_liblinears_stderr_lines_stay_inside_the_fit(capfd):
    """liblinear prints 'WARNING: class label 1 specified in weight is not found' to the C stderr for every fit
    that sees no weight on one label: each fold of a sample with one win in five, and every fit of an all-loss one."""
    for wins in ([0.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 8):
        lengths = np.arange(len(wins)) * 10 + 100
        capfd.readouterr()
        lc_win_rate(wins, lengths, lengths[::-1])
        assert "class label" not in capfd.readouterr().err
