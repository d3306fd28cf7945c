"""Every objective against values computed by hand (math module only) and against TRL 1.16's own loss code.

TRL's code is called, not restated: `DPOTrainer._compute_loss` (the `sigmoid` and `ipo` branches, dpo_trainer.py) runs
on a stand-in trainer whose model returns hand-made per-token log-probs, and `CPOTrainer.cpo_loss` (`simpo`,
experimental/cpo/cpo_trainer.py) on the length-averaged log-probs TRL's `get_batch_logps` computes from logits."""

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dpo_ref.objectives import OBJECTIVES, PolicyLogps, ReferenceLogps


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def logsig(x):
    return -math.log1p(math.exp(-x))


# one pair: policy log-probs, reference log-probs, token counts
PW, PL, RW, RL, NW, NL = -10.0, -14.0, -11.0, -12.0, 5.0, 8.0


def call(name, beta, gamma=0.0, ref=(RW, RL), policy=(PW, PL, NW, NL)):
    loss, cr, rr = OBJECTIVES[name].fn(PolicyLogps(*map(t, policy)), ReferenceLogps(t(ref[0]), t(ref[1])), beta, gamma)
    return loss.item(), cr.item(), rr.item()


# --- hand-computed values -------------------------------------------------------------------------------------------


def test_dpo_matches_hand_computed_value():
    # beta * [(PW - RW) - (PL - RL)] = 0.1 * [1 - (-2)] = 0.3 ; loss = -log sigmoid(0.3) = 0.554355...
    loss, cr, rr = call("dpo", 0.1)
    assert loss == pytest.approx(-logsig(0.3), abs=1e-12)
    assert loss == pytest.approx(0.5543552, abs=1e-7)
    assert cr == pytest.approx(0.1) and rr == pytest.approx(-0.2)


def test_posterior_hand_computed():
    # no reference: -log sigmoid(2 * (-10 - (-14))) = -log sigmoid(8) = log(1 + e^-8)
    loss, cr, rr = call("posterior", 2.0)
    assert loss == pytest.approx(math.log(1 + math.exp(-8.0)), abs=1e-12)
    assert cr == pytest.approx(-20.0) and rr == pytest.approx(-28.0)


def test_likelihood_hand_computed():
    # the reference columns hold p_LM(yw) = e^-7, p_LM(yl) = e^-9.5 (the response scored with no prompt):
    # margin 0.01 * [(-10 + 7) - (-14 + 9.5)] = 0.01 * 1.5 = 0.015 ; loss = log(1 + e^-0.015)
    loss, cr, rr = call("likelihood", 0.01, ref=(math.log(math.exp(-7.0)), math.log(math.exp(-9.5))))
    assert loss == pytest.approx(math.log(1 + math.exp(-0.015)), abs=1e-12)
    assert loss == pytest.approx(0.6856753, abs=1e-7)
    assert cr == pytest.approx(-0.03) and rr == pytest.approx(-0.045)


def test_simpo_hand_computed():
    # beta*(PW/NW - PL/NL) - gamma = 2*(-2 + 1.75) - 0.5 = -1.0 ; loss = log(1 + e^1)
    loss, cr, rr = call("simpo", 2.0, gamma=0.5)
    assert loss == pytest.approx(math.log(1 + math.e), abs=1e-12)
    assert loss == pytest.approx(1.3132617, abs=1e-7)
    assert cr == pytest.approx(-4.0) and rr == pytest.approx(-3.5)


def trl_call(loss_type, beta, ref=(RW, RL)):
    """TRL's loss code (`trl_dpo_loss`) on the pair of `call`, its summed log-probs spread evenly over its tokens."""
    tok_w, tok_l = (
        torch.full((int(NW),), PW / NW, dtype=torch.float64),
        torch.full((int(NL),), PL / NL, dtype=torch.float64),
    )
    return trl_dpo_loss(loss_type, beta, tok_w, tok_l, *ref)


def test_ipo_hand_computed():
    # `ipo` is TRL's own loss type (dporef runs TRL's code for it): checked against the IPO formula by hand.
    # h = (PW-RW)/NW - (PL-RL)/NL = 1/5 - (-2/8) = 0.45 ; loss = (0.45 - 1/(2*0.5))^2 = 0.3025
    loss, cr, rr = trl_call("ipo", 0.5)
    assert loss == pytest.approx(0.3025, abs=1e-12)
    assert cr == pytest.approx(0.5) and rr == pytest.approx(-1.0)  # beta * summed log-ratio, as TRL logs it


# --- step 1: the reference equals the initial policy ----------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.005, 0.1, 10.0])
def test_dpo_is_ln2_when_policy_equals_reference(beta):
    loss, cr, rr = call("dpo", beta, ref=(PW, PL))
    assert loss == pytest.approx(0.6931471805599453, abs=1e-12) and cr == 0 and rr == 0


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_is_the_squared_target_when_policy_equals_reference(beta):
    # h = 0 at step 1, so the loss is (0 - 1/(2 beta))^2 = 1/(4 beta^2): 25, 1, 1/16
    loss, cr, rr = trl_call("ipo", beta, ref=(PW, PL))
    assert loss == pytest.approx((0 - 1 / (2 * beta)) ** 2, abs=1e-12)
    assert loss == pytest.approx({0.1: 25.0, 0.5: 1.0, 2.0: 0.0625}[beta], abs=1e-12)
    assert cr == 0 and rr == 0


def test_simpo_at_step_one_on_a_hand_made_case():
    # SimPO has no reference; at step 1 it is the SFT model's own average log-probs that matter:
    # chosen -6 over 4 tokens (-1.5 per token), rejected -3 over 3 tokens (-1.0 per token), beta 2.5, gamma 0.5:
    # 2.5 * (-1.5 - (-1.0)) - 0.5 = -1.75 ; loss = -log sigmoid(-1.75) = log(1 + e^1.75)
    loss, cr, rr = call("simpo", 2.5, gamma=0.5, policy=(-6.0, -3.0, 4.0, 3.0))
    assert loss == pytest.approx(math.log(1 + math.exp(1.75)), abs=1e-12)
    assert loss == pytest.approx(1.9102242, abs=1e-7)
    assert cr == pytest.approx(-3.75) and rr == pytest.approx(-2.5)
    # equal average log-probs: only the margin is left, -log sigmoid(-gamma) = log(1 + e^gamma)
    loss, _, _ = call("simpo", 2.5, gamma=0.5, policy=(-6.0, -4.5, 4.0, 3.0))
    assert loss == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-12)


def test_likelihood_at_step_one_on_a_hand_made_case():
    # policy = SFT at step 1: log p(yw|x) = -4, log p(yl|x) = -9 ; the SFT model with no prompt: log p_LM(yw) = -6,
    # log p_LM(yl) = -8. Margin beta * [(-4 + 6) - (-9 + 8)] = 0.5 * 3 = 1.5 ; loss = log(1 + e^-1.5), not ln 2:
    # the likelihood reference is not the initial policy.
    loss, cr, rr = call("likelihood", 0.5, ref=(-6.0, -8.0), policy=(-4.0, -9.0, 3.0, 5.0))
    assert loss == pytest.approx(math.log(1 + math.exp(-1.5)), abs=1e-12)
    assert loss == pytest.approx(0.2014133, abs=1e-7)
    assert cr == pytest.approx(1.0) and rr == pytest.approx(-0.5)


def test_posterior_at_step_one_is_not_ln2():
    # no reference: the loss at step 1 is -log sigmoid(beta * (log p(yw|x) - log p(yl|x))), e.g. 1 * (-4 + 9) = 5
    loss, _, _ = call("posterior", 1.0, ref=(123.0, -45.0), policy=(-4.0, -9.0, 3.0, 5.0))  # the ref is ignored
    assert loss == pytest.approx(math.log(1 + math.exp(-5.0)), abs=1e-12)


# --- TRL's own code on the same log-probs ---------------------------------------------------------------------------


def _pairs(n=6, seed=0):
    """n pairs of per-token log-probs (chosen, rejected) of different lengths, and reference sums."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        nw, nl = (int(x) for x in torch.randint(1, 12, (2,), generator=g))
        tok_w = -torch.rand(nw, generator=g, dtype=torch.float64) * 3
        tok_l = -torch.rand(nl, generator=g, dtype=torch.float64) * 3
        ref_w, ref_l = (-(torch.rand(2, generator=g, dtype=torch.float64) * 20)).tolist()
        pairs.append((tok_w, tok_l, ref_w, ref_l))
    return pairs


def trl_dpo_loss(loss_type: str, beta: float, tok_w, tok_l, ref_w: float, ref_l: float):
    """TRL 1.16's `DPOTrainer._compute_loss` on one pair: a stand-in model returns the given per-token log-probs
    (TRL's fused head gives 0 outside the completion), the reference log-probs come as precomputed columns.
    Returns (loss, rewards/chosen, rewards/rejected) as TRL computes and logs them."""
    from trl import DPOTrainer

    width = 2 + max(len(tok_w), len(tok_l))  # two prompt tokens, then the completion, right padding
    completion_mask = torch.zeros(2, width, dtype=torch.long)
    log_probs = torch.zeros(2, width - 1, dtype=torch.float64)
    for row, tokens in enumerate((tok_w, tok_l)):
        completion_mask[row, 2 : 2 + len(tokens)] = 1
        log_probs[row, 1 : 1 + len(tokens)] = tokens  # position t holds log p(token t+1)
    outputs = SimpleNamespace(
        log_probs=log_probs,
        entropy=torch.zeros_like(log_probs),
        mean_logits=torch.zeros_like(log_probs),
        is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
    )
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2, width, dtype=torch.long),
        "attention_mask": torch.ones(2, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": t(ref_w),
        "ref_rejected_logps": t(ref_l),
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, False)
    metrics = trainer._metrics["train"]
    return loss.item(), metrics["rewards/chosen"][0], metrics["rewards/rejected"][0]


def ours(name, beta, tok_w, tok_l, ref_w, ref_l, gamma=0.0):
    policy = PolicyLogps(t(tok_w.sum().item()), t(tok_l.sum().item()), t(len(tok_w)), t(len(tok_l)))
    loss, cr, rr = OBJECTIVES[name].fn(policy, ReferenceLogps(t(ref_w), t(ref_l)), beta, gamma)
    return loss.item(), cr.item(), rr.item()


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("name,loss_type", [("dpo", "sigmoid")])
def test_conditional_objectives_equal_trls_loss(name, loss_type, beta):
    for tok_w, tok_l, ref_w, ref_l in _pairs():
        expected = trl_dpo_loss(loss_type, beta, tok_w, tok_l, ref_w, ref_l)
        assert ours(name, beta, tok_w, tok_l, ref_w, ref_l) == pytest.approx(expected, abs=1e-12, rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_posterior_equals_trls_sigmoid_loss_with_zero_reference_columns(beta):
    for tok_w, tok_l, ref_w, ref_l in _pairs(seed=1):
        expected = trl_dpo_loss("sigmoid", beta, tok_w, tok_l, 0.0, 0.0)
        assert ours("posterior", beta, tok_w, tok_l, ref_w, ref_l) == pytest.approx(expected, abs=1e-12, rel=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.1])
def test_likelihood_equals_trls_sigmoid_loss_with_p_lm_columns(beta):
    # the likelihood objective reads the p_LM(y) columns where DPO reads p_ref(y|x); TRL sees them as its ref columns
    for tok_w, tok_l, p_lm_w, p_lm_l in _pairs(seed=2):
        expected = trl_dpo_loss("sigmoid", beta, tok_w, tok_l, p_lm_w, p_lm_l)
        assert ours("likelihood", beta, tok_w, tok_l, p_lm_w, p_lm_l) == pytest.approx(expected, abs=1e-12, rel=1e-12)


def test_trl_sees_ln2_at_step_one_too():
    # the stand-in is TRL's real code path: with the reference equal to the policy it gives ln 2 and zero rewards
    tok_w, tok_l, _, _ = _pairs(1)[0]
    loss, cr, rr = trl_dpo_loss("sigmoid", 0.1, tok_w, tok_l, tok_w.sum().item(), tok_l.sum().item())
    assert loss == pytest.approx(math.log(2), abs=1e-12) and cr == 0 and rr == 0


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 1.6), (0.5, 0.0)])
def test_simpo_equals_cpo_trainers_simpo_loss(beta, gamma):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(3)
    vocab, width = 7, 14
    logits = torch.randn(8, width, vocab, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, vocab, (8, width), generator=g)
    for row in range(8):  # a prompt of 1-4 tokens, a completion, then padding
        start, end = 1 + row % 4, width - row % 3
        labels[row, :start] = -100
        labels[row, end:] = -100
    sums = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    avgs = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    lengths = (labels[:, 1:] != -100).sum(-1).to(torch.float64)
    cpo = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )
    expected, exp_cr, exp_rr = CPOTrainer.cpo_loss(cpo, avgs[:4], avgs[4:])
    policy = PolicyLogps(sums[:4], sums[4:], lengths[:4], lengths[4:])
    loss, cr, rr = OBJECTIVES["simpo"].fn(policy, ReferenceLogps.zeros_like(policy), beta, gamma)
    assert loss.tolist() == pytest.approx(expected.tolist(), abs=1e-12, rel=1e-12)
    assert cr.tolist() == pytest.approx(exp_cr.tolist(), abs=1e-12) and rr.tolist() == pytest.approx(exp_rr.tolist())
