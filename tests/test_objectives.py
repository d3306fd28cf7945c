"""Every objective against values computed by hand (math module only, no torch maths)."""

import math

import pytest
import torch

from dpo_ref.objectives import OBJECTIVES, PolicyLogps, ReferenceLogps


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def logsig(x):
    return -math.log1p(math.exp(-x))


# one pair: policy log-probs, reference log-probs, token counts
PW, PL, RW, RL, NW, NL = -10.0, -14.0, -11.0, -12.0, 5.0, 8.0


def call(name, beta, gamma=0.0, ref=(RW, RL)):
    policy = PolicyLogps(t(PW), t(PL), t(NW), t(NL))
    loss, cr, rr = OBJECTIVES[name].fn(policy, ReferenceLogps(t(ref[0]), t(ref[1])), beta, gamma)
    return loss.item(), cr.item(), rr.item()


def test_dpo_matches_hand_computed_value():
    # beta * [(PW - RW) - (PL - RL)] = 0.1 * [1 - (-2)] = 0.3 ; loss = -log sigmoid(0.3) = 0.554355...
    loss, cr, rr = call("dpo", 0.1)
    assert loss == pytest.approx(-logsig(0.3), abs=1e-12)
    assert loss == pytest.approx(0.5543552, abs=1e-7)
    assert cr == pytest.approx(0.1) and rr == pytest.approx(-0.2)


def test_dpo_is_ln2_when_policy_equals_reference():
    loss, cr, rr = call("dpo", 0.05, ref=(PW, PL))
    assert loss == pytest.approx(math.log(2), abs=1e-12) and cr == 0 and rr == 0


def test_posterior_is_dpo_with_zero_reference():
    assert call("posterior", 2.0) == pytest.approx(call("dpo", 2.0, ref=(0.0, 0.0)))
    # by hand: -log sigmoid(2 * (-10 + 14)) = -log sigmoid(8)
    assert call("posterior", 2.0)[0] == pytest.approx(-logsig(8.0), abs=1e-12)


def test_likelihood_is_dpo_with_unconditional_columns():
    uncond = (-7.0, -9.5)  # p_LM(yw), p_LM(yl) as the unconditional scoring pass gives them
    assert call("likelihood", 0.01, ref=uncond) == pytest.approx(call("dpo", 0.01, ref=uncond))
    assert call("likelihood", 0.01, ref=uncond)[0] == pytest.approx(-logsig(0.01 * ((-10 + 7) - (-14 + 9.5))))


def test_simpo_hand_computed():
    # beta*(PW/NW - PL/NL) - gamma = 2*(-2 + 1.75) - 0.5 = -1.0
    loss, cr, rr = call("simpo", 2.0, gamma=0.5)
    assert loss == pytest.approx(-logsig(-1.0), abs=1e-12)
    assert cr == pytest.approx(-4.0) and rr == pytest.approx(-3.5)


def test_ipo_hand_computed():
    # h = (PW-RW)/NW - (PL-RL)/NL = 1/5 - (-2/8) = 0.45 ; loss = (0.45 - 1/(2*0.5))^2 = 0.3025
    loss, _, _ = call("ipo", 0.5)
    assert loss == pytest.approx((0.45 - 1.0) ** 2, abs=1e-12)
