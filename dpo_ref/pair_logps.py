"""The log-probabilities a batch of preference pairs has under the policy and under the reference: what every
objective reads (grouped as torchtune groups `ChosenRejectedOutputs`), and what it returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
    def zeros_like(cls, policy: PolicyLogps) -> ReferenceLogps:
        return cls(torch.zeros_like(policy.chosen), torch.zeros_like(policy.rejected))
