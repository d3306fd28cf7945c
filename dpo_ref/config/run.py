"""One unit of work and the grid that makes them: an experiment expands into one `RunSpec` per (reference x objective
x beta x seed), after the row of the untrained SFT policy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..errors import UserError
from ..objectives import OBJECTIVES, Objective
from .schema import Experiment, ReferenceConfig


class RunSpec(BaseModel):
    """One unit of work: train (unless `objective == 'sft'`) and evaluate one policy."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    objective: str  # "sft" for the untrained SFT row
    reference: str | None  # reference name; None for reference-free objectives and the SFT row
    beta: float | None
    seed: int
    gamma: float = 0.0
    # the registered objective when the grid's `label` names the run otherwise (None: `objective` is it)
    loss: str | None = None
    trl: dict | None = None  # TRL's loss settings (DPOConfig fields) for objectives TRL computes; None for dporef's
    params: dict | None = None  # the settings of a stateful objective (beta_dpo, alpha_dpo)

    @property
    def registered(self) -> Objective | None:
        """The objective it trains with; None for the untrained SFT row."""
        return OBJECTIVES.get(self.loss or self.objective)


def expand(exp: Experiment) -> list[RunSpec]:
    """The grid, SFT row first. Reference-free objectives get one run per beta, not one per reference."""
    runs = [RunSpec(run_id="sft", objective="sft", reference=None, beta=None, seed=exp.seeds[0])]
    for grid in exp.objectives:
        # Only a conditional reference is chosen in the YAML; `likelihood` always uses the policy's own p_LM(y).
        conditional = OBJECTIVES[grid.name].reference == "conditional"
        label = grid.label or grid.name
        refs = (grid.references or [r.name for r in exp.references]) if conditional else [None]
        for ref in refs:
            for beta in grid.betas:
                for seed in exp.seeds:
                    parts = [label, ref, f"b{beta:g}", f"s{seed}"]
                    run_id = "-".join(p for p in parts if p is not None)
                    runs.append(
                        RunSpec(
                            run_id=run_id,
                            objective=label,
                            reference=ref,
                            beta=beta,
                            seed=seed,
                            gamma=grid.gamma,
                            loss=grid.name if label != grid.name else None,
                            trl=grid.trl_settings(),
                            params=grid.params(),
                        )
                    )
    return runs


def find_run(exp: Experiment, run_id: str, where: str) -> RunSpec:
    """The run called `run_id` in the experiment's grid."""
    runs = {r.run_id: r for r in expand(exp)}
    if run_id not in runs:
        raise UserError(where, f"no run {run_id!r} in experiment {exp.name}; runs: {', '.join(runs)}")
    return runs[run_id]


def reference_config(exp: Experiment, name: str | None) -> ReferenceConfig | None:
    """The reference called `name` (a run's `reference`), or None for reference-free runs and the SFT row."""
    return next((r for r in exp.references if r.name == name), None)


def trained_reference_problem(exp: Experiment) -> tuple[str, str] | None:
    """(key, what is wrong) when a `trained` reference names no trained run of the grid, or a run that itself trains
    against a trained reference (a chain the waves do not order); None when every one is sound."""
    trained = {r.name for r in exp.references if r.kind == "trained"}
    runs = {r.run_id: r for r in expand(exp)} if trained else {}
    for i, ref in enumerate(exp.references):
        if ref.kind != "trained":
            continue
        named = runs.get(ref.run)
        if named is None or named.registered is None:
            trainable = [r for r, spec in runs.items() if spec.registered is not None and spec.reference not in trained]
            return f"references.{i}.run", f"{ref.run!r} is not a trained run of this grid; runs: {', '.join(trainable)}"
        if named.reference in trained:
            why = f"{ref.run} trains against {named.reference}, itself a trained reference"
            return f"references.{i}.run", f"{why}; name a run against a fixed reference or none"
    return None
