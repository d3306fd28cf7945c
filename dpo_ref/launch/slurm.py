"""The slurm launcher, through submitit: the prepare stage as one job, the pending runs as a job array that starts
once prepare succeeded (each task one `run-one`, under `accelerate launch` across its node's GPUs with
`launch.slurm.accelerate`), the report as a job after every task ended (afterany).

Every stage resumes where it stopped, so a job that SLURM pre-empts or that reaches its time limit is requeued
(`--requeue`, and submitit's checkpointing of the `Stage` callable) and simply starts again: prepare and reference
scores are reused from disk, a done run is left as it is, an interrupted one resumes from its checkpoints. Running
the study command again gathers what the jobs wrote and submits only the runs that are not done.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError

from ..config import Experiment, RunSpec, SlurmConfig, find_run
from ..errors import UserError, one_line
from ..expdir import ExperimentDir, not_done, read_status
from ..plan import STUDIES, waves
from ..stages.prepare import prepare
from ..stages.report import rebuild, results_dir
from ..stages.run import run_one
from ..ui import console, quiet_libraries
from ..validate import resolve_models
from . import accelerate

REPORT_MINUTES = 60  # the report reads files only: a short job without GPUs
NO_SLURM = (
    "slurm: no SLURM on this machine (`srun` not found); submit from a login node, or set launch.slurm.cluster: "
    "local to try the jobs here"
)


def folder(cfg: SlurmConfig, exp_dir: ExperimentDir) -> Path:
    return Path(cfg.folder).absolute() if cfg.folder else exp_dir.slurm.absolute()


def prepare_stage(exp_dir: ExperimentDir) -> str:
    exp, study = results_dir(exp_dir)
    return prepare(exp, exp_dir, study, resolve_models(exp))["status"]


def accelerate_processes(exp: Experiment) -> int:
    """Processes of each run under `launch.slurm.accelerate`: launch.accelerate.num_processes, else the job's GPUs."""
    return exp.launch.accelerate.num_processes or max(exp.launch.slurm.gpus_per_node, 1)


def check(exp: Experiment, source: str, installed: bool = True) -> None:
    """Refuse, before anything is written, a setup the jobs cannot run: with `installed` (not a dry run), SLURM
    itself must be here when the jobs go to it (submitit's SlurmExecutor.affinity is -1 without `srun`)."""
    if installed and exp.launch.slurm.cluster == "slurm" and submitit.SlurmExecutor.affinity() < 0:
        raise UserError(f"{source}: launch.launcher", NO_SLURM)
    if exp.launch.slurm.accelerate:
        accelerate.check(exp, source, installed, processes_=accelerate_processes(exp))


def _accelerated(exp: Experiment, exp_dir: ExperimentDir, run_id: str) -> str:
    """One run through `accelerate launch` in this job (its output in the job's log); its final status."""
    n, where = accelerate_processes(exp), str(exp_dir.spec)
    run = find_run(exp, run_id, where)
    code = subprocess.run(accelerate.command(exp.launch.accelerate, n, where, exp_dir, run)).returncode
    status = read_status(exp_dir.run(run_id))
    return "failed" if code and status == "pending" else status


def run_stage(exp_dir: ExperimentDir, run_id: str) -> str:
    exp, _ = results_dir(exp_dir)
    status = _accelerated(exp, exp_dir, run_id) if exp.launch.slurm.accelerate else run_one(exp_dir, run_id)
    if status == "failed":  # the task fails too, so that SLURM's accounting shows it
        raise RuntimeError(f"run {run_id} failed; its traceback is in {exp_dir.run(run_id).status}")
    return status


def report_stage(exp_dir: ExperimentDir) -> None:
    rebuild(exp_dir)


STAGES = {"prepare": prepare_stage, "run": run_stage, "report": report_stage}


class Stage(submitit.helpers.Checkpointable):
    """One stage of an experiment as a job, reading the experiment from its directory alone. Checkpointable: on a
    timeout or pre-emption submitit requeues the same call, which resumes (see the module)."""

    def __init__(self, stage: str, exp_dir: ExperimentDir, *args: str):
        self.stage, self.exp_dir, self.args = stage, str(exp_dir.root), args

    def __call__(self):
        quiet_libraries()  # a job's log holds dporef's lines, not the libraries' progress bars
        return STAGES[self.stage](ExperimentDir(Path(self.exp_dir)), *self.args)


def mem(gb: float) -> str:
    """`launch.slurm.mem_gb` as sbatch's `--mem` (and submitit's `mem` parameter): whole GB, else MB."""
    return f"{int(gb)}GB" if gb == int(gb) else f"{max(1, round(gb * 1024))}MB"


def parameters(cfg: SlurmConfig, name: str, stage: str) -> dict:
    """The sbatch parameters of one stage's jobs, as submitit's `SlurmExecutor.update_parameters` receives them."""
    gpus = {"prepare": cfg.prepare_gpus_per_node, "report": 0}.get(stage, cfg.gpus_per_node)
    gpus = cfg.gpus_per_node if gpus is None else gpus
    optional = {
        "partition": cfg.partition,
        "account": cfg.account,
        "cpus_per_task": cfg.cpus_per_task,
        "gpus_per_node": gpus or None,
        "mem": mem(cfg.mem_gb) if cfg.mem_gb else None,
    }
    return {
        "job_name": f"dporef-{name}-{stage}",
        "time": cfg.time if stage != "report" else min(cfg.time, REPORT_MINUTES),
        "nodes": cfg.nodes,
        "array_parallelism": cfg.array_parallelism,
        "stderr_to_stdout": True,  # one log per job
        # requeue: SLURM puts a pre-empted job back in the queue; runs whose prepare failed are cancelled, not left
        "additional_parameters": {"requeue": True}
        | ({"kill-on-invalid-dep": "yes"} if stage == "run" else {})
        | cfg.extra,
        **{k: v for k, v in optional.items() if v is not None},
    }


def _work(exp: Experiment, exp_dir: ExperimentDir, study: str) -> tuple[list[RunSpec], bool]:
    """(pending runs, whether a prepare job is needed)."""
    pending = not_done(exp, exp_dir)
    needs_similarity = STUDIES[study].similarity and not exp_dir.similarity.is_file()
    return pending, bool(pending) or needs_similarity


def dry_run(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> str:
    """The jobs the launcher would submit: per stage, the parameters it gives submitit's
    `SlurmExecutor.update_parameters` (dependency included), the array's size and its tasks' commands. Not the
    literal sbatch scripts: submitit writes those itself when it submits (and job ids are known only then)."""
    cfg, exp_dir = exp.launch.slurm, ExperimentDir(exp_dir.root.absolute())
    pending, needed = _work(exp, exp_dir, study)
    if not needed:
        return "launcher slurm: every run is done; nothing would be submitted (the report is rebuilt here)"
    where = folder(cfg, exp_dir)
    stages = [("prepare", None, "1 job", [])]
    after = "afterok:<prepare job>"
    grouped = waves(exp, pending)  # a run against a trained reference: after the array of the run that trains it
    for i, wave in enumerate(grouped):  # one pending run: one job, not an array
        size = f"a job array of {len(wave)} tasks, at most {min(len(wave), cfg.array_parallelism)} at once"
        stages.append(("run", after, size if len(wave) > 1 else "1 job", wave))
        after = f"afterany:<runs array{f' {i + 1}' if len(grouped) > 1 else ''}>"
    stages.append(("report", after if pending else "afterany:<prepare job>", "1 job", []))
    out = [
        f"launcher slurm: {len(pending)} runs pending; the jobs it would submit through submitit, each stage with "
        f"the parameters given to submitit's SlurmExecutor.update_parameters (not the literal sbatch scripts, which "
        f"submitit writes at submission); logs in {where}:"
    ]
    for stage, dependency, size, runs in stages:
        params = parameters(cfg, exp.name, stage) | ({"dependency": dependency} if dependency else {})
        out.append(f"--- {stage}: {size} ---")
        out += [f"{key}: {value!r}" if isinstance(value, dict) else f"{key}: {value}" for key, value in params.items()]
        out += [f"# task {i}: {_task(exp, exp_dir, r, source)}" for i, r in enumerate(runs)]
    return "\n".join(out)


def _task(exp: Experiment, exp_dir: ExperimentDir, run: RunSpec, source: str) -> str:
    if exp.launch.slurm.accelerate:
        return shlex.join(accelerate.command(exp.launch.accelerate, accelerate_processes(exp), source, exp_dir, run))
    return f"dporef run-one {exp_dir.root} {run.run_id}"


def _executor(cfg: SlurmConfig, where: Path, params: dict, source: str):
    """A fresh executor for one stage (parameters never leak from one stage's jobs to the next)."""
    if cfg.cluster == "local":
        executor = submitit.LocalExecutor(folder=where)
        gpus = params.get("gpus_per_node", 0)
        executor.update_parameters(timeout_min=params["time"], gpus_per_node=gpus, stderr_to_stdout=True)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=where)
    except RuntimeError:
        raise UserError(f"{source}: launch.launcher", NO_SLURM) from None  # srun gone since `check`
    executor.update_parameters(**params)
    return executor


def _submit(exp: Experiment, exp_dir: ExperimentDir, stage: str, calls: list[Stage], after, source: str) -> list:
    """Submit one stage's jobs after the jobs `after` = (kind, jobs): on SLURM as a dependency; with the local
    executor, which has none, by waiting for them first (and, after `afterok`, submitting nothing when one failed)."""
    cfg = exp.launch.slurm
    params = parameters(cfg, exp.name, stage)
    kind, jobs = after or (None, [])
    if jobs and cfg.cluster == "slurm":
        params["dependency"] = f"{kind}:{':'.join(sorted({j.job_id.split('_')[0] for j in jobs}))}"
    elif jobs:
        failed = [job for job in jobs if job.exception() is not None]  # waits for each
        if kind == "afterok" and failed:
            return []
    executor = _executor(cfg, folder(cfg, exp_dir), params, source)
    try:
        return executor.submit_array(calls)
    except (FailedJobError, OSError) as e:  # sbatch's own refusal: a partition, account or option it rejects
        raise UserError(f"{source}: launch.slurm", f"sbatch refused the {stage} job: {one_line(str(e), 300)}") from None


def submit(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> int:
    """Submit what is not done; nothing when every run is done (the report is then rebuilt here). On SLURM it
    returns once submitted; with `cluster: local` once every job ended. Returns the number of runs that failed."""
    exp_dir = ExperimentDir(exp_dir.root.absolute())
    pending, needed = _work(exp, exp_dir, study)
    if not needed:
        console.print(f"every run of {exp.name} is done: nothing submitted; rebuilding the report here")
        report_stage(exp_dir)
        return 0
    console.print(
        f"submitting {exp.name}: prepare, {len(pending)} runs, report; logs in {folder(exp.launch.slurm, exp_dir)}"
    )
    prep = _submit(exp, exp_dir, "prepare", [Stage("prepare", exp_dir)], None, source)
    console.print(f"  prepare: job {prep[0].job_id}")
    after, tasks, submitted = ("afterok", prep), [], []
    for wave in waves(exp, pending):  # a run against a trained reference: after every task of the wave before
        wave_tasks = _submit(exp, exp_dir, "run", [Stage("run", exp_dir, r.run_id) for r in wave], after, source)
        for job, run in zip(wave_tasks, wave):
            console.print(f"  run {run.run_id}: job {job.job_id}, log {job.paths.stdout}", soft_wrap=True)
        tasks, submitted = tasks + wave_tasks, submitted + wave[: len(wave_tasks)]
        after = ("afterany", wave_tasks) if wave_tasks else after  # nothing submitted: the next wave neither
    last = _submit(exp, exp_dir, "report", [Stage("report", exp_dir)], ("afterany", after[1]), source)
    console.print(f"  report: job {last[0].job_id}")
    if exp.launch.slurm.cluster == "slurm":
        console.print(f"once they ended, `dporef report {exp_dir.root}` or this command again gathers the results")
        return 0
    jobs = [("prepare", prep[0]), *((f"run {r.run_id}", j) for r, j in zip(submitted, tasks)), ("report", last[0])]
    failed = [name for name, job in jobs if job.exception() is not None]
    for name, job in jobs:
        if name in failed:
            console.print(f"[red]failed[/]: {name}: see {job.paths.stdout}", soft_wrap=True)
    return len(pending) - len(tasks) + sum(name.startswith("run ") for name in failed)
