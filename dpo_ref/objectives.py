"""Registry of preference losses, each a small function over grouped policy and reference log-probs.

Every objective maps a batch of pairs to per-pair losses and implicit rewards. The policy's side is a `PolicyLogps`
(summed completion log-probs log p(y|x) of chosen and rejected responses, and their token counts), the reference's a
`ReferenceLogps` (zeros for reference-free objectives), as torchtune groups `ChosenRejectedOutputs`.
`reference` says which reference columns the objective reads, so only what is needed is scored:
`conditional` = p_ref(y|x), `unconditional` = p_LM(y) under the SFT model with no prompt, `none` = no scoring pass.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Loss = tuple[Tensor, Tensor, Tensor]  # (per-pair loss, chosen reward, rejected reward)


@dataclass(frozen=True)
class PolicyLogps:
    """The policy's summed completion log-probs and completion token counts, each of shape [batch]."""

    chosen: Tensor
    rejected: Tensor
    chosen_len: Tensor
    rejected_len: Tensor


@dataclass(frozen=True)
class ReferenceLogps:
    """The reference's summed completion log-probs, each of shape [batch]."""

    chosen: Tensor
    rejected: Tensor

    @classmethod
    def zeros_like(cls, policy: PolicyLogps) -> "ReferenceLogps":
        return cls(torch.zeros_like(policy.chosen), torch.zeros_like(policy.rejected))


def dpo(policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0) -> Loss:
    """DPO: -log sigmoid(beta * [log p(yw|x)/p_ref(yw|x) - log p(yl|x)/p_ref(yl|x)])."""
    chosen_reward = beta * (policy.chosen - ref.chosen)
    rejected_reward = beta * (policy.rejected - ref.rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def posterior(policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0) -> Loss:
    """Posterior probability (no reference): reward beta*log p(y|x), i.e. DPO with log p_ref = 0 (max-entropy RL)."""
    return dpo(policy, ReferenceLogps.zeros_like(policy), beta)


def likelihood(policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0) -> Loss:
    """Likelihood function: DPO whose reference is p_LM(y), the SFT model's probability of y with no prompt."""
    return dpo(policy, ref, beta)


def simpo(policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.5) -> Loss:
    """SimPO (Meng et al. 2024): -log sigmoid(beta*log p(yw|x)/|yw| - beta*log p(yl|x)/|yl| - gamma), no reference."""
    chosen_reward = beta * policy.chosen / policy.chosen_len.clamp(min=1)
    rejected_reward = beta * policy.rejected / policy.rejected_len.clamp(min=1)
    return -F.logsigmoid(chosen_reward - rejected_reward - gamma), chosen_reward, rejected_reward


def ipo(policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float = 0.0) -> Loss:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 with h the per-token-averaged log-ratio margin, as TRL computes it."""
    chosen_ratio = (policy.chosen - ref.chosen) / policy.chosen_len.clamp(min=1)
    rejected_ratio = (policy.rejected - ref.rejected) / policy.rejected_len.clamp(min=1)
    loss = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return loss, beta * (policy.chosen - ref.chosen), beta * (policy.rejected - ref.rejected)


@dataclass(frozen=True)
class Objective:
    name: str
    reference: Literal["conditional", "unconditional", "none"]
    fn: Callable[[PolicyLogps, ReferenceLogps, float, float], Loss]


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("dpo", "conditional", dpo),
        Objective("posterior", "none", posterior),
        Objective("likelihood", "unconditional", likelihood),
        Objective("simpo", "none", simpo),
        Objective("ipo", "conditional", ipo),
    ]
}
