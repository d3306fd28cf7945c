"""A study command from start to end: validate the inputs, prepare once, run every pending run, rebuild the report.

The stages between them are files on disk (see stages/), so the same experiment can be prepared here
(`--prepare-only`) and its runs executed elsewhere. Where the pending runs execute is the launcher's choice
(launch/): by default here, one after another, each exactly as `dporef run-one` would run it in another process;
else N local processes (one per GPU) or SLURM jobs. Each run is taken under its lock: a run another process is
running is skipped, then waited for before the report, so two commands on one directory never run a run twice."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from . import data, launch
from .config import Experiment, RunSpec, expand, load_experiment
from .expdir import ExperimentDir, Prepared, run_state, write_spec
from .plan import STUDIES, check_study, plan_text, waves
from .stages.prepare import prepare
from .stages.report import report
from .stages.run import execute_locked
from .ui import console, stdout
from .validate import Models, check_inputs


def read_experiment(path: Path, overrides: list[str]) -> Experiment:
    """The experiment file with its overrides, validated, with the data registry's cross-key checks."""
    return load_experiment(path, overrides, checks=[data.check_source, data.check_judge])


@contextmanager
def said_if_interrupted(what: str, resume: str):
    """Ctrl-C or SIGTERM during `what`: one line saying so and how to resume, then stop as before (exit 130 / 143)."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/] while {what}; {resume}", soft_wrap=True)
        raise


def run_experiment(
    exp: Experiment, out: Path, study: str, source: str, dry_run: bool = False, prepare_only: bool = False
) -> int:
    """Prepare `exp`, run every pending run and rebuild its report; returns the number of runs that failed."""
    check_study(exp, study, source)
    launch.check(exp, source, installed=not dry_run)  # a launch setup it cannot run is refused before anything
    exp_dir = ExperimentDir(Path(out) / exp.name)
    runs = expand(exp)
    if dry_run:
        launched = launch.dry_run(exp, exp_dir, study, source)  # the processes or jobs it would start
        stdout.print("\n".join(filter(None, [plan_text(exp, runs, exp_dir), launched])), markup=False, soft_wrap=True)
        return 0
    t_start = time.time()
    models = check_inputs(exp, source)  # data, prompts, models: refused before anything is written
    write_spec(exp_dir, exp, study, source)
    if launch.submits(exp) and not prepare_only:  # prepare, runs and report run as jobs (slurm); this only submits
        return launch.submit(exp, exp_dir, study, source)
    pending = pending_runs(exp_dir, exp, runs, models)  # a run is done with these models' fingerprints
    needs_similarity = STUDIES[study].similarity and not exp_dir.similarity.is_file()
    prepared = {"status": "skipped", "computed": 0, "from_cache": 0}
    t_prepare = time.time()
    if pending or prepare_only or needs_similarity:
        resume = "run the same command again: prepare reuses every reference score, baseline and model it finished"
        with said_if_interrupted(f"preparing {exp_dir.root}", resume):
            prepared = prepare(exp, exp_dir, study, models)
    t_runs = time.time()
    if prepare_only:
        stdout.print(prepared_text(exp, exp_dir, pending), markup=False)
        return 0
    failed = 0
    grouped = waves(exp, pending)  # a run against a trained reference starts once the run that trains it is done
    for i, wave in enumerate(grouped):
        if len(grouped) > 1:
            console.rule(f"wave {i + 1} of {len(grouped)}: {len(wave)} runs")
        launched = launch.run_pending(exp, exp_dir, wave, source)  # None: here, one by one
        failed += execute_all(exp_dir, wave) if launched is None else launched
    scoring = {"computed": prepared["computed"], "from_cache": prepared["from_cache"]}
    stages = {"validate": t_prepare - t_start, "prepare": t_runs - t_prepare, "runs": time.time() - t_runs}
    stage_seconds = stages | {"total (report excluded)": time.time() - t_start}
    extra = {"reference_scoring": scoring, "prepared": prepared["status"], "wall_seconds": time.time() - t_start}
    extra["stage_seconds"] = stage_seconds
    with said_if_interrupted("writing the report", f"`dporef report {exp_dir.root}` rebuilds it from the runs"):
        report(exp_dir, exp, study, data.describe_judge(exp), extra=extra)
    console.print(
        f"reference scoring passes: {scoring['computed']} computed, {scoring['from_cache']} from cache; "
        f"{len(runs) - len(pending)} of {len(runs)} runs already done; "
        f"wall time {time.time() - t_start:.1f}s; results in {exp_dir.root}"
    )
    return failed


def prepared_text(exp: Experiment, exp_dir: ExperimentDir, pending: list[RunSpec]) -> str:
    """What `--prepare-only` prints: the run-one command of each pending run, in the waves they must run in."""
    root, grouped = exp_dir.root, waves(exp, pending)
    lines = [f"prepared {root}; run each pending run anywhere that sees it, then `dporef report {root}`:"]
    for i, wave in enumerate(grouped):
        if i:
            lines.append("then, once those are done (each trains against the policy of one of them):")
        lines += [f"  dporef run-one {root} {r.run_id}" for r in wave]
    return "\n".join(lines)


def pending_runs(exp_dir: ExperimentDir, exp: Experiment, runs: list[RunSpec], models: Models) -> list[RunSpec]:
    """The runs not done with `models`, saying which are done and which run again because damaged or outdated."""
    pending = []
    for run in runs:
        state = run_state(exp_dir, exp, run, models.as_dict())
        if state.done:
            console.print(f"[green]already done[/]: {run.run_id}")
            continue
        if state.reason:
            console.print(f"[yellow]{state.status}[/]: {run.run_id}: {state.reason}; running it again")
        pending.append(run)
    return pending


def execute_all(exp_dir: ExperimentDir, pending: list[RunSpec]) -> int:
    """Run the pending runs here, one after another; a run another process holds is skipped and waited for at the
    end (then run here only if that process did not finish it). Returns the number of runs that failed."""
    opened = Prepared.open(exp_dir)
    failed, held = 0, []
    for i, run in enumerate(pending, 1):
        console.rule(f"[bold]{run.run_id}[/] ({i}/{len(pending)}), started {time.strftime('%H:%M:%S')}")
        status = execute_locked(opened, run)
        if status == "held":
            console.print(f"[yellow]skipped[/]: {run.run_id}: another process is running it; waiting for it at the end")
            held.append(run)
        failed += status == "failed"
    for run in held:
        failed += execute_locked(opened, run, wait=True) == "failed"
    return failed
