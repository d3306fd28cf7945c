"""Where and when a study ran: the commit (and whether the tree had uncommitted changes), the machine, the time."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """A read-only git command's output in the repository, or None outside a checkout (or without git)."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def commit() -> dict:
    """{"commit": short hash or None, "dirty": the uncommitted paths (`git status --porcelain`), at most 20}."""
    status = _git("status", "--porcelain")
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    head = (_git("rev-parse", "--short", "HEAD") or "").strip() or None
    return {"commit": head, "dirty": changed[:20], "dirty_count": len(changed)}


def commit_before(when: int, given: str | None = None) -> dict:
    """The provenance of a command that ran outside the runner, started at unix time `when`: `given` (a commit named
    by hand), else the last commit of HEAD's first-parent history committed before `when` (the tree it ran on
    unless a commit landed while it ran); whether that tree had uncommitted changes is unknown (None)."""
    if given:
        head, rule = _git("rev-parse", "--short", given), "named by hand (--commit)"
        if head is None:
            raise ValueError(f"--commit {given}: no such commit in this repository")
    else:
        full = (_git("rev-list", "-1", "--first-parent", f"--before=@{when}", "HEAD") or "").strip()
        head = _git("rev-parse", "--short", full) if full else None
        rule = "the last commit before the start (git rev-list -1 --first-parent --before=@START HEAD)"
    return {"commit": (head or "").strip() or None, "dirty": None, "dirty_count": None, "commit_rule": rule}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as /proc/cpuinfo gives it, or "unknown CPU" elsewhere."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> dict:
    """The CPU model and the cores this process may use (its affinity), as the study's commands saw them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores}


def now() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load() -> float | None:
    """The 1-minute load average (other work on the machine slows a study's wall time), None where there is none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
