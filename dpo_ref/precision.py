"""Precision regimes: the dtype a model's weights are held in and whether its forward passes run under bf16
autocast. One rule serves training, reference scoring, baselines and evaluation, so that the reference columns
computed before training equal the policy's own log-probs at step 1 (DPO's loss is then exactly ln 2).

`precision: auto` is bf16 on a GPU that supports it, fp32 elsewhere (`models.use_bf16`). Under bf16, a model below
LARGE parameters keeps fp32 weights (the master weights a small model trains best with) and runs its forward passes
under bf16 autocast, as TRL's trainer does with `bf16=True`; a larger one holds bf16 weights under the same autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .models import ModelRef, device, use_bf16

LARGE = 1e9  # parameters from which weights are held in bf16 rather than fp32


@dataclass(frozen=True)
class Regime:
    autocast_bf16: bool  # forward passes under torch.autocast(bfloat16)
    bf16_weights: bool  # weights held in bf16 (else fp32)

    @property
    def key(self) -> str:
        """Part of every cache key of numbers a model computes: another regime gives other numbers."""
        weights = "bf16" if self.bf16_weights else "fp32"
        return f"{weights}-weights+bf16-autocast" if self.autocast_bf16 else f"{weights}-weights"

    def autocast(self):
        """The context every forward pass of this regime runs in."""
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device().type, dtype=torch.bfloat16)


def regime(precision: str, n_params: int) -> Regime:
    bf16 = use_bf16(precision)
    return Regime(autocast_bf16=bf16, bf16_weights=bf16 and n_params >= LARGE)


def parameter_count(ref: ModelRef) -> int:
    """Parameters of a model, from its config alone (built on the meta device: nothing allocated, nothing read)."""
    config = AutoConfig.from_pretrained(ref.location)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def regime_for(ref: ModelRef, precision: str) -> Regime:
    """The regime `ref` runs in under `precision`; fp32 everywhere needs no parameter count."""
    if not use_bf16(precision):
        return Regime(autocast_bf16=False, bf16_weights=False)
    return regime(precision, parameter_count(ref))
