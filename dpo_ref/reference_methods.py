"""Two ways of handling the reference that appeared after the DPO reference-policy paper, as objectives over grouped
log-probs (the signature of `dpo_ref.objectives`: per-pair loss, chosen reward, rejected reward).

Both follow their authors' official code where the paper's text leaves a choice open, and say where.
`BetaDPO` (dynamic beta) and `AlphaDPO` (running normalisation) are stateful across batches, so they are objects;
`alpha_dpo` is the pure loss.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .pair_logps import Loss, PolicyLogps, ReferenceLogps


class BetaDPO:
    """β-DPO (Wu et al. 2024, arXiv:2407.08639): DPO whose beta is recalibrated on every batch from the batch's
    reward margins, computed on a batch thinned of outlier pairs.

        M_i = log πθ(yw|x)/πref(yw|x) − log πθ(yl|x)/πref(yl|x);  M0 ← m·M0 + (1−m)·mean(M),  σ ← m·σ + (1−m)·std(M)
        keep ⌊n(1−ρ)⌋ pairs drawn ∝ exp(−(M_i−M0)²/2σ²);  β = β0·(1 + α(mean_kept(M) − M0));  ℓ_i = −log σ(sg(β)·M_i)

    Choices, all as in the official code (github.com/junkangwu/beta-DPO, trainers.py, `preference_loss` and
    `update_and_sync_tensor_mean`), which the paper's text does not pin down:
    - M is the log-ratio margin without beta (the code's `A_gap`), so alpha is in units of nats.
    - M0 and σ start at 0 and are updated with this batch *before* it is filtered (so the first batch sees
      M0 = (1−m)·mean); std is the sample (Bessel) standard deviation, as `torch.std`.
    - rho is the *filtering* ratio, the fraction dropped (paper's ρ, the code's `loss.mode_weight`, README "filtering
      ratio=0.2"): k = ⌊n(1−ρ)⌋ pairs are kept, at least 1 (the code's `int()` keeps 0 of a single pair and gets a
      NaN beta), with 1e-9 of slack so float error (10·(1−0.9) = 0.999…) does not drop a pair.
    - The kept pairs are drawn without replacement with probability ∝ their Gaussian weight (`torch.multinomial`
      in the code); here by an exponential race on log-weights, the same distribution, but no failure when every
      weight underflows to 0. σ is floored at 1e-8 for the same reason.
    - beta comes from the kept pairs' mean margin, is floored at 1e-3 and carries no gradient.
    - Rewards are β0·log-ratio for every pair (base beta, filtered pairs included), as the code logs them.
    - Each call sees one process's batch; the official code gathers margins over all processes first.
    gamma is unused (DPO has no margin). Filtered pairs contribute 0 and kept ones are scaled by n/k, so
    `losses.mean()` is the mean over the kept pairs, the code's `masked_losses.sum() / mask.sum()`.
    The official code updates M0 and σ on evaluation batches too; whoever calls this decides.
    """

    def __init__(
        self, alpha: float = 0.6, rho: float = 0.2, momentum: float = 0.9, generator: torch.Generator | None = None
    ):
        self.alpha, self.rho, self.momentum, self.generator = alpha, rho, momentum, generator
        self.m0 = 0.0  # the running threshold M0
        self.sigma = 0.0  # the running standard deviation of M
        self.last_beta = math.nan  # the last batch's beta, for the trainer to log
        self.last_kept: Tensor | None = None  # the last batch's mask of kept pairs

    def __call__(self, policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0) -> Loss:
        chosen_ratio, rejected_ratio = policy.chosen - ref.chosen, policy.rejected - ref.rejected
        margin = chosen_ratio - rejected_ratio
        m, n = margin.detach(), margin.numel()
        self.m0 = self.momentum * self.m0 + (1 - self.momentum) * m.mean().item()
        self.sigma = self.momentum * self.sigma + (1 - self.momentum) * (m.std().item() if n > 1 else 0.0)
        k = max(1, math.floor(n * (1 - self.rho) + 1e-9))
        log_weight = -0.5 * ((m - self.m0) / max(self.sigma, 1e-8)) ** 2
        race = torch.empty_like(m).exponential_(generator=self.generator).log()  # top-k of log w − log E ~ w
        kept = torch.zeros(n, dtype=torch.bool, device=m.device)
        kept[(log_weight - race).topk(k).indices] = True
        self.last_kept = kept
        self.last_beta = max(beta * (1 + self.alpha * (m[kept].mean().item() - self.m0)), 1e-3)
        losses = -F.logsigmoid(self.last_beta * margin) * kept.to(margin.dtype) * (n / k)
        return losses, *self.rewards(policy, ref, beta, gamma)

    def rewards(
        self, policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """β0·log-ratio of chosen and rejected (no state read or changed: the ranking evaluation calls it)."""
        return beta * (policy.chosen - ref.chosen), beta * (policy.rejected - ref.rejected)


def _per_token(policy: PolicyLogps, ref: ReferenceLogps) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Policy and reference log-probs of chosen and rejected divided by the completions' token counts (both models
    by the same counts, as the official code scores both with `ln: true`)."""
    len_w, len_l = policy.chosen_len.clamp(min=1), policy.rejected_len.clamp(min=1)
    return policy.chosen / len_w, policy.rejected / len_l, ref.chosen / len_w, ref.rejected / len_l


def _margin(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """M, the length-normalised log-ratio margin, without gradient."""
    return ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()


def alpha_dpo(
    policy: PolicyLogps,
    ref: ReferenceLogps,
    beta: float,
    gamma: float,
    alpha: float,
    *,
    center: float | None = None,
    scale: float | None = None,
    eps: float = 1e-6,
) -> Loss:
    """α-DPO (Wu et al. 2024, arXiv:2410.10148): SimPO whose target margin adapts per pair, from the implicit
    reference π̂ref ∝ U(y|x)·(πθ/πref)^α that mixes a uniform reference with the policy/reference ratio.

        ℓ = −log σ(β·[log πθ(yw|x)/|yw| − log πθ(yl|x)/|yl|] − γ − β·α·sg(z)),  z = (M − center)/scale,
        M = log[πθ(yw|x)/πref(yw|x)]/|yw| − log[πθ(yl|x)/πref(yl|x)]/|yl|

    As in the official code (github.com/junkangwu/alpha-DPO, scripts/dpo_trainer.py, the `alpha-dpo` branch):
    z is computed without gradient; α multiplies β·z (the code's logits are Δ − sg(α·z + γ/β), times β). gamma is
    the absolute margin of `objectives.simpo` (the code's `gamma_beta_ratio` is γ/β), so alpha = 0 is SimPO exactly.
    Rewards β·[(1−α)·log πθ(y|x) + α·log πref(y|x)]/|y| are the code's (log π̂ref with U dropped).
    Normalisation: by default z-scores over this batch (mean and sample std); the official code instead uses running
    (momentum 0.9) mean and std, which `AlphaDPO` keeps and passes as center and scale. scale is floored at eps so
    a batch of one pair, or of equal margins, gives z = 0 where the code would divide by zero.
    """
    chosen, rejected, ref_chosen, ref_rejected = _per_token(policy, ref)
    margin = _margin(chosen, rejected, ref_chosen, ref_rejected)
    if center is None:
        center = margin.mean()
    if scale is None:
        scale = margin.std() if margin.numel() > 1 else margin.new_zeros(())
    z = (margin - center) / torch.as_tensor(scale, dtype=margin.dtype, device=margin.device).clamp(min=eps)
    losses = -F.logsigmoid(beta * (chosen - rejected) - gamma - beta * alpha * z)
    return losses, *alpha_rewards(policy, ref, beta, alpha)


def alpha_rewards(policy: PolicyLogps, ref: ReferenceLogps, beta: float, alpha: float) -> tuple[Tensor, Tensor]:
    """α-DPO's rewards β·[(1−α)·log πθ(y|x) + α·log πref(y|x)]/|y| of chosen and rejected."""
    chosen, rejected, ref_chosen, ref_rejected = _per_token(policy, ref)
    return beta * ((1 - alpha) * chosen + alpha * ref_chosen), beta * ((1 - alpha) * rejected + alpha * ref_rejected)


class AlphaDPO:
    """`alpha_dpo` with the official code's normalisation (`update_and_sync_ref_mean_std`): z-scores against a
    running mean and sample std of M, both starting at 0 and updated with this batch before it is scored (so the
    first batch divides by (1−m)·std, as the code does). Each call sees one process's batch; the code gathers."""

    def __init__(self, alpha: float, momentum: float = 0.9, eps: float = 1e-6):
        self.alpha, self.momentum, self.eps = alpha, momentum, eps
        self.center = 0.0
        self.scale = 0.0

    def __call__(self, policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float) -> Loss:
        margin = _margin(*_per_token(policy, ref))
        self.center = self.momentum * self.center + (1 - self.momentum) * margin.mean().item()
        batch_std = margin.std().item() if margin.numel() > 1 else 0.0
        self.scale = self.momentum * self.scale + (1 - self.momentum) * batch_std
        return alpha_dpo(policy, ref, beta, gamma, self.alpha, center=self.center, scale=self.scale, eps=self.eps)

    def rewards(self, policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor]:
        """The rewards of `alpha_dpo` (no state read or changed: the ranking evaluation calls it)."""
        return alpha_rewards(policy, ref, beta, self.alpha)
