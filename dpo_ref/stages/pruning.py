"""A `dporef tune-beta` trial while it trains: at a few intermediate steps the policy is judged on the validation
prompts (never the test prompts), the value goes to the trial's Optuna study, and the study's pruner may stop a run
whose value lags the earlier trials' at the same step.

The run learns that it is a trial from <exp_dir>/tune/trials.json, which the tuner writes before it starts the run,
and reaches the study through its journal file, so a trial runs as any run does: in this process, in another one
(`dporef run-one`), or under a launcher.
"""

from __future__ import annotations

import optuna
from transformers import TrainerCallback

from ..config import RunSpec
from ..evaluation.evaluate import validation_win_rate
from ..store import read_json
from ..ui import console

TRIALS = "tune/trials.json"  # run id -> {"study", "trial_id", "check_steps"}, relative to the experiment directory
JOURNAL = "tune/optuna.journal"  # the study: Optuna's JournalFileBackend (a log of operations; safe across processes)


def pruner() -> optuna.pruners.BasePruner:
    """The tune's pruner, in the tuner and in every run's process (a study loaded without it prunes by Optuna's
    defaults): a trial whose value at a check is below the median of the earlier trials' at that step stops; the
    first two trials always run to the end."""
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def storage(exp_dir) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(exp_dir / JOURNAL)))


class TrialPruning(TrainerCallback):
    """At each of `check_steps`: judge the policy on the validation prompts, report the value to the trial and stop
    training when the pruner says so. `checks` and `pruned_at` go into the run's metrics.json."""

    def __init__(self, trial: optuna.trial.Trial, check_steps: list[int], evaluate):
        self.trial, self.check_steps, self.evaluate = trial, set(check_steps), evaluate
        self.checks: list[dict] = []
        self.pruned_at: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.check_steps:
            return
        value = self.evaluate(model)
        self.checks.append({"step": state.global_step, "val_win_rate": value})
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
            console.print(f"[yellow]pruned[/] at step {state.global_step}: validation win rate {value:.3f} lags")


def trial_pruning(prepared, run: RunSpec, tokenizer) -> TrialPruning | None:
    """The pruning callback of `run` when it is a tune-beta trial with intermediate checks, else None."""
    path = prepared.exp_dir / TRIALS
    link = read_json(path).get(run.run_id) if path.is_file() else None
    if not link or not link["check_steps"]:
        return None
    study = optuna.load_study(study_name=link["study"], storage=storage(prepared.exp_dir), pruner=pruner())
    trial = optuna.trial.Trial(study, link["trial_id"])
    bench = prepared.benchmark()
    return TrialPruning(
        trial, link["check_steps"], lambda model: validation_win_rate(model, tokenizer, bench, "validation check")
    )
