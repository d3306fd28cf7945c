"""β-DPO and α-DPO (dpo_ref.reference_methods) against the papers' formulas worked by hand in plain Python floats
(math, statistics): the expected losses, rewards, betas, running statistics and gradients below never call the code
under test. Which pairs β-DPO keeps is random, so the tests read the kept mask and check the rest around it, and
check the sampling itself separately (an outlier is dropped; the keep frequency matches the Gaussian weights)."""

import math
import statistics

import pytest
import torch

from dpo_ref.objectives import PolicyLogps, ReferenceLogps, simpo
from dpo_ref.reference_methods import AlphaDPO, BetaDPO, alpha_dpo


def t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x):  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def batch(pw, pl, rw, rl, nw=None, nl=None, grad=False):
    nw = nw or [1.0] * len(pw)
    nl = nl or [1.0] * len(pw)
    policy = PolicyLogps(t(pw).requires_grad_(grad), t(pl).requires_grad_(grad), t(nw), t(nl))
    return policy, ReferenceLogps(t(rw), t(rl))


def margins(pw, pl, rw, rl):  # M_i = log pi(yw)/pi_ref(yw) - log pi(yl)/pi_ref(yl)
    return [(a - c) - (b - d) for a, b, c, d in zip(pw, pl, rw, rl)]


# --- β-DPO ----------------------------------------------------------------------------------------------------------

BETA0, ALPHA, RHO, MOM = 0.1, 0.6, 0.2, 0.9
B1 = ([-20.0, -31.0, -15.0, -44.0, -27.0], [-24.0, -30.0, -22.0, -41.0, -35.0])
R1 = ([-21.0, -30.0, -16.5, -43.0, -26.0], [-23.0, -31.5, -20.0, -42.0, -33.0])
B2 = ([-18.0, -29.0, -16.0, -40.0, -25.0], [-26.0, -33.0, -21.0, -47.0, -36.0])


def test_beta_dpo_two_batches_match_hand_computation():
    obj = BetaDPO(alpha=ALPHA, rho=RHO, momentum=MOM)
    m0 = sigma = 0.0
    for pw, pl in (B1, B2):
        policy, ref = batch(pw, pl, *R1, grad=True)
        losses, cr, rr = obj(policy, ref, BETA0, 0.0)
        ms = margins(pw, pl, *R1)
        # running threshold and spread, momentum 0.9, updated with this batch before it is used
        m0 = MOM * m0 + (1 - MOM) * statistics.mean(ms)
        sigma = MOM * sigma + (1 - MOM) * statistics.stdev(ms)
        assert obj.m0 == pytest.approx(m0, rel=1e-9) and obj.sigma == pytest.approx(sigma, rel=1e-9)

        kept = obj.last_kept.tolist()
        assert sum(kept) == 4  # floor(5 * (1 - 0.2))
        kept_ms = [x for x, k in zip(ms, kept) if k]
        beta = BETA0 * (1 + ALPHA * (statistics.mean(kept_ms) - m0))
        assert obj.last_beta == pytest.approx(beta, rel=1e-9)

        expected = [5 / 4 * softplus(-beta * x) if k else 0.0 for x, k in zip(ms, kept)]
        assert losses.tolist() == pytest.approx(expected, rel=1e-9)
        assert losses.mean().item() == pytest.approx(statistics.mean(softplus(-beta * x) for x in kept_ms), rel=1e-9)
        assert cr.tolist() == pytest.approx([BETA0 * (a - c) for a, c in zip(pw, R1[0])], rel=1e-9)
        assert rr.tolist() == pytest.approx([BETA0 * (b - d) for b, d in zip(pl, R1[1])], rel=1e-9)

        # filtered pairs get no gradient; kept ones get DPO's at the (constant) batch beta, over k = 4 pairs
        losses.mean().backward()
        grad_w = [-beta * sigmoid(-beta * x) / 4 if k else 0.0 for x, k in zip(ms, kept)]
        assert policy.chosen.grad.tolist() == pytest.approx(grad_w, rel=1e-9)
        assert policy.rejected.grad.tolist() == pytest.approx([-g for g in grad_w], rel=1e-9)
        assert all(g == 0.0 for g, k in zip(policy.chosen.grad.tolist(), kept) if not k)


@pytest.mark.parametrize("alpha", [0.6, 0.3])
def test_beta_goes_up_above_the_threshold_and_down_below(alpha):
    def beta_for(mean_margin):
        obj = BetaDPO(alpha=alpha, rho=0.0, momentum=MOM)  # rho = 0 keeps every pair: the beta is deterministic
        obj.m0, obj.sigma = 1.0, 1.0  # as if left by earlier batches
        ms = [mean_margin - 1.0, mean_margin, mean_margin + 1.0]
        obj(*batch(ms, [0.0] * 3, [0.0] * 3, [0.0] * 3), BETA0, 0.0)
        return obj.last_beta

    up = BETA0 * (1 + alpha * (3.0 - (MOM * 1.0 + (1 - MOM) * 3.0)))  # batch margin 3 > threshold 1.2
    down = max(BETA0 * (1 + alpha * (-1.0 - (MOM * 1.0 + (1 - MOM) * -1.0))), 1e-3)  # margin -1 < threshold 0.8
    assert beta_for(3.0) == pytest.approx(up, rel=1e-9) and up > BETA0
    assert beta_for(-1.0) == pytest.approx(down, rel=1e-9) and down < BETA0
    if alpha == 0.6:  # 0.1 * (1 - 0.6 * 1.8) < 0: floored, as the official code does
        assert down == 1e-3


@pytest.mark.parametrize(("n", "rho", "k"), [(5, 0.2, 4), (6, 0.2, 4), (4, 0.5, 2), (20, 0.9, 2), (1, 0.2, 1)])
def test_filtering_keeps_floor_of_n_times_one_minus_rho(n, rho, k):
    obj = BetaDPO(alpha=ALPHA, rho=rho)
    ms = [0.3 * i - 1.0 for i in range(n)]
    losses, _, _ = obj(*batch(ms, [0.0] * n, [0.0] * n, [0.0] * n), BETA0, 0.0)
    assert int(obj.last_kept.sum()) == k and sum(x != 0.0 for x in losses.tolist()) == k


def test_outlier_far_from_the_threshold_is_the_pair_dropped():
    obj = BetaDPO(alpha=ALPHA, rho=0.2)
    obj.m0, obj.sigma = 0.0, 1.0
    ms = [0.1, -0.2, 0.3, 0.0, 40.0]
    obj(*batch(ms, [0.0] * 5, [0.0] * 5, [0.0] * 5), BETA0, 0.0)
    # M0 = 0.1 * 8.04, sigma = 0.9 + 0.1 * stdev ~ 2.69: the outlier's weight is e^-106, the others' ~ 1
    assert obj.last_kept.tolist() == [True, True, True, True, False]


def test_kept_pairs_are_drawn_in_proportion_to_the_gaussian_weight():
    obj = BetaDPO(alpha=ALPHA, rho=0.5, generator=torch.Generator().manual_seed(1))  # keeps 1 of 2
    ms, draws, first = [0.0, 1.0], 1000, 0
    for _ in range(draws):
        obj.m0, obj.sigma = 0.0, 1.0
        obj(*batch(ms, [0.0] * 2, [0.0] * 2, [0.0] * 2), BETA0, 0.0)
        first += bool(obj.last_kept[0])
    m0 = (1 - MOM) * statistics.mean(ms)
    sigma = MOM * 1.0 + (1 - MOM) * statistics.stdev(ms)
    w = [math.exp(-0.5 * ((x - m0) / sigma) ** 2) for x in ms]
    p = w[0] / sum(w)  # ~0.617: neither uniform (0.5) nor always the closer pair (1.0)
    assert first / draws == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / draws))


# --- α-DPO ----------------------------------------------------------------------------------------------------------

PW = [-40.0, -25.0, -60.0, -12.0, -33.0]
PL = [-55.0, -24.0, -80.0, -30.0, -31.0]
RW = [-42.0, -26.5, -58.0, -13.0, -35.0]
RL = [-50.0, -23.0, -83.0, -27.0, -30.0]
NW = [10.0, 6.0, 20.0, 4.0, 11.0]
NL = [12.0, 8.0, 16.0, 9.0, 7.0]
BETA, GAMMA = 2.5, 0.5  # gamma absolute: the official configs' gamma_beta_ratio 0.2 times beta


def alpha_hand(alpha, center=None, scale=None, pw=PW, pl=PL, rw=RW, rl=RL, nw=NW, nl=NL):
    """The paper's loss by hand: u = beta*(pi_w/|yw| - pi_l/|yl|) - gamma - beta*alpha*z, loss = log(1 + e^-u)."""
    ms = [(a - c) / p - (b - d) / q for a, b, c, d, p, q in zip(pw, pl, rw, rl, nw, nl)]
    center = statistics.mean(ms) if center is None else center
    scale = statistics.stdev(ms) if scale is None else scale
    us = [
        BETA * (a / p - b / q) - GAMMA - BETA * alpha * (x - center) / scale
        for a, b, p, q, x in zip(pw, pl, nw, nl, ms)
    ]
    cr = [BETA * ((1 - alpha) * a / p + alpha * c / p) for a, c, p in zip(pw, rw, nw)]
    rr = [BETA * ((1 - alpha) * b / q + alpha * d / q) for b, d, q in zip(pl, rl, nl)]
    return [softplus(-u) for u in us], cr, rr, us


def test_alpha_dpo_with_alpha_zero_is_simpo():
    policy, ref = batch(PW, PL, RW, RL, NW, NL)
    for got, want in zip(alpha_dpo(policy, ref, BETA, GAMMA, 0.0), simpo(policy, ref, BETA, GAMMA)):
        assert got.tolist() == pytest.approx(want.tolist(), rel=1e-9)


def test_alpha_dpo_matches_hand_formula():
    losses, cr, rr = alpha_dpo(*batch(PW, PL, RW, RL, NW, NL), BETA, GAMMA, 0.2)
    want_losses, want_cr, want_rr, _ = alpha_hand(0.2)
    assert losses.tolist() == pytest.approx(want_losses, rel=1e-9)
    assert cr.tolist() == pytest.approx(want_cr, rel=1e-9) and rr.tolist() == pytest.approx(want_rr, rel=1e-9)
    assert losses.tolist() != pytest.approx(alpha_hand(0.0)[0], rel=1e-3)  # the adaptive margin does change it


def test_alpha_dpo_gradient_skips_the_stop_gradient_margin():
    policy, ref = batch(PW, PL, RW, RL, NW, NL, grad=True)
    alpha_dpo(policy, ref, BETA, GAMMA, 0.2)[0].mean().backward()
    # d/d log pi(yw) of mean_i log(1 + e^-u_i) = -sigmoid(-u_i) * beta / |yw| / n: only SimPO's term, none from z
    us = alpha_hand(0.2)[3]
    assert policy.chosen.grad.tolist() == pytest.approx([-sigmoid(-u) * BETA / p / 5 for u, p in zip(us, NW)], rel=1e-9)
    assert policy.rejected.grad.tolist() == pytest.approx(
        [sigmoid(-u) * BETA / q / 5 for u, q in zip(us, NL)], rel=1e-9
    )


def test_alpha_dpo_single_pair_has_zero_z():
    losses, _, _ = alpha_dpo(*batch(PW[:1], PL[:1], RW[:1], RL[:1], NW[:1], NL[:1]), BETA, GAMMA, 0.2)
    assert losses.tolist() == pytest.approx([softplus(-(BETA * (PW[0] / NW[0] - PL[0] / NL[0]) - GAMMA))], rel=1e-9)


def test_alpha_dpo_running_normalisation_over_two_batches():
    obj = AlphaDPO(alpha=0.2, momentum=MOM)
    pw2 = [x - 3.0 for x in PW]
    center = scale = 0.0
    for pw in (PW, pw2):
        losses, _, _ = obj(*batch(pw, PL, RW, RL, NW, NL), BETA, GAMMA)
        ms = [(a - c) / p - (b - d) / q for a, b, c, d, p, q in zip(pw, PL, RW, RL, NW, NL)]
        center = MOM * center + (1 - MOM) * statistics.mean(ms)
        scale = MOM * scale + (1 - MOM) * statistics.stdev(ms)
        assert obj.center == pytest.approx(center, rel=1e-9) and obj.scale == pytest.approx(scale, rel=1e-9)
        assert losses.tolist() == pytest.approx(alpha_hand(0.2, center, scale, pw=pw)[0], rel=1e-9)


@pytest.mark.slow
def test_beta_dpo_trains_with_its_beta_logged_and_validation_leaves_its_statistics(scored_pairs, tmp_path):
    """beta_dpo through dporef's trainer on the world's pairs: the beta of each step in the history, equal to what the
    trainer's training instance last took; a validation pass runs on its own instance, so it leaves M0 as it was."""
    from dpo_ref.config import ObjectiveGrid, RunSpec, TrainConfig
    from dpo_ref.models import load_model
    from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config

    sft, _, tok, _, data = scored_pairs
    grid = ObjectiveGrid(name="beta_dpo", betas=[0.1], rho=0.25)
    run = RunSpec(run_id="b", objective="beta_dpo", reference="strong", beta=0.1, seed=0, params=grid.params())
    cfg = TrainConfig(max_steps=2, batch_size=8, logging_steps=1, precision="fp32")
    trainer = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32),
        args=dpo_config(cfg, run, tmp_path / "out", 1),
        train_dataset=data,
        eval_dataset=data,
        processing_class=tok,
        objective="beta_dpo",
        params=run.params,
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    training = trainer.losses["train"]
    assert run.params == {"alpha": 0.6, "rho": 0.25} and training.rho == 0.25
    assert [h["step"] for h in logged] == [1, 2] and all(math.isfinite(h["loss"]) for h in logged)
    assert logged[-1]["beta"] == pytest.approx(training.last_beta) and logged[0]["beta"] != logged[1]["beta"]
    before = training.m0
    trainer.evaluate()
    assert training.m0 == before and trainer.losses["eval"].m0 != 0.0
