"""Registry of preference losses, each a small function over summed sequence log-probs and token counts.

Every objective maps a batch of pairs to per-pair losses and implicit rewards. Inputs (all shape [batch]):
`chosen`/`rejected` are the policy's summed completion log-probs log p(y|x), `ref_chosen`/`ref_rejected` the
reference's (zeros for reference-free objectives), `chosen_len`/`rejected_len` the completion token counts.
`reference` says which reference columns the objective reads, so the runner scores only what is needed:
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
class Objective:
    name: str
    reference: Literal["conditional", "unconditional", "none"]
    fn: Callable[..., Loss]
    doc: str


def dpo(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta, gamma=0.0) -> Loss:
    """DPO: -log sigmoid(beta * [log p(yw|x)/p_ref(yw|x) - log p(yl|x)/p_ref(yl|x)])."""
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def posterior(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta, gamma=0.0) -> Loss:
    """Posterior probability (no reference): reward beta*log p(y|x), i.e. DPO with log p_ref = 0 (max-entropy RL)."""
    zero = torch.zeros_like(chosen)
    return dpo(chosen, rejected, zero, zero, chosen_len, rejected_len, beta)


def likelihood(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta, gamma=0.0) -> Loss:
    """Likelihood function: DPO whose reference is p_LM(y), the SFT model's probability of y with no prompt."""
    return dpo(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta)


def simpo(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta, gamma=0.5) -> Loss:
    """SimPO (Meng et al. 2024): -log sigmoid(beta*log p(yw|x)/|yw| - beta*log p(yl|x)/|yl| - gamma), no reference."""
    chosen_reward = beta * chosen / chosen_len.clamp(min=1)
    rejected_reward = beta * rejected / rejected_len.clamp(min=1)
    return -F.logsigmoid(chosen_reward - rejected_reward - gamma), chosen_reward, rejected_reward


def ipo(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, beta, gamma=0.0) -> Loss:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 with h the per-token-averaged log-ratio margin, as TRL computes it."""
    chosen_ratio = (chosen - ref_chosen) / chosen_len.clamp(min=1)
    rejected_ratio = (rejected - ref_rejected) / rejected_len.clamp(min=1)
    loss = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return loss, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("dpo", "conditional", dpo, dpo.__doc__),
        Objective("posterior", "none", posterior, posterior.__doc__),
        Objective("likelihood", "unconditional", likelihood, likelihood.__doc__),
        Objective("simpo", "none", simpo, simpo.__doc__),
        Objective("ipo", "conditional", ipo, ipo.__doc__),
    ]
}
