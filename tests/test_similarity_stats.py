"""The statistics behind "does similarity predict a reference's worth?": similarity measured per token (length drives
summed log-probs), and the best win rate fitted on similarity and strength together with Holm's correction across
the similarity measures, each checked against an independent computation or a seeded simulation."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from dpo_ref.reference import similarity
from dpo_ref.reporting.similarity import SIMILARITY_MEASURES, fit, holm, markdown, plot


def _pair_scores(rng, n_pairs: int, token_mean: float, lengths: np.ndarray):
    """Sequence log-probs of responses of the given lengths under a model whose per-token log-probs are independent
    draws around `token_mean`; also each response's mean per-token log-prob, computed from the draws themselves."""
    draws = [rng.normal(token_mean, 1.0, size=n) for n in lengths]
    sums, means = np.array([d.sum() for d in draws]), np.array([d.mean() if len(d) else np.nan for d in draws])
    return ({"chosen": a[:n_pairs], "rejected": a[n_pairs:]} for a in (sums, means))


def _both(scores: dict) -> np.ndarray:
    return np.concatenate([scores["chosen"], scores["rejected"]])


def test_per_token_log_probs_remove_the_correlation_that_length_alone_makes():
    rng = np.random.default_rng(0)
    n_pairs = 1000
    lengths = rng.integers(5, 400, size=2 * n_pairs)
    policy, policy_means = _pair_scores(rng, n_pairs, -2.0, lengths)
    ref, ref_means = _pair_scores(rng, n_pairs, -2.5, lengths)  # independent of the policy token by token
    tokens = {"chosen": lengths[:n_pairs], "rejected": lengths[n_pairs:]}
    got = similarity(policy, ref, tokens)

    sequence_corr = float(np.corrcoef(_both(policy), _both(ref))[0, 1])  # the former logp_corr
    sequence_ratio = float(np.mean(_both(policy) - _both(ref)))  # the former pair_log_ratio
    assert sequence_corr > 0.99, sequence_corr  # measured 0.997
    assert abs(got["token_logp_corr"]) < 0.1, got  # measured 0.045
    assert got["token_logp_corr"] == pytest.approx(np.corrcoef(_both(policy_means), _both(ref_means))[0, 1], abs=1e-9)
    assert sequence_ratio > 50, sequence_ratio  # measured 103: the per-token gap of 0.5 times the mean length
    assert got["token_log_ratio"] == pytest.approx(0.5, abs=0.02)


def test_a_response_of_no_tokens_is_left_out():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 30, size=40)
    lengths[3] = 0
    policy, policy_means = _pair_scores(rng, 20, -2.0, lengths)
    ref, ref_means = _pair_scores(rng, 20, -2.0, lengths)
    got = similarity(policy, ref, {"chosen": lengths[:20], "rejected": lengths[20:]})
    p, r = (np.delete(_both(m), 3) for m in (policy_means, ref_means))
    assert got["token_log_ratio"] == pytest.approx(np.mean(p - r), abs=1e-12)
    assert got["token_logp_corr"] == pytest.approx(np.corrcoef(p, r)[0, 1], abs=1e-12)


def _inputs(measures: dict[str, np.ndarray], strength: np.ndarray, win: np.ndarray, objective: str = "dpo"):
    """`fit`'s arguments for one objective: best rows and the references' similarity.json entries."""
    best = [{"objective": objective, "reference": f"r{i}", "win_rate": float(w)} for i, w in enumerate(win)]
    sims = {
        f"r{i}": {"kind": "fixed", "strength": float(strength[i])} | {m: float(v[i]) for m, v in measures.items()}
        for i in range(len(win))
    }
    return best, sims


def test_the_fit_given_strength_matches_hand_formulas():
    rng = np.random.default_rng(2)
    n = 8
    strength = rng.normal(size=n)
    kl = 0.7 * strength + rng.normal(size=n)
    win = 0.5 + 0.04 * strength - 0.02 * kl + 0.01 * rng.normal(size=n)
    result = fit(*_inputs({"sft_ref_kl": kl}, strength, win))
    (got,) = result["fits"]
    assert got["n"] == n

    design = np.column_stack([np.ones(n), kl, strength])
    coef, rss, *_ = np.linalg.lstsq(design, win, rcond=None)
    assert (got["coef_intercept"], got["coef_similarity"], got["coef_strength"]) == pytest.approx(tuple(coef))
    # each slope's variance by the textbook formula: s^2 / (sum of squares of its regressor * (1 - R^2 with the other))
    s2, r_ks = rss[0] / (n - 3), np.corrcoef(kl, strength)[0, 1]
    t975 = 2.5705818366147395  # t quantile, 5 degrees of freedom
    for name, x, b in (("similarity", kl, coef[1]), ("strength", strength, coef[2])):
        half = t975 * math.sqrt(s2 / (np.sum((x - x.mean()) ** 2) * (1 - r_ks**2)))
        assert (got[f"coef_{name}_lo"], got[f"coef_{name}_hi"]) == pytest.approx((b - half, b + half)), name

    # the partial correlation is the correlation of what strength leaves of each
    around = np.column_stack([np.ones(n), strength])
    win_left, kl_left = (v - around @ np.linalg.lstsq(around, v, rcond=None)[0] for v in (win, kl))
    partial = float(np.corrcoef(win_left, kl_left)[0, 1])
    assert got["partial_r"] == pytest.approx(partial, abs=1e-12)
    z_half = 1.959963984540054 / math.sqrt(n - 4)
    assert (got["partial_r_lo"], got["partial_r_hi"]) == pytest.approx(
        (math.tanh(math.atanh(partial) - z_half), math.tanh(math.atanh(partial) + z_half))
    )
    t = partial * math.sqrt(n - 3) / math.sqrt(1 - partial**2)
    assert got["partial_p"] == pytest.approx(2 * stats.t.sf(abs(t), n - 3), rel=1e-9)
    assert got["r"] == pytest.approx(np.corrcoef(kl, win)[0, 1], abs=1e-12)
    (strength_fit,) = result["strength_fits"]  # ref_pref_acc is absent here
    assert strength_fit["measure"] == "strength"
    assert strength_fit["r"] == pytest.approx(np.corrcoef(strength, win)[0, 1], abs=1e-12)
    json.dumps(result)  # it goes into results.json


def test_holm_on_hand_worked_cases():
    # sorted p: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 to keep the order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.02, 0.5]) == pytest.approx([0.04, 0.5])
    assert holm([0.5, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_each_objective_is_corrected_over_its_own_similarity_measures():
    rng = np.random.default_rng(3)
    best, sims = [], {}
    for objective in ("dpo", "ipo"):
        strength = rng.normal(size=7)
        measures = {m: rng.normal(size=7) for m in SIMILARITY_MEASURES}
        win = 0.5 + 0.05 * strength + 0.03 * measures["token_logp_corr"] + 0.005 * rng.normal(size=7)
        b, s = _inputs(measures, strength, win, objective)
        best += b
        sims |= {f"{objective}-{name}": v for name, v in s.items()}
        for row in b:
            row["reference"] = f"{objective}-{row['reference']}"
    result = fit(best, sims)
    for objective in ("dpo", "ipo"):
        rows = sorted((f for f in result["fits"] if f["objective"] == objective), key=lambda f: f["partial_p"])
        assert len(rows) == 3
        running = 0.0
        for i, f in enumerate(rows):  # Holm by hand: (m - i) p_(i), never below the previous, at most 1
            running = max(running, min(1.0, (3 - i) * f["partial_p"]))
            assert f["partial_p_holm"] == pytest.approx(running)
            assert f["survives_holm"] == (running < 0.05)
        assert rows[0]["measure"] == "token_logp_corr" and rows[0]["survives_holm"]
    assert "Similarity slopes that survive Holm's correction at 5%, given strength: dpo: token_logp_corr, " in (
        markdown(result)
    )


def test_when_only_strength_matters_the_fit_given_strength_rarely_finds_similarity():
    """Win rate depends on strength alone; three similarity measures each correlate about 0.9 with strength, over 8
    references. Pearson's r on each measure alone finds a "significant" similarity effect most of the time; the
    slope given strength, Holm-corrected, about 5% of the time, as a 5% test should."""
    rng = np.random.default_rng(4)
    simple, given_strength, holm_adjusted = [], [], []
    for _ in range(300):
        strength = rng.normal(size=8)
        measures = {m: 0.9 * strength + math.sqrt(1 - 0.9**2) * rng.normal(size=8) for m in SIMILARITY_MEASURES}
        win = 0.5 + 0.05 * strength + 0.02 * rng.normal(size=8)
        fits = fit(*_inputs(measures, strength, win))["fits"]
        assert len(fits) == 3
        simple.append([f["p"] < 0.05 for f in fits])
        given_strength.append([f["partial_p"] < 0.05 for f in fits])
        holm_adjusted.append([f["survives_holm"] for f in fits])
    simple_any, holm_any = np.any(simple, axis=1).mean(), np.any(holm_adjusted, axis=1).mean()
    rates = (
        f"r alone: {np.mean(simple):.3f} per measure, {simple_any:.3f} any; given strength: "
        f"{np.mean(given_strength):.3f} per measure, Holm {holm_any:.3f} any"
    )
    assert np.mean(simple) > 0.6 and simple_any > 0.8, rates  # measured 0.841 per measure, 0.960 any
    assert np.mean(given_strength) < 0.08 and holm_any < 0.09, rates  # measured 0.049 per measure, 0.063 any


def test_too_few_references_are_named_and_the_fit_is_plotted(tmp_path):
    rng = np.random.default_rng(5)
    strength, kl = rng.normal(size=5), rng.normal(size=5)
    win = 0.5 + 0.05 * strength + 0.01 * rng.normal(size=5)
    short = fit(*_inputs({"sft_ref_kl": kl[:4]}, strength[:4], win[:4]))
    assert short["fits"] == [] and short["too_few_references"] == {"dpo": 4}
    assert "dpo: 4 fixed references" in markdown(short) and "needs 5" in markdown(short)
    assert not plot(short, tmp_path / "none.png", "t") and not (tmp_path / "none.png").exists()

    enough = fit(*_inputs({"sft_ref_kl": kl}, strength, win))
    assert [f["measure"] for f in enough["fits"]] == ["sft_ref_kl"] and enough["too_few_references"] == {}
    assert plot(enough, tmp_path / "similarity.png", "t") and (tmp_path / "similarity.png").stat().st_size > 10_000


def test_a_measure_that_is_a_line_in_strength_is_not_fitted():
    strength = np.arange(6.0)
    win = np.array([0.50, 0.52, 0.51, 0.55, 0.54, 0.58])
    result = fit(*_inputs({"sft_ref_kl": 2 * strength + 1}, strength, win))
    assert result["fits"] == []
    assert result["not_fitted"] == ["dpo: sft_ref_kl (constant, or a line in strength: inseparable from it)"]
