"""`kind: bema`: the reference becomes, every `sync_steps` steps, the bias-corrected EMA of the policy's weights
(Block and Zhang 2025, arXiv 2508.00180), computed here by hand from the paper's formulas:

    beta_t = (rho + gamma t)^-kappa,  EMA_t = (1 - beta_t) EMA + beta_t theta_t,  alpha_t = (rho + gamma t)^-eta,
    ref_t = EMA_t + alpha_t (theta_t - theta_0),   with TRL's defaults rho = 10, gamma = 1, kappa = 0.5, eta = 0.2."""

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from dpo_ref.moving import BEMAReference

RHO, GAMMA, KAPPA, ETA = 10.0, 1.0, 0.5, 0.2


def test_the_reference_is_the_bema_of_the_policys_weights_at_each_update(tiny_world, tmp_path):
    from dpo_ref.models import load_model, resolve

    sft = resolve("world:sft", tiny_world)
    policy, reference = load_model(sft, torch.float32), load_model(sft, torch.float32)
    theta0 = {n: p.detach().clone() for n, p in policy.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    callback = BEMAReference(reference, update_freq=2)
    callback.on_train_begin(args, state, control, model=policy)
    ema = {n: p.clone() for n, p in theta0.items()}
    g = torch.Generator().manual_seed(0)
    for t in range(1, 7):
        with torch.no_grad():  # an optimizer step: every weight moves
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        state.global_step = t
        callback.on_step_end(args, state, control, model=policy)
        if t % 2:
            continue
        beta, alpha = (RHO + GAMMA * t) ** -KAPPA, (RHO + GAMMA * t) ** -ETA
        now = dict(policy.named_parameters())
        for name in ema:
            ema[name] = (1 - beta) * ema[name] + beta * now[name].detach()
        ref = dict(reference.named_parameters())
        for name, value in ema.items():
            want = value + alpha * (now[name].detach() - theta0[name])
            assert torch.allclose(ref[name], want, atol=1e-6), (t, name)
        moved = [n for n in ema if not torch.allclose(ref[n], now[n]) and not torch.allclose(ref[n], theta0[n])]
        assert moved  # the reference is neither the policy nor its start: the test sees a real average


@pytest.mark.slow
def test_a_sweep_against_a_bema_reference(run_study, tmp_path):
    sets = [
        "objectives=[{name: dpo, betas: [0.1]}]",
        "references=[{name: bema, model: world:sft, kind: bema, sync_steps: 2}]",
        "train.max_steps=6",
        "eval.max_new_tokens=8",
    ]
    results, _ = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    rows = {r["run_id"]: r for r in results["rows"]}
    assert rows["dpo-bema-b0.1-s0"]["status"] == "done"  # trained against the BEMA reference in memory, evaluated
