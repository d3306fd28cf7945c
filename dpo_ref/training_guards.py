"""Run health: stop training at the first non-finite loss or gradient norm, and flag runs that trained without
learning (gradient norm collapsed to 0) or drifted absurdly far from their reference (KL explosion).

A non-finite value poisons every later step, so training stops at the step where it first appears and the run is
`diverged` with that step and value. A flag marks a finished run whose numbers are reported but not to be trusted:
a huge learning rate can saturate the network so that every gradient is exactly 0 while the loss stays finite
(measured on the embedded world: learning rate 1e3, gradient norm 0.0 from step 4 on), which otherwise gives a
`done` run with a win rate of 0.06 (36-token budget).
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

GRAD_COLLAPSE = 1e-8  # numerically no gradient: the saturated runs log exactly 0.0, the world's healthy ones 0.3-1.5
COLLAPSE_LOGS = 3  # ... at this many last logged steps (all logged steps after the first, when fewer)
# KL(policy || reference) per response token, in nats, above which a run has left its reference behind: on average
# its own tokens are e^2 = 7.4 times likelier under it than under the reference. Per token, so that long responses
# of real models (SmolLM2-135M's DPO runs in docs/results.md: 0.2-1.0 nats over 52-70 tokens) meet the same bound as the
# world's short ones; not lower, because a reference of another family starts far away (the world's strong-other:
# ~1 nat per token before training). Measured on the embedded world: healthy runs 0.2-0.3, runs broken by learning
# rates 1e-2 to 1e3 0.9-1.4 (its 42-token vocabulary bounds them; they are flagged degenerate or grad-collapse).
KL_EXPLOSION = 2.0


class Diverged(FloatingPointError):
    """Training met a non-finite loss or gradient norm; `details` (step, metric, value, log history) go into the
    run's status.json, non-finite numbers written as strings ("nan", "inf") so that it stays strict JSON."""

    def __init__(self, step: int, metric: str, value: float, history: list[dict]):
        super().__init__(f"non-finite {metric} ({value}) at step {step}; training stopped there")
        history = [{k: _strict(v) for k, v in h.items()} for h in history]
        self.details = {"step": step, "metric": metric, "value": str(value), "history": history}


def _strict(v):
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


class DivergenceGuard(TrainerCallback):
    """Stops training at the end of the first optimizer step with a non-finite loss (reported by the trainer through
    `observe`, gathered over processes), gradient norm (checked before every optimizer step) or logged value."""

    def __init__(self):
        self.found: tuple[int, str, float] | None = None

    def observe(self, step: int, metric: str, value: float) -> None:
        if self.found is None and not math.isfinite(value):
            self.found = (step, metric, value)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:  # clipping keeps a non-finite norm non-finite
            self.observe(state.global_step + 1, "grad_norm", float(torch.nn.utils.get_total_norm(grads)))

    def on_step_end(self, args, state, control, **kwargs):
        if self.found is not None:
            control.should_training_stop = True
            control.should_log = True  # the fatal step is in the log history

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if isinstance(value, float):
                self.observe(state.global_step, key, value)
        if self.found is not None:
            control.should_training_stop = True


def run_flags(history: list[dict], kl: float, length: float) -> dict[str, str]:
    """Flags of a finished run, name -> why: `grad-collapse` when the logged gradient norm stayed below
    GRAD_COLLAPSE over the last COLLAPSE_LOGS logged steps after the first, `kl-explosion` when the evaluation KL
    per response token (`length` tokens on average, at least 1) exceeds KL_EXPLOSION nats."""
    flags = {}
    norms = [(h["step"], h["grad_norm"]) for h in history if "grad_norm" in h][1:][-COLLAPSE_LOGS:]
    if norms and all(n < GRAD_COLLAPSE for _, n in norms):
        steps = f"step {norms[0][0]}" if len(norms) == 1 else f"steps {norms[0][0]}-{norms[-1][0]}"
        flags["grad-collapse"] = f"gradient norm below {GRAD_COLLAPSE:g} at the last logged {steps}"
    per_token = kl / max(length, 1.0)
    if per_token > KL_EXPLOSION:
        flags["kl-explosion"] = f"KL to the reference {kl:.1f} nats, {per_token:.2f} per token > {KL_EXPLOSION:g}"
    return flags
