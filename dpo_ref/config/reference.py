"""A reference of the experiment (`references[]`): the model DPO's KL term is measured against, and how it is used:
fixed, moving (TR-DPO), BEMA, a mixture of fixed ones, or the policy another run trained (Pre-DPO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .strict import MAX_STEPS, Strict, safe_name

MOVING_DEFAULTS = {"alpha": 0.6, "sync_steps": 512}  # TRL's ref_model_mixup_alpha and ref_model_sync_steps
BEMA_DEFAULTS = {"sync_steps": 400}  # TRL's BEMACallback(update_freq)


class ReferenceConfig(Strict):
    name: str = Field(description="Short name of the reference, used in run ids and tables (letters, digits, -_.).")
    model: str | None = Field(
        None,
        description="Model spec: `world:<name>` (a model of the embedded world), a local directory, "
        "or a Hugging Face hub id (read from the local cache when offline). Required, except for a `mixture` or a "
        "`trained` reference.",
    )
    kind: Literal["fixed", "moving", "bema", "mixture", "trained"] = Field(
        "fixed",
        description="`fixed`: scored once before training and shared by every run (no reference model in memory while "
        "training). `moving`: TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): the reference starts as `model` "
        "and follows the policy, ref <- alpha * policy + (1 - alpha) * ref every `sync_steps` optimizer steps "
        "(TRL's sync_ref_model). `bema`: the reference starts as `model` and becomes, every `sync_steps` steps, the "
        "bias-corrected exponential moving average of the policy's weights (BEMA, Block and Zhang 2025, arXiv "
        "2508.00180; TRL's BEMACallback with its defaults). A moving or BEMA reference cannot be precomputed, so it "
        "sits in memory while training; `model` must be the experiment's policy (the updates mix their weights); KL "
        "and the implicit reward's ranking accuracy are measured against that starting point. `mixture`: several fixed "
        "references at once, log p_mix(y|x) = sum_k w_k log p_k(y|x) with the weights of `mix` (a multi-reference "
        "objective, as MRPO, Le et al. 2024): no model and no scoring pass of its own, its columns are the weighted "
        "sum of its components' cached ones; KL is measured against the mixture. `trained`: the policy another run of "
        "this experiment trained (`run`), as Pre-DPO's guiding reference (Pan et al. 2025, arXiv 2504.15843): that "
        "run goes first, and its policy is scored once it is done (cached, shared by every run against it), before "
        "the runs that train against it start from the experiment's policy.",
    )
    run: str | None = Field(
        None,
        description="`trained` only: the run id (in this experiment's grid) whose trained policy is the reference, "
        "e.g. dpo-sft-b0.1-s0 or simpo-b2-s0; that run must train against a fixed reference or none.",
    )
    mix: dict[str, float] | None = Field(
        None,
        description="`mixture` only: the fixed references (by name) it combines and their weights, each > 0, summing "
        "to 1, e.g. {sft: 0.5, strong: 0.5}.",
    )
    alpha: float | None = Field(
        None,
        gt=0,
        le=1,
        description="`moving` only: weight of the policy in each update (TR-DPO's soft update; 1 = hard update, the "
        f"reference becomes the policy). Default: TRL's {MOVING_DEFAULTS['alpha']}.",
    )
    sync_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="`moving` and `bema`: optimizer steps between two updates (TR-DPO's tau, BEMA's update_freq "
        f"phi). Default: TRL's, {MOVING_DEFAULTS['sync_steps']} (moving) and {BEMA_DEFAULTS['sync_steps']} (bema).",
    )

    @model_validator(mode="before")
    @classmethod
    def _moving_settings(cls, data):
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "fixed")
        defaults = {"moving": MOVING_DEFAULTS, "bema": BEMA_DEFAULTS}.get(kind, {})
        unused = sorted(k for k in MOVING_DEFAULTS if k not in defaults and data.get(k) is not None)
        if unused:
            why = {
                "bema": "BEMA has no mixing weight",
                "mixture": "a mixture of fixed references never changes",
                "trained": "a trained policy, once scored, never changes",
            }
            raise ValueError(f"{' and '.join(unused)}: not read by kind: {kind} ({why.get(kind, 'it never changes')})")
        return defaults | {k: v for k, v in data.items() if v is not None}

    @model_validator(mode="after")
    def _model_or_mix(self) -> ReferenceConfig:
        named_by = {
            "mixture": "a mixture names no `model` (its `mix` does)",
            "trained": "a trained reference names no `model` (its `run` does)",
        }.get(self.kind)
        if (named_by is None) != (self.model is not None):
            raise ValueError(named_by or "needs a `model`")
        for key, kind in (("mix", "mixture"), ("run", "trained")):
            if (self.kind == kind) != (getattr(self, key) is not None):
                raise ValueError(
                    f"kind: {kind} needs `{key}`" if self.kind == kind else f"`{key}`: read by kind: {kind} only"
                )
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v)
