"""tune-beta's Optuna study on disk, and which run each trial ran: the one place the tuner and a trial's pruner (in
whatever process the run executes) meet.

    <exp_dir>/tune/optuna.journal   the study: Optuna's JournalFileBackend (a log of operations; safe across processes)
    <exp_dir>/tune/trials.json      run id -> {"trial", "study", "beta", "repeats", "check_steps"}; `repeats`: later
                                    trials whose beta rounded to this run's
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.storages.journal import JournalFileBackend

from ..expdir import ExperimentDir
from ..store import atomic_write_json, read_json

STUDY_NAME = "tune-beta"
SPREAD = (1 / 6, 1 / 2, 5 / 6)  # where in the log-beta range the first trials go, before the sampler takes over


@dataclass(frozen=True)
class TuneSettings:
    budget: int  # trials (runs) at most, pruned ones included
    checks: int  # intermediate validation evaluations per trial, for the pruner (0: no pruning)
    seed: int  # the sampler's seed


def pruner() -> optuna.pruners.BasePruner:
    """The tune's pruner, in the tuner and in every run's process (a study loaded without it prunes by Optuna's
    defaults): a trial whose value at a check is below the median of the earlier trials' at that step stops; the
    first two trials always run to the end."""
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def storage(exp_dir: ExperimentDir) -> optuna.storages.JournalStorage:
    exp_dir.tune_journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(exp_dir.tune_journal)))


def open_study(exp_dir: ExperimentDir, seed: int, low: float, high: float) -> optuna.Study:
    """The tune's study, new or as a stopped tune left it, its first trials queued spread over the range; then a
    Gaussian-process sampler (a one-dimensional, noisy, expensive objective is what it is for)."""
    sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=len(SPREAD), deterministic_objective=False)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage(exp_dir),
        direction="maximize",
        sampler=sampler,
        pruner=pruner(),
        load_if_exists=True,
    )
    if not study.trials:
        for where in SPREAD:
            study.enqueue_trial({"beta": math.exp(math.log(low) + where * (math.log(high) - math.log(low)))})
    return study


def read_links(exp_dir: ExperimentDir) -> dict[str, dict]:
    """trials.json (see the module), empty before the first trial."""
    return read_json(exp_dir.tune_trials) if exp_dir.tune_trials.is_file() else {}


def write_links(exp_dir: ExperimentDir, links: dict[str, dict]) -> None:
    atomic_write_json(exp_dir.tune_trials, links)


def by_number(links: dict[str, dict]) -> dict[int, str]:
    """Trial number -> the run id it ran (or repeated)."""
    return {n: run_id for run_id, link in links.items() for n in [link["trial"], *link["repeats"]]}


def reopen_trial(exp_dir: ExperimentDir, link: dict) -> optuna.trial.Trial:
    """The running trial a link names, reopened from the journal in this process (the run's, which may not be the
    tuner's) through the storage's public lookup of a trial by its study and number."""
    journal = storage(exp_dir)
    study = optuna.load_study(study_name=link["study"], storage=journal, pruner=pruner())
    study_id = journal.get_study_id_from_name(link["study"])
    return optuna.trial.Trial(study, journal.get_trial_id_from_study_id_trial_number(study_id, link["trial"]))
