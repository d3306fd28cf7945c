"""A `dporef tune-beta` trial while it trains: at a few intermediate steps the policy is judged on the validation
prompts (never the test prompts), the value goes to the trial's Optuna study, and the study's pruner may stop a run
whose value lags the earlier trials' at the same step.

The run stage knows nothing of this: the tuner hands `trial_pruning` to the run as a callback factory (in its own
process), or names it to `dporef run-one --callback dpo_ref.tune.pruning:trial_pruning` (in another process, under a
launcher). The factory finds the run's trial in the tune's files (tune/study.py); a run that is not a trial gets none.
"""

from __future__ import annotations

import optuna
from transformers import TrainerCallback

from .. import ranks
from ..config import RunSpec
from ..evaluation.evaluate import Benchmark, validation_win_rate
from ..expdir import Prepared
from ..ui import console
from .study import read_links, reopen_trial

FACTORY = "dpo_ref.tune.pruning:trial_pruning"  # what `run-one --callback` imports in a run's own process


class TrialPruning(TrainerCallback):
    """At each of `check_steps`: judge the policy on the validation prompts, report the value to the trial (the
    study keeps it as the trial's intermediate value) and stop training when the pruner says so (the run is then
    `stopped`)."""

    def __init__(self, trial: optuna.trial.Trial, check_steps: list[int], bench: Benchmark):
        self.trial, self.check_steps, self.bench = trial, set(check_steps), bench

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step not in self.check_steps:
            return
        value = validation_win_rate(model, processing_class, self.bench, "validation check")
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            control.should_training_stop = True
            console.print(f"[yellow]pruned[/] at step {state.global_step}: validation win rate {value:.3f} lags")


def trial_pruning(prepared: Prepared, run: RunSpec) -> TrialPruning | None:
    """The pruning callback of `run` when it is a tune-beta trial with intermediate checks, else None; none across
    several processes either (one process alone evaluates)."""
    link = read_links(prepared.exp_dir).get(run.run_id)
    if not link or not link["check_steps"] or ranks.size() > 1:
        return None
    return TrialPruning(reopen_trial(prepared.exp_dir, link), link["check_steps"], prepared.benchmark())
