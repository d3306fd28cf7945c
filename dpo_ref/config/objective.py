"""`objectives:` in an experiment: one objective's beta grid, and for TRL's own loss types the settings TRL's
DPOConfig takes for them (mixes, label smoothing, f-divergences, WPO weighting), each checked against the losses it
applies to."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..objectives import F_DIVERGENCE_LOSSES, MIX, OBJECTIVES, TRL_LOSSES
from .strict import Strict, safe_name

BETA_DPO = {"alpha": 0.6, "rho": 0.2}  # beta_dpo's settings when a grid leaves them out (the authors' example)
ALPHA_DPO = {"alpha": 0.2}
SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")  # the TRL loss types that read label_smoothing
# TRL's defaults of the settings below: a grid that leaves them so is what a TRL script runs
TRL_DEFAULTS = {"label_smoothing": 0.0, "f_divergence": "reverse_kl", "f_alpha": 0.5, "use_weighting": False}
TRL_DEFAULTS |= {"discopop_tau": 0.05}


class ObjectiveGrid(Strict):
    name: str = Field(
        description=f"Training objective: dporef's {', '.join(n for n in OBJECTIVES if not OBJECTIVES[n].trl)}, or "
        f"one of TRL's DPO loss types, computed by TRL from the cached reference columns: "
        f"{', '.join(TRL_LOSSES)} (`sft_loss` is TRL's `sft`); several TRL types joined by `{MIX}` are TRL's "
        "weighted mix (e.g. `sigmoid+bco_pair+sft_loss`, MPO; weights in `loss_weights`)."
    )
    label: str | None = Field(
        None,
        description="The grid's name in run ids and tables (letters, digits, -_.). Default: `name`; required for a "
        "mix, and to run one objective twice with other settings (e.g. `sigmoid` with `f_divergence: forward_kl`).",
    )
    betas: list[float] = Field(min_length=1, description="Grid of beta (KL strength / reward scale), each > 0.")
    references: list[str] | None = Field(
        None,
        min_length=1,
        description="The references (by name) this objective trains against, e.g. a moving one for `dpo` only. "
        "Default: every listed reference. Objectives that read no conditional reference take none.",
    )
    gamma: float = Field(0.5, ge=0, description="Target margin of `simpo` and `alpha_dpo` (ignored by the others).")
    loss_weights: list[float] | None = Field(
        None, description="A mix only: the weight of each of its loss types, in order (TRL's loss_weights; MPO: "
        "[0.8, 0.2, 1.0]). Default: 1 each.",
    )  # fmt: skip
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description=f"TRL's label_smoothing, for {', '.join(SMOOTHED)}: the probability a preference is flipped "
        "(robust: 0.1 is the paper's typical value), EXO's epsilon (> 0; the paper: 1e-3).",
    )
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = Field(
        "reverse_kl",
        description="f-DPO's regulariser (Wang et al. 2023, arXiv 2309.16240; TRL's f_divergence_type), for "
        f"{', '.join(F_DIVERGENCE_LOSSES)} (`sft` is `sft_loss`). Default: reverse KL, i.e. DPO.",
    )
    f_alpha: float = Field(
        0.5, gt=0, lt=1, description="`alpha_divergence` only: its alpha (TRL's f_alpha_divergence_coef)."
    )
    use_weighting: bool = Field(
        False,
        description="WPO (Zhou et al. 2024, arXiv 2406.11827): weight each pair by the policy's length-normalised "
        "probability of both responses (TRL's use_weighting; computed from the policy alone, on the fly).",
    )
    ld_alpha: float | None = Field(
        None,
        description="LD-DPO (arXiv 2409.06411, TRL's ld_alpha) is refused: it down-weights the reference's log-probs "
        "of the tokens past the shorter response, which needs the reference's per-token log-probs; dporef's cache "
        "holds each response's sum. Must stay null.",
    )
    discopop_tau: float = Field(0.05, gt=0, description="`discopop` only: its temperature (TRL's discopop_tau).")
    alpha: float | None = Field(
        None,
        ge=0,
        description="`beta_dpo`: how far beta follows each batch's mean reward margin, beta = beta0 (1 + alpha (M - "
        f"M0)) (default {BETA_DPO['alpha']}, the authors' example); `alpha_dpo`: the weight of its adaptive margin "
        f"(default {ALPHA_DPO['alpha']}; the authors' configs use 0.05-0.2).",
    )
    rho: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=f"`beta_dpo` only: the share of each batch filtered out as outliers (default {BETA_DPO['rho']}).",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {v!r}; allowed: {', '.join(OBJECTIVES)}, or TRL loss types joined by {MIX!r}"
            )
        return v

    @field_validator("label")
    @classmethod
    def _safe_label(cls, v: str | None) -> str | None:
        return v if v is None else safe_name(v)

    @field_validator("betas")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v):
            raise ValueError("every beta must be > 0")
        if len({f"{b:g}" for b in v}) < len(v):  # as run ids write them: 0.1 and 0.10000001 are one run
            raise ValueError("each beta once: a value repeats (the same runs twice)")
        return v

    @model_validator(mode="after")
    def _settings_apply(self) -> ObjectiveGrid:
        """Each TRL setting only where TRL reads it: a setting the loss ignores is a mistake, not a no-op."""
        losses = OBJECTIVES[self.name].trl
        changed = [k for k, v in TRL_DEFAULTS.items() if getattr(self, k) != v]
        if not losses and (changed or self.loss_weights is not None):
            keys = changed + (["loss_weights"] if self.loss_weights is not None else [])
            raise ValueError(f"{', '.join(keys)}: only TRL's loss types take it; {self.name!r} is dporef's own")
        if self.ld_alpha is not None:
            raise ValueError("ld_alpha: LD-DPO needs per-token reference log-probs; the cache holds sums (its help)")
        if len(losses) > 1 and self.label is None:
            raise ValueError(f"a mix needs a `label`, its name in run ids (e.g. mpo for {self.name})")
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(f"loss_weights: {len(self.loss_weights)} weights for {len(losses)} loss types")
        if self.label_smoothing and not set(losses) & set(SMOOTHED):
            raise ValueError(f"label_smoothing: read only by {', '.join(SMOOTHED)}")
        if "exo_pair" in losses and not self.label_smoothing:
            raise ValueError("exo_pair needs label_smoothing > 0 (EXO's epsilon; the paper: 1e-3)")
        if self.f_divergence != "reverse_kl" and not set(losses) <= set(F_DIVERGENCE_LOSSES):
            raise ValueError(f"f_divergence: TRL generalises only {', '.join(F_DIVERGENCE_LOSSES)}")
        if self.f_alpha != TRL_DEFAULTS["f_alpha"] and self.f_divergence != "alpha_divergence":
            raise ValueError("f_alpha: read only with f_divergence: alpha_divergence")
        if self.discopop_tau != TRL_DEFAULTS["discopop_tau"] and "discopop" not in losses:
            raise ValueError("discopop_tau: read only by discopop")
        if self.alpha is not None and self.name not in ("beta_dpo", "alpha_dpo"):
            raise ValueError("alpha: read only by beta_dpo and alpha_dpo")
        if self.rho is not None and self.name != "beta_dpo":
            raise ValueError("rho: read only by beta_dpo")
        if self.references is not None and OBJECTIVES[self.name].reference != "conditional":
            raise ValueError(f"references: {self.name} trains against no listed reference")
        return self

    def params(self) -> dict | None:
        """The settings a stateful objective is built with (None for the others)."""
        defaults = {"beta_dpo": BETA_DPO, "alpha_dpo": ALPHA_DPO}.get(self.name)
        if defaults is None:
            return None
        return {k: v if getattr(self, k) is None else getattr(self, k) for k, v in defaults.items()}

    def trl_settings(self) -> dict | None:
        """DPOConfig's loss settings for TRL's loss types (None for dporef's own objectives)."""
        losses = OBJECTIVES[self.name].trl
        if not losses:
            return None
        return {
            "loss_type": list(losses),
            "loss_weights": self.loss_weights,
            "label_smoothing": self.label_smoothing,
            "f_divergence_type": self.f_divergence,
            "f_alpha_divergence_coef": self.f_alpha,
            "use_weighting": self.use_weighting,
            "discopop_tau": self.discopop_tau,
        }
