"""The local launcher with `gpus` or `workers`: each pending run as a `python -m dpo_ref run-one EXP_DIR RUN_ID`
process, at most one per slot (a GPU, pinned with CUDA_VISIBLE_DEVICES, or a worker) at a time, a finished run freeing
its slot for the next. Process management only (subprocess, a thread per slot): which run goes where is first come,
first served, and a run that fails leaves the others running.
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


def dry_run(cfg: LaunchConfig, exp_dir: ExperimentDir, runs: list[RunSpec], where: str) -> str:
    """The processes the launcher would start, with their GPUs."""
    gpus = gpu_slots(cfg, where)
    slots = (
        f"one per GPU of {','.join(gpus)} (<free>: the first a finished run frees)"
        if gpus
        else f"{cfg.workers} at once"
    )
    lines = [f"launcher local: a `run-one` process per pending run, {slots}; output in {log_path(exp_dir, '<run>')}:"]
    for i, run in enumerate(runs):
        pin = f"CUDA_VISIBLE_DEVICES={gpus[i] if i < len(gpus) else '<free>'} " if gpus else ""
        lines.append(f"  {pin}{shlex.join(command(exp_dir, run))}")
    return "\n".join(lines)


class Processes:
    """The pending runs of one experiment as child processes, one per free slot."""

    def __init__(self, exp_dir: ExperimentDir, slots: list[str], pinned: bool, command=command):
        self.exp_dir, self.pinned, self.command = exp_dir, pinned, command  # command(exp_dir, run): argv
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
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
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


def run_processes(
    cfg: LaunchConfig, exp_dir: ExperimentDir, pending: list[RunSpec], where: str, callback: str | None = None
) -> int:
    """Run the pending runs in child processes (see the module); returns how many failed."""
    gpus = gpu_slots(cfg, where)
    slots = gpus or [str(i) for i in range(cfg.workers)]
    kind = f"one per GPU of {','.join(gpus)}" if gpus else f"{cfg.workers} at once"
    console.print(f"running {len(pending)} runs in `run-one` processes, {kind}; output in {log_path(exp_dir, '*')}")
    return execute(Processes(exp_dir, slots, gpus is not None, partial(command, callback=callback)), pending)


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
