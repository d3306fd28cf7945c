"""Registry of preference losses, each a small function over grouped policy and reference log-probs.

Every objective maps a batch of pairs to per-pair losses and implicit rewards. The policy's side is a `PolicyLogps`
(summed completion log-probs log p(y|x) of chosen and rejected responses, and their token counts), the reference's a
`ReferenceLogps` (zeros for reference-free objectives), as torchtune groups `ChosenRejectedOutputs`.
`reference` says which reference columns the objective reads, so only what is needed is scored:
`conditional` = p_ref(y|x), `unconditional` = p_LM(y) under the SFT model with no prompt, `none` = no scoring pass.
TRL's own loss types (`TRL_LOSSES`, and `+`-joined mixes of them) are registered too; TRL computes them, from the same
cached columns, so what TRL implements is never rewritten here (`dpo` is TRL's `sigmoid`, kept as dporef's own because
`posterior` and `likelihood` are DPO on other reference columns).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from .pair_logps import Loss, PolicyLogps, ReferenceLogps
from .reference_methods import AlphaDPO, BetaDPO


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


@dataclass(frozen=True)
class Objective:
    """A registered objective: `fn` computes dporef's own loss from the log-probs; `trl` names TRL loss types whose
    loss TRL's DPOTrainer computes itself, from the same cached reference columns (several: a weighted mix)."""

    name: str
    reference: Literal["conditional", "unconditional", "none"]
    fn: Callable[[PolicyLogps, ReferenceLogps, float, float], Loss] | None = None
    trl: tuple[str, ...] = ()
    # a stateful objective (statistics carried across batches): built per trainer from the grid's `params`
    build: Callable[..., BetaDPO | AlphaDPO] | None = None

    def loss(self, params: dict | None = None) -> Callable[[PolicyLogps, ReferenceLogps, float, float], Loss]:
        """The loss function a trainer calls: `fn`, or a fresh instance of a stateful objective."""
        return self.build(**(params or {})) if self.build else self.fn

    def rewards(
        self, policy: PolicyLogps, ref: ReferenceLogps, beta: float, gamma: float, params: dict | None = None
    ) -> tuple[Tensor, Tensor]:
        """The implicit rewards of chosen and rejected responses: the objective's own, or for TRL's loss types the
        ones TRL logs (beta x log-ratio to the reference columns, whatever the loss or f-divergence)."""
        if self.build is not None:
            return self.build(**(params or {})).rewards(policy, ref, beta, gamma)
        if self.fn is not None:
            return self.fn(policy, ref, beta, gamma)[1:]
        return beta * (policy.chosen - ref.chosen), beta * (policy.rejected - ref.rejected)


# TRL 1.16's DPO loss types (DPOConfig.loss_type) by their registry name, run through TRL's own loss code. TRL's `sft`
# is registered as `sft_loss`: `sft` names the untrained SFT policy's row in every experiment.
TRL_LOSSES = {
    **{name: name for name in ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair")},
    **{name: name for name in ("sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop")},
    "sft_loss": "sft",  # the chosen responses' NLL alone: reads no reference
    "sigmoid_norm": "sigmoid_norm",
}
# the loss types TRL generalises to another f-divergence (DPOConfig.f_divergence_type); the others refuse one
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
MIX = "+"  # `sigmoid+bco_pair+sft`: TRL's weighted mix of loss types (MPO), weights in the grid's loss_weights


class Registry(dict):
    """Objective name -> Objective; a name joining TRL loss types with `+` is their mix, found without listing every
    combination."""

    def __missing__(self, name: str) -> Objective:
        parts = tuple(name.split(MIX))
        if len(parts) < 2 or len(set(parts)) < len(parts) or not all(p in TRL_LOSSES for p in parts):
            raise KeyError(name)
        needs = "none" if all(self[p].reference == "none" for p in parts) else "conditional"
        return Objective(name, needs, trl=tuple(TRL_LOSSES[p] for p in parts))

    def __contains__(self, name) -> bool:
        try:
            self[name]
        except KeyError:
            return False
        return True

    def get(self, name, default=None):
        return self[name] if name in self else default


OBJECTIVES: Registry = Registry(
    {
        o.name: o
        for o in [
            Objective("dpo", "conditional", dpo),
            Objective("posterior", "none", posterior),
            Objective("likelihood", "unconditional", likelihood),
            Objective("simpo", "none", simpo),
            Objective("beta_dpo", "conditional", build=BetaDPO),  # arXiv 2407.08639: beta adapted per batch
            Objective("alpha_dpo", "conditional", build=AlphaDPO),  # arXiv 2410.10148: an adaptive reference
            *(Objective(n, "none" if t == "sft" else "conditional", trl=(t,)) for n, t in TRL_LOSSES.items()),
        ]
    }
)
