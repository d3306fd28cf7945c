"""Launchers: where each pending run's `dporef run-one` executes; never what it computes.

A study command is prepare -> run each pending run -> report, with everything between the stages on disk. `local`
without `gpus` or `workers` runs the runs in the command's own process (the runner's loop); `local` with them, in
child processes on this machine (`local`); `accelerate` one after another, each across the node's GPUs
(`accelerate`); `slurm` makes every stage a cluster job (`slurm`). The registry maps `launch.launcher` to what each
launcher does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Experiment, RunSpec
from ..expdir import ExperimentDir, not_done
from . import accelerate, local, slurm


@dataclass(frozen=True)
class Launcher:
    """`check(exp, source, installed)`: refuse a setup it cannot run, before anything starts (`installed`: also
    the engines it needs are installed here). `dry_run(exp, exp_dir, study,
    source)`: what it would start. Then either `run(exp, exp_dir, pending, source, callback)`: execute the pending
    runs once prepare ran here (returns the failed runs; `callback`: a Trainer callback factory `module:function`
    each run trains with), or `submit(exp, exp_dir, study, source)`: make prepare, the runs and
    the report jobs of their own."""

    check: Callable[[Experiment, str, bool], object]
    dry_run: Callable[[Experiment, ExperimentDir, str, str], str | None]
    run: Callable[[Experiment, ExperimentDir, list[RunSpec], str, str | None], int] | None = None
    submit: Callable[[Experiment, ExperimentDir, str, str], int] | None = None


def _local_dry_run(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> str | None:
    if exp.launch.in_process:
        return None  # the plan says it all: runs one after another, here
    return local.dry_run(exp.launch, exp_dir, not_done(exp, exp_dir), source)


def _local_run(
    exp: Experiment, exp_dir: ExperimentDir, pending: list[RunSpec], source: str, callback: str | None
) -> int:
    return local.run_processes(exp.launch, exp_dir, pending, source, callback)


LAUNCHERS = {
    "local": Launcher(lambda exp, source, installed: None, _local_dry_run, run=_local_run),
    "accelerate": Launcher(accelerate.check, accelerate.dry_run, run=accelerate.run),
    "slurm": Launcher(slurm.check, slurm.dry_run, submit=slurm.submit),
}


def launcher(exp: Experiment) -> Launcher:
    return LAUNCHERS[exp.launch.launcher]


def check(exp: Experiment, source: str, installed: bool = True) -> None:
    """Refuse, in one line, a launch setup that cannot run this experiment (before anything is written); with
    `installed`, also one whose engine (DeepSpeed) is missing here."""
    launcher(exp).check(exp, source, installed)


def dry_run(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> str | None:
    """The `--dry-run` lines of the launcher: the processes it would start, or the jobs and their submitit parameters
    (None: in process)."""
    return launcher(exp).dry_run(exp, exp_dir, study, source)


def submits(exp: Experiment) -> bool:
    """Whether the launcher runs every stage as a job of its own (then the command only submits them)."""
    return launcher(exp).submit is not None


def submit(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> int:
    return launcher(exp).submit(exp, exp_dir, study, source)


def run_pending(
    exp: Experiment, exp_dir: ExperimentDir, pending: list[RunSpec], source: str, callback: str | None = None
) -> int | None:
    """Execute the pending runs with the launcher; None when they are to run in this process (the runner's loop).
    `callback`: a Trainer callback factory `module:function` each run trains with (`dporef run-one --callback`)."""
    if exp.launch.in_process:
        return None
    return launcher(exp).run(exp, exp_dir, pending, source, callback)
