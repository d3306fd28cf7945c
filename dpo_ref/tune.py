"""`dporef tune-beta`: the best beta of one experiment without paying for a grid.

Optuna searches log-beta over the range the experiment's beta grid spans: three trials spread over the range first
(at 1/6, 1/2 and 5/6 of it in log-beta), then a Gaussian-process sampler (GPSampler: a one-dimensional, noisy,
expensive objective is what it is for). Each trial is trained and judged on the validation prompts only; a median
pruner stops a trial whose validation win rate lags the earlier trials' at the same intermediate step. The test
prompts are evaluated, as for every run, and reported, but never look at by the search.

Each trial is an ordinary run of the experiment `<name>_tune`: its beta is added to the experiment's grid, so
experiment.yaml always lists the trials so far, and `dporef report`, `dporef run-one`, resume and the launchers see
ordinary runs. The study lives in <exp_dir>/tune/optuna.journal, so a tune stopped at any point goes on from where
it stopped when run again (a raised --budget asks for more trials).

    <exp_dir>/tune/optuna.journal   the Optuna study (trials, their values and intermediate values)
    <exp_dir>/tune/trials.json      run id -> trial, and the steps its pruner checks (stages/pruning.py)
    <exp_dir>/tune.json, tune.md    the trials in order, the best, and what the search cost in runs and seconds
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from . import data, launch
from .config import Experiment, RunSpec, expand
from .errors import UserError
from .plan import check_study, estimated_steps
from .runner import pending_runs
from .stages.prepare import prepare
from .stages.pruning import JOURNAL, TRIALS, pruner, storage
from .stages.report import report
from .stages.run import Prepared, execute_locked
from .store import atomic_write_json, atomic_write_text, read_json
from .ui import console, stdout
from .validate import check_inputs

STUDY = "sweep-beta"  # a tune is a beta sweep whose grid the search chooses: reported as one
SPREAD = (1 / 6, 1 / 2, 5 / 6)  # where in the log-beta range the first trials go, before the sampler takes over


@dataclass(frozen=True)
class TuneSettings:
    budget: int  # trials (runs) at most, pruned ones included
    checks: int  # intermediate validation evaluations per trial, for the pruner (0: no pruning)
    seed: int  # the sampler's seed


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


def _sampler(settings: TuneSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=settings.seed, n_startup_trials=len(SPREAD), deterministic_objective=False)


def open_study(exp_dir: Path, settings: TuneSettings, low: float, high: float) -> optuna.Study:
    """The tune's study, new or as a stopped tune left it, its first trials queued spread over the range."""
    (exp_dir / JOURNAL).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="tune-beta",
        storage=storage(exp_dir),
        direction="maximize",
        sampler=_sampler(settings),
        pruner=pruner(),
        load_if_exists=True,
    )
    if not study.trials:
        for where in SPREAD:
            study.enqueue_trial({"beta": math.exp(math.log(low) + where * (math.log(high) - math.log(low)))})
    return study


def _write_experiment(exp_dir: Path, exp: Experiment, source: str, settings: TuneSettings) -> None:
    atomic_write_text(exp_dir / "experiment.yaml", yaml.safe_dump(exp.model_dump(), sort_keys=False))
    command = {"study": STUDY, "experiment_file": source, "argv": sys.argv, "tune": settings.__dict__}
    atomic_write_json(exp_dir / "command.json", command)


def _execute(exp: Experiment, exp_dir: Path, run: RunSpec, source: str) -> str:
    """Run one run where the launcher says (here by default); its final status, read from its status.json."""
    if launch.run_pending(exp, exp_dir, [run], source) is None:
        return execute_locked(Prepared.open(exp_dir), run, wait=True)
    return read_json(exp_dir / run.run_id / "status.json")["status"]


def _tell(study: optuna.Study, number: int, exp_dir: Path, run: RunSpec, status: str) -> None:
    """The trial's outcome: its final validation win rate, pruned (Optuna keeps its last intermediate value), or
    failed (diverged, degenerate, failed: never a best beta, as in the beta grids)."""
    if status == "done":
        value = read_json(exp_dir / run.run_id / "metrics.json")["eval"]["val_win_rate"]
        study.tell(number, value)
    elif status == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def _check_steps(exp: Experiment, n_pairs: int, checks: int) -> list[int]:
    steps = estimated_steps(exp, n_pairs)
    return sorted({round(steps * k / (checks + 1)) for k in range(1, checks + 1)} - {0, steps})


def _links(exp_dir: Path) -> dict[str, dict]:
    """trials.json: run id -> {"trial", "trial_id", "study", "beta", "repeats", "check_steps"}; `repeats`: later
    trials whose beta rounded to this run's."""
    path = exp_dir / TRIALS
    return read_json(path) if path.is_file() else {}


def _by_number(links: dict[str, dict]) -> dict[int, str]:
    """Trial number -> the run id it ran (or repeated)."""
    return {n: run_id for run_id, link in links.items() for n in [link["trial"], *link["repeats"]]}


def tune_beta(exp: Experiment, out: Path, source: str, settings: TuneSettings) -> int:
    """Search beta for `exp` with at most `settings.budget` trials, then write the sweep's report and tune.json /
    tune.md. Returns the number of trials that failed."""
    low, high = search_range(exp, source)
    if launch.submits(exp):
        raise UserError(
            f"{source}: launch.launcher",
            "tune-beta picks each trial from the earlier ones, so it runs "
            "them from this process (launcher local or accelerate), not as slurm jobs",
        )
    launch.check(exp, source)
    t_start = time.time()
    models = check_inputs(exp, source)
    exp_dir = Path(out) / tune_name(exp)
    exp_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(exp_dir, settings, low, high)
    links = _links(exp_dir)
    running = _by_number(links)
    stopped = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING and t.number in running]
    check_steps, failed = None, 0
    while stopped or len(study.trials) < settings.budget:
        if stopped:  # a trial a stopped tune left running: its run resumes (or is found done)
            number = stopped.pop(0)
            beta = links[running[number]]["beta"]
        else:
            trial = study.ask()  # 3 significant digits, as run ids show it
            number, beta = trial.number, float(f"{trial.suggest_float('beta', low, high, log=True):.3g}")
            trial_id = trial._trial_id  # what a run's pruner reopens the trial by (optuna.trial.Trial(study, id))
        tuned = with_betas(exp, [link["beta"] for link in links.values()] + [beta])
        _write_experiment(exp_dir, tuned, source, settings)
        if check_steps is None:  # once: everything the trials share, and the SFT row
            prepare(tuned, exp_dir, STUDY, models)
            n_pairs = len(Prepared.open(exp_dir).pairs["train"])
            check_steps = _check_steps(tuned, n_pairs, settings.checks) if settings.checks else []
            for run in pending_runs(exp_dir, tuned, expand(tuned)[:1], models):
                failed += _execute(tuned, exp_dir, run, source) == "failed"
        run = next(r for r in expand(tuned) if r.beta == beta)
        if run.run_id in links and number not in _by_number(links):  # rounded to a beta tried already
            console.print(f"trial {number}: beta {beta:g} was tried already ({run.run_id}); its outcome counts again")
            links[run.run_id]["repeats"].append(number)
        elif run.run_id not in links:
            link = {"trial": number, "trial_id": trial_id, "study": study.study_name, "beta": beta, "repeats": []}
            links[run.run_id] = link | {"check_steps": check_steps}
        atomic_write_json(exp_dir / TRIALS, links)
        console.rule(f"[bold]trial {number + 1}/{settings.budget}[/]: {run.run_id}")
        status = _execute(tuned, exp_dir, run, source)
        failed += status == "failed"
        _tell(study, number, exp_dir, run, status)
    tuned = with_betas(exp, [link["beta"] for link in links.values()])
    _write_experiment(exp_dir, tuned, source, settings)
    report(exp_dir, tuned, STUDY, data.describe_judge(tuned), extra={"wall_seconds": time.time() - t_start})
    summary = summarize(exp_dir, study, links, settings, (low, high))
    atomic_write_json(exp_dir / "tune.json", summary)
    atomic_write_text(exp_dir / "tune.md", tune_markdown(summary))
    stdout.print(tune_markdown(summary), markup=False, soft_wrap=True)
    return failed


def summarize(exp_dir: Path, study: optuna.Study, links: dict, settings: TuneSettings, span: tuple) -> dict:
    """The trials in order with what each cost and found, the best by validation win rate, and the totals."""
    by_number = _by_number(links)
    results = {r["run_id"]: r for r in read_json(exp_dir / "results.json")["rows"]}
    trials = []
    for t in sorted(study.trials, key=lambda t: t.number):
        run_id = by_number.get(t.number)
        row = results.get(run_id, {})
        trials.append(
            {
                "trial": t.number,
                "run_id": run_id,
                "beta": row.get("beta"),
                "state": t.state.name.lower(),
                "val_win_rate": row.get("val_win_rate"),
                "win_rate": row.get("win_rate"),  # test prompts: reported, never used by the search
                "win_rate_lo": row.get("win_rate_lo"),
                "win_rate_hi": row.get("win_rate_hi"),
                "steps": row.get("steps"),
                "train_seconds": row.get("train_seconds"),
                "eval_seconds": row.get("eval_seconds"),
            }
        )
    complete = [t for t in trials if t["state"] == "complete" and t["val_win_rate"] is not None]  # a run behind it
    best = max(complete, key=lambda t: t["val_win_rate"], default=None)
    runs = {t["run_id"]: t for t in trials if t["run_id"] in results}  # a repeated beta costs nothing more
    seconds = lambda key: sum(t[key] or 0.0 for t in runs.values())  # noqa: E731
    return {
        "range": list(span),
        "budget": settings.budget,
        "sampler": f"{len(SPREAD)} trials spread over log-beta, then GPSampler (seed {settings.seed})",
        "pruner": f"MedianPruner after 2 trials, {settings.checks} validation checks per trial",
        "selection": "highest validation win rate among the trials that ran to the end; test prompts never used",
        "trials": trials,
        "best": best,
        "runs": len(runs),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "steps": sum(t["steps"] or 0 for t in runs.values()),
        "train_seconds": seconds("train_seconds"),
        "eval_seconds": seconds("eval_seconds"),
    }


def tune_markdown(summary: dict) -> str:
    """tune.md: the trials in the order they ran, the best, and the cost."""
    low, high = summary["range"]
    lines = [
        f"tune-beta over beta {low:g} .. {high:g} (log scale), budget {summary['budget']} runs: {summary['sampler']}; "
        f"{summary['pruner']}. Selection: {summary['selection']}.",
        "",
        "| trial | run | beta | state | val win rate | test win rate [95%] | steps | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for t in summary["trials"]:
        interval = f" [{t['win_rate_lo']:.3f}, {t['win_rate_hi']:.3f}]" if t["win_rate_lo"] is not None else ""
        lines.append(
            f"| {t['trial']} | {t['run_id']} | {fmt(t['beta'], 'g')} | {t['state']} | {fmt(t['val_win_rate'], '.3f')} "
            f"| {fmt(t['win_rate'], '.3f')}{interval} | {fmt(t['steps'], 'd')} | {fmt(t['train_seconds'], '.1f')} |"
        )
    best = summary["best"]
    lines.append("")
    if best is None:
        lines.append("No trial ran to the end: no best beta.")
    else:
        lines.append(
            f"Best: beta {best['beta']:g} ({best['run_id']}), validation win rate {best['val_win_rate']:.3f}, test "
            f"win rate {best['win_rate']:.3f}."
        )
    lines.append(
        f"Cost: {summary['runs']} runs ({summary['pruned']} pruned), {summary['steps']} optimizer steps, "
        f"{summary['train_seconds']:.0f} s training, {summary['eval_seconds']:.0f} s evaluation."
    )
    return "\n".join(lines) + "\n"
