"""Precision regimes: the dtype a model's weights are held in and whether its forward passes run under bf16
autocast. One rule serves training, reference scoring, baselines, sampled pairs and evaluation, so that the
reference columns computed before training equal the policy's own log-probs at step 1 (DPO's loss is then exactly
ln 2). This module is the whole policy: `models.load_model` loads in the dtype it is given and decides nothing, and
every model is loaded through `Regime.load`, so no site can pick a dtype of its own.

`precision: auto` is bf16 on a GPU that supports it, fp32 elsewhere (`use_bf16`). Under bf16, a model below LARGE
parameters keeps fp32 weights (the master weights a small model trains best with) and runs its forward passes under
bf16 autocast, as TRL's trainer does with `bf16=True`; a larger one holds bf16 weights under the same autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .models import ModelRef, device, load_model

LARGE = 1e9  # parameters from which weights are held in bf16 rather than fp32


def use_bf16(precision: str) -> bool:
    """`auto` means bf16 on a GPU that supports it and fp32 on CPU (CPU bf16 is slow and lossy for tiny models)."""
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


@dataclass(frozen=True)
class Regime:
    autocast_bf16: bool  # forward passes under torch.autocast(bfloat16)
    bf16_weights: bool  # weights held in bf16 (else fp32)

    @property
    def key(self) -> str:
        """Part of every cache key of numbers a model computes: another regime gives other numbers."""
        weights = "bf16" if self.bf16_weights else "fp32"
        return f"{weights}-weights+bf16-autocast" if self.autocast_bf16 else f"{weights}-weights"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype weights are held in under this regime."""
        return torch.bfloat16 if self.bf16_weights else torch.float32

    def load(self, ref: ModelRef, quantize: str | None = None, spread: bool = False) -> PreTrainedModel:
        """`ref` loaded in this regime's weight dtype (`models.load_model` for `quantize` and `spread`). Any model:
        one that must match another's numbers (a moving reference beside the policy, a trained policy read back)
        is loaded in that model's regime, `regime_for(policy, precision).load(other)`."""
        return load_model(ref, self.dtype, quantize=quantize, spread=spread)

    def autocast(self):
        """The context every forward pass of this regime runs in."""
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device().type, dtype=torch.bfloat16)


FP32 = Regime(autocast_bf16=False, bf16_weights=False)


def regime(precision: str, n_params: int) -> Regime:
    bf16 = use_bf16(precision)
    return Regime(autocast_bf16=bf16, bf16_weights=bf16 and n_params >= LARGE)


def parameter_count(ref: ModelRef) -> int:
    """Parameters of a model, from its config alone (built on the meta device: nothing allocated, nothing read)."""
    config = AutoConfig.from_pretrained(ref.location)
    with torch.device("meta"):
        model = _empty(config)
    return sum(p.numel() for p in model.parameters())


def _empty(config) -> torch.nn.Module:
    """The model class the config was saved as (a reward model is a sequence classifier, with no causal-LM head and
    perhaps no causal-LM class at all), else a causal LM (a config written by hand names no architecture)."""
    names = getattr(config, "architectures", None) or []
    saved_as = getattr(transformers, names[0], None) if names else None
    if isinstance(saved_as, type) and issubclass(saved_as, PreTrainedModel):
        return saved_as(config)
    return AutoModelForCausalLM.from_config(config)


def regime_for(ref: ModelRef, precision: str) -> Regime:
    """The regime `ref` runs in under `precision`: the one decision of a model's weight dtype and autocast. fp32
    everywhere needs no parameter count."""
    if not use_bf16(precision):
        return FP32
    return regime(precision, parameter_count(ref))
