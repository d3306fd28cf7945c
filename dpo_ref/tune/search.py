"""`dporef tune-beta`: the best beta of one experiment without paying for a grid.

Optuna searches log-beta over the range the experiment's beta grid spans: three trials spread over the range first
(at 1/6, 1/2 and 5/6 of it in log-beta), then a Gaussian-process sampler (GPSampler: a one-dimensional, noisy,
expensive objective is what it is for). Each trial is trained and judged on the validation prompts only; a median
pruner stops a trial whose validation win rate lags the earlier trials' at the same intermediate step, and the
sampler learns the value it was stopped at. The test prompts are evaluated, as for every run, and reported, but
never looked at by the search.

Each trial is an ordinary run of the experiment `<name>_tune`: its beta is added to the experiment's grid, so
experiment.yaml always lists the trials so far, and `dporef report`, `dporef run-one`, resume and the launchers see
ordinary runs. The study lives in <exp_dir>/tune/ (tune/study.py), so a tune stopped at any point goes on from where
it stopped when run again (a raised --budget asks for more trials). A trial's pruner reaches its run as a callback
(tune/pruning.py); <exp_dir>/tune.json and tune.md hold the trials in order, the best, and what the search cost.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import optuna

from .. import data, launch
from ..config import Experiment, RunSpec, expand
from ..errors import UserError
from ..expdir import ExperimentDir, Prepared, read_run, read_status, write_spec
from ..plan import check_study, estimated_steps
from ..runner import pending_runs
from ..stages.prepare import prepare
from ..stages.report import report
from ..stages.run import execute_locked
from ..store import atomic_write_json, atomic_write_text
from ..ui import console, stdout
from ..validate import check_inputs
from .pruning import FACTORY, trial_pruning
from .study import TuneSettings, by_number, open_study, read_links, write_links
from .summary import summarize, tune_markdown

STUDY = "sweep-beta"  # a tune is a beta sweep whose grid the search chooses: reported as one


def search_range(exp: Experiment, source: str) -> tuple[float, float]:
    """The log-beta range to search: the span of the experiment's one beta grid, which must have two values."""
    check_study(exp, STUDY, source)
    if len(exp.objectives) != 1:
        raise UserError(f"{source}: objectives", f"tune-beta tunes one objective's beta, got {len(exp.objectives)}")
    if len(exp.seeds) != 1:
        raise UserError(f"{source}: seeds", f"tune-beta tunes on one seed, got {len(exp.seeds)}")
    betas = exp.objectives[0].betas
    if len(betas) < 2:
        raise UserError(
            f"{source}: objectives.0.betas", "give the range to search as two betas or more, e.g. [3, 0.01]"
        )
    return min(betas), max(betas)


def tune_name(exp: Experiment) -> str:
    """`<name>_tune`: the tune's experiment, beside (never inside) a sweep of the same experiment."""
    return f"{exp.name.removesuffix('_tune')}_tune"


def with_betas(exp: Experiment, betas: list[float]) -> Experiment:
    """The tune's experiment: `<name>_tune`, its grid the betas tried so far, each once (a resumed trial's beta, or
    one a later trial rounded to, is listed already), largest first as grids are written."""
    grid = exp.objectives[0].model_copy(update={"betas": sorted(set(betas), reverse=True)})
    return exp.model_copy(update={"name": tune_name(exp), "objectives": [grid]})


def _write_experiment(exp_dir: ExperimentDir, exp: Experiment, source: str, settings: TuneSettings) -> None:
    write_spec(exp_dir, exp, STUDY, source, {"tune": asdict(settings)})


def _execute(exp: Experiment, exp_dir: ExperimentDir, run: RunSpec, source: str) -> str:
    """Run one run where the launcher says (here by default), with its trial's pruner; its final status."""
    if launch.run_pending(exp, exp_dir, [run], source, callback=FACTORY) is None:
        return execute_locked(Prepared.open(exp_dir), run, wait=True, callbacks=[trial_pruning])
    return read_status(exp_dir.run(run.run_id))


def _tell(study: optuna.Study, number: int, exp_dir: ExperimentDir, run: RunSpec, status: str, links: dict) -> None:
    """The trial's outcome: its final validation win rate; pruned (its run stopped by the pruner): the last
    validation win rate its pruner saw, told as a value, since GPSampler learns from complete trials alone and
    proposed a pruned beta again and again (three of six trials at the range's edge, every one pruned); failed
    (diverged, degenerate, failed: never a best beta, as in the beta grids). tune.json still names a stopped run's
    trial pruned, and only runs that ended can be best (tune/summary.py)."""
    metrics = read_run(exp_dir.run(run.run_id), run).metrics if status == "done" else None  # checked, or None
    seen = study.trials[links[run.run_id]["trial"]].intermediate_values if status == "stopped" else {}
    if metrics is not None:
        study.tell(number, metrics["eval"]["val_win_rate"])
    elif seen:
        study.tell(number, seen[max(seen)])
    elif status == "stopped":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def _check_steps(exp: Experiment, n_pairs: int, checks: int) -> list[int]:
    steps = estimated_steps(exp, n_pairs)
    return sorted({round(steps * k / (checks + 1)) for k in range(1, checks + 1)} - {0, steps})


def _refuse_jobs(exp: Experiment, source: str) -> None:
    if launch.submits(exp):
        raise UserError(
            f"{source}: launch.launcher",
            "tune-beta picks each trial from the earlier ones, so it runs "
            "them from this process (launcher local or accelerate), not as slurm jobs",
        )


def _next_trial(study: optuna.Study, stopped: list[int], links: dict, span: tuple[float, float]) -> tuple[int, float]:
    """(number, beta) of the next trial: one a stopped tune left running (its run resumes, or is found done), else a
    new one the sampler asks for, its beta to 3 significant digits as run ids show it."""
    if stopped:
        number = stopped.pop(0)
        return number, links[by_number(links)[number]]["beta"]
    trial = study.ask()
    return trial.number, float(f"{trial.suggest_float('beta', *span, log=True):.3g}")


def _spent(study: optuna.Study) -> int:
    """Trials of the budget taken: every trial but the spread ones still queued (WAITING until `ask` takes them)."""
    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)


def tune_beta(exp: Experiment, out: Path, source: str, settings: TuneSettings) -> int:
    """Search beta for `exp` with at most `settings.budget` trials, then write the sweep's report and tune.json /
    tune.md. Returns the number of trials that failed."""
    low, high = search_range(exp, source)
    _refuse_jobs(exp, source)
    launch.check(exp, source)
    t_start = time.time()
    models = check_inputs(exp, source)
    exp_dir = ExperimentDir(Path(out) / tune_name(exp))
    study = open_study(exp_dir, settings.seed, low, high)
    links = read_links(exp_dir)
    running = by_number(links)
    stopped = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING and t.number in running]
    check_steps, failed = None, 0
    while stopped or _spent(study) < settings.budget:
        number, beta = _next_trial(study, stopped, links, (low, high))
        tuned = with_betas(exp, [link["beta"] for link in links.values()] + [beta])
        _write_experiment(exp_dir, tuned, source, settings)
        if check_steps is None:  # once: everything the trials share, and the SFT row
            prepare(tuned, exp_dir, STUDY, models)
            n_pairs = len(Prepared.open(exp_dir).pairs["train"])
            check_steps = _check_steps(tuned, n_pairs, settings.checks) if settings.checks else []
            for run in pending_runs(exp_dir, tuned, expand(tuned)[:1], models):
                failed += _execute(tuned, exp_dir, run, source) == "failed"
        run = next(r for r in expand(tuned) if r.beta == beta)
        if run.run_id in links and number not in by_number(links):  # rounded to a beta tried already
            console.print(f"trial {number}: beta {beta:g} was tried already ({run.run_id}); its outcome counts again")
            links[run.run_id]["repeats"].append(number)
        elif run.run_id not in links:
            link = {"trial": number, "study": study.study_name, "beta": beta, "repeats": []}
            links[run.run_id] = link | {"check_steps": check_steps}
        write_links(exp_dir, links)
        console.rule(f"[bold]trial {number + 1}/{settings.budget}[/]: {run.run_id}")
        status = _execute(tuned, exp_dir, run, source)
        failed += status == "failed"
        _tell(study, number, exp_dir, run, status, links)
    tuned = with_betas(exp, [link["beta"] for link in links.values()])
    _write_experiment(exp_dir, tuned, source, settings)
    report(exp_dir, tuned, STUDY, data.describe_judge(tuned), extra={"wall_seconds": time.time() - t_start})
    summary = summarize(exp_dir, study, links, settings, (low, high))
    atomic_write_json(exp_dir.tune_summary("json"), summary)
    atomic_write_text(exp_dir.tune_summary("md"), tune_markdown(summary))
    stdout.print(tune_markdown(summary), markup=False, soft_wrap=True)
    return failed
