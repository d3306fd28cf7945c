"""The local launcher with `gpus` or `workers`. With `gpus`: each pending run as a `python -m dpo_ref run-one EXP_DIR
RUN_ID` process pinned to a free GPU (CUDA_VISIBLE_DEVICES), a finished run freeing its GPU for the next (a thread per
slot, first come first served). With `workers`: that many long-lived `run-one` processes, each given every pending
run, which share them out through the runs' locks, so that each pays the imports once rather than once per run
(`Workers`). Either way a run that fails leaves the others running, and the children split the machine's cores
between them (`torch_threads`). Process management only.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path

from ..config import LaunchConfig, RunSpec
from ..errors import UserError
from ..expdir import ExperimentDir, read_status
from ..ui import console

STOP_SECONDS = 60  # how long an interrupted run may take to mark itself interrupted before it is killed
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's CPU threads, read as a process starts


def log_path(exp_dir: ExperimentDir, run_id: str) -> Path:
    """Where a run's process output goes. Beside the run directory, not in it: `run-one` starts a run's directory
    afresh, which would delete a log opened there before it started."""
    return exp_dir.log(run_id)


def command(exp_dir: ExperimentDir, run: RunSpec, callback: str | None = None) -> list[str]:
    """The run's `run-one` process; `callback`: a Trainer callback factory `module:function` it trains with."""
    # --wait: a run another command is running is waited for, then left alone when that one finished it
    argv = [sys.executable, "-m", "dpo_ref", "run-one", str(exp_dir.root), run.run_id, "--wait"]
    return argv + (["--callback", callback] if callback else [])


def gpu_slots(cfg: LaunchConfig, where: str) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES value of each GPU slot, or None without `gpus`. `auto`: the devices this process
    sees (its own CUDA_VISIBLE_DEVICES entries when set, which a child must be given as they are)."""
    if cfg.gpus is None:
        return None
    if cfg.gpus != "auto":
        return [str(i) for i in cfg.gpus]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        slots = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        slots = [str(i) for i in range(torch.cuda.device_count())]
    if not slots:
        raise UserError(f"{where}: launch.gpus", "auto: no CUDA device is visible; list GPU ids or set launch.workers")
    return slots


def torch_threads(children: int) -> tuple[dict[str, str], str]:
    """The environment that gives each of `children` processes running at once its share of the usable cores, and a
    phrase saying so. Torch takes every core in each process: two such processes on the same cores wait on each
    other's threads, and are slower together than one alone (bench/workers.py). A user's own setting is kept."""
    own = next((v for v in THREAD_VARIABLES if v in os.environ), None)
    if own:
        return {}, f"torch threads as {own}={os.environ[own]} says"
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use, which a container or taskset limits
    except AttributeError:  # no affinity on macOS
        cores = os.cpu_count() or 1
    threads = max(1, cores // children)
    said = f"{threads} torch thread{'s' * (threads > 1)} each ({cores} cores)"
    return dict.fromkeys(THREAD_VARIABLES, str(threads)), said


def dry_run(cfg: LaunchConfig, exp_dir: ExperimentDir, runs: list[RunSpec], where: str) -> str:
    """The processes the launcher would start, with their GPUs."""
    gpus = gpu_slots(cfg, where)
    if gpus is None:
        orders = worker_orders(runs, cfg.workers) if runs else []
        threads = torch_threads(max(1, len(orders)))[1]
        lines = [
            f"launcher local: {len(orders)} `run-one` worker processes sharing the pending runs (each runs a run no "
            f"other holds), {threads}; each run's output in {log_path(exp_dir, '<run>')}:"
        ]
        return "\n".join(lines + [f"  {shlex.join(worker_command(exp_dir, order))}" for order in orders])
    threads = torch_threads(len(gpus))[1]
    lines = [
        f"launcher local: a `run-one` process per pending run, one per GPU of {','.join(gpus)} (<free>: the first a "
        f"finished run frees), {threads}; output in {log_path(exp_dir, '<run>')}:"
    ]
    for i, run in enumerate(runs):
        pin = f"CUDA_VISIBLE_DEVICES={gpus[i] if i < len(gpus) else '<free>'} "
        lines.append(f"  {pin}{shlex.join(command(exp_dir, run))}")
    return "\n".join(lines)


class Processes:
    """The pending runs of one experiment as child processes, one per free slot; with `split_cores`, each given its
    share of the cores (`torch_threads`, said in `threads`)."""

    def __init__(
        self, exp_dir: ExperimentDir, slots: list[str], pinned: bool, command=command, split_cores: bool = True
    ):
        self.exp_dir, self.pinned, self.command = exp_dir, pinned, command  # command(exp_dir, run): argv
        self.env, self.threads = torch_threads(len(slots)) if split_cores else ({}, "")
        self.free: queue.Queue[str] = queue.Queue()
        for slot in slots:
            self.free.put(slot)
        self.running: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def execute(self, run: RunSpec) -> str:
        """Run one run in a child process on the next free slot; its final status, as the parent sees it."""
        slot = self.free.get()
        try:
            return self._child(run, slot)
        finally:
            self.free.put(slot)

    def _child(self, run: RunSpec, slot: str) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **self.env}
        if self.pinned:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = log_path(self.exp_dir, run.run_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        on = f"GPU {slot}" if self.pinned else slot if not slot.isdigit() else f"worker {slot}"
        cmd, t0 = self.command(self.exp_dir, run), time.time()
        with open(log, "a") as out:
            out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            out.flush()
            with self.lock:  # no child starts once an interrupt has begun stopping them
                if self.stopping.is_set():
                    return "not started"
                proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                self.running[run.run_id] = proc
            console.print(f"started {run.run_id} on {on} (pid {proc.pid}); output in {log}", soft_wrap=True)
            code = proc.wait()
        with self.lock:
            self.running.pop(run.run_id)
        status = self._status(run, code, log)
        console.print(f"finished {run.run_id} on {on}: {status} in {time.time() - t0:.1f}s", soft_wrap=True)
        return status

    def _status(self, run: RunSpec, code: int, log: Path) -> str:
        """The run's status.json when its process ended normally, else what its exit code says."""
        if code == 0:
            status = read_status(self.exp_dir.run(run.run_id))
            return "failed" if status == "pending" else status
        if code in (130, 143) or (code < 0 and self.stopping.is_set()):  # Ctrl-C, SIGTERM, or stopped by `stop`
            return "interrupted"
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
        why = f": {errors[-1]}" if errors else f"; see {log}"
        console.print(f"[red]run-one exited with code {code}[/]: {run.run_id}{why}", soft_wrap=True)
        return "failed"

    def stop(self) -> None:
        """On Ctrl-C or SIGTERM: no new child starts, each running one gets SIGTERM (it marks its run interrupted),
        then is killed if it has not ended within STOP_SECONDS."""
        with self.lock:
            self.stopping.set()
            procs = list(self.running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()


def worker_command(exp_dir: ExperimentDir, runs: list[RunSpec], callback: str | None = None) -> list[str]:
    """A CPU worker: one `run-one` process for all the pending runs, each run's output in its own log."""
    argv = [sys.executable, "-m", "dpo_ref", "run-one", str(exp_dir.root), *(r.run_id for r in runs), "--log-each"]
    return argv + (["--callback", callback] if callback else [])


def worker_orders(pending: list[RunSpec], workers: int) -> list[list[RunSpec]]:
    """Every pending run for each worker, each starting at its own share (so that they start on different runs); a
    run one worker holds the others pass over (the run's lock), so every run is run once, by whichever is free."""
    n = min(workers, len(pending))
    return [pending[i * len(pending) // n :] + pending[: i * len(pending) // n] for i in range(n)]


class Workers:
    """The CPU workers: long-lived `run-one` processes that share the pending runs out through the runs' locks, so
    each imports torch, TRL and the prepared data once, not once per run, with their share of the cores each. What
    they do is read from the runs' status files: a line as each run starts and ends."""

    def __init__(self, exp_dir: ExperimentDir, pending: list[RunSpec], workers: int, command=worker_command):
        self.exp_dir, self.pending = exp_dir, pending
        self.orders = worker_orders(pending, workers)
        self.command = command  # command(exp_dir, runs): argv
        self.env, self.threads = torch_threads(len(self.orders))
        self.procs: list[subprocess.Popen] = []
        self.before: dict[str, str] = {}

    def start(self) -> None:
        # what each run's status file says before the workers start (a failed or interrupted earlier attempt): only a
        # change from it is news
        self.before = {r.run_id: read_status(self.exp_dir.run(r.run_id)) for r in self.pending}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **self.env}
        for i, order in enumerate(self.orders):
            log = log_path(self.exp_dir, f"worker-{i}")
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as out:
                cmd = self.command(self.exp_dir, order)
                out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
                out.flush()
                self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out))

    def watch(self, every: float = 0.5) -> dict[str, str]:
        """Until every worker has ended: a line as each run starts and ends (from its status.json); the final
        statuses."""
        seen = dict(self.before)
        started: dict[str, float] = {}
        while True:
            ended = all(p.poll() is not None for p in self.procs)
            for run_id, before in seen.items():
                now = read_status(self.exp_dir.run(run_id))
                if now == before:
                    continue
                if now == "running":
                    started[run_id] = time.time()
                    console.print(f"started {run_id}; output in {log_path(self.exp_dir, run_id)}", soft_wrap=True)
                else:
                    took = f" in {time.time() - started[run_id]:.1f}s" if run_id in started else ""
                    console.print(f"finished {run_id}: {now}{took}", soft_wrap=True)
                seen[run_id] = now
            if ended:
                return {run_id: self._final(run_id, status) for run_id, status in seen.items()}
            time.sleep(every)

    def _final(self, run_id: str, status: str) -> str:
        """A run that failed, or was left pending or running once every worker ended: the error its log ends with says
        why."""
        if status not in ("pending", "running", "failed"):
            return status
        console.print(f"[red]failed[/]: {run_id}: {self._error(run_id)}", soft_wrap=True)  # once the logs are complete
        return "failed"

    def _error(self, run_id: str) -> str:
        """Why a run failed, as its log says (its last `error` line), else where to look."""
        log = log_path(self.exp_dir, run_id)
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        errors = [line for line in lines if line.startswith(("error:", "failed:"))]
        codes = ", ".join(str(p.returncode) for p in self.procs if p.returncode is not None)
        return errors[-1] if errors else f"see {log} (workers exited with {codes or 'no code yet'})"

    def stop(self) -> None:
        """On Ctrl-C or SIGTERM: each worker gets SIGTERM (it marks its run interrupted and starts no other), then is
        killed if it has not ended within STOP_SECONDS."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_workers(workers: Workers) -> int:
    """Start the workers and follow them; Ctrl-C or SIGTERM stops them all. Returns how many runs failed (or were
    interrupted, or never ran)."""
    workers.start()
    try:
        statuses = workers.watch()
    except KeyboardInterrupt:
        workers.stop()
        raise
    return sum(s in ("failed", "interrupted", "pending", "running") for s in statuses.values())


def run_processes(
    cfg: LaunchConfig, exp_dir: ExperimentDir, pending: list[RunSpec], where: str, callback: str | None = None
) -> int:
    """Run the pending runs in child processes (see the module); returns how many failed."""
    if cfg.gpus is None:
        workers = Workers(exp_dir, pending, cfg.workers, partial(worker_command, callback=callback))
        console.print(
            f"running {len(pending)} runs in {len(workers.orders)} `run-one` worker processes, {workers.threads}; "
            f"output in {log_path(exp_dir, '*')}"
        )
        return run_workers(workers)
    gpus = gpu_slots(cfg, where)
    procs = Processes(exp_dir, gpus, True, partial(command, callback=callback))
    console.print(
        f"running {len(pending)} runs in `run-one` processes, one per GPU of {','.join(gpus)}, {procs.threads}; "
        f"output in {log_path(exp_dir, '*')}"
    )
    return execute(procs, pending)


def execute(procs: Processes, pending: list[RunSpec]) -> int:
    """Each pending run in a child process on the next free slot of `procs`; Ctrl-C or SIGTERM stops them all.
    Returns how many failed (or were interrupted, or never started)."""
    slots = procs.free.qsize()
    pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="run-one")
    futures = {pool.submit(procs.execute, run): run for run in pending}
    statuses: dict[str, str] = {}
    try:
        for future in as_completed(futures):
            statuses[futures[future].run_id] = future.result()
            left = len(pending) - len(statuses)
            console.print(f"{len(statuses)} of {len(pending)} runs finished, {min(left, slots)} running")
    except KeyboardInterrupt:
        procs.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sum(s in ("failed", "interrupted", "not started") for s in statuses.values())
