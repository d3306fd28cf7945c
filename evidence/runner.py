"""Running a study: each of its `dporef` commands as a subprocess, timed, every invocation recorded in a ledger
(`<out>/evidence-ledger.json`) before it starts and again when it ends, so an interrupted study resumes (dporef
skips its finished runs) and its wall time is the sum of its invocations. A finished study's results.json (and
tune.json) and its ledger entry are copied into docs/results/data/<key>.json, from which its page is rendered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .provenance import commit, load, machine, now
from .studies import Step, Study

LEDGER = "evidence-ledger.json"


def dporef() -> str:
    """The `dporef` script of this interpreter's environment (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dporef"
    found = str(beside) if beside.is_file() else shutil.which("dporef")
    if found is None:
        raise SystemExit("dporef is not installed: run `make setup`")
    return found


class Ledger:
    """`<out>/evidence-ledger.json`: study key -> {"invocations": [...]}, each invocation the step it ran, its exact
    command, when it started, its wall seconds and exit status (None while it runs, or when it was killed), and the
    commit and machine it ran on."""

    def __init__(self, out: Path):
        self.path = out / LEDGER
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def invocations(self, key: str) -> list[dict]:
        return self.data.setdefault(key, {"invocations": []})["invocations"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)

    def step_done(self, key: str, step: str) -> bool:
        """Whether the last invocation of `step` finished with exit status 0."""
        mine = [i for i in self.invocations(key) if i["step"] == step]
        return bool(mine) and mine[-1]["rc"] == 0

    def forget(self, key: str) -> None:
        self.data.pop(key, None)
        self.save()


def step_files(out: Path, step: Step) -> dict[str, Path]:
    return {name: out / step.exp_name / name for name in step.files}


def _invoke(ledger: Ledger, study: Study, step: Step, out: Path) -> int:
    """Run one command of `study`, recording it in the ledger before it starts and when it ends (interrupted: its
    seconds so far, status "interrupted")."""
    argv = study.argv(step, str(out))
    entry = {"step": step.name, "command": argv, "started": now(), "seconds": None, "rc": None}
    entry |= commit() | {"machine": machine(), "load": [load()]}
    ledger.invocations(study.key).append(entry)
    ledger.save()
    env = os.environ | {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    start = time.monotonic()
    try:
        rc = subprocess.run([dporef(), *argv[1:]], env=env).returncode
    except KeyboardInterrupt:
        entry["seconds"], entry["rc"] = round(time.monotonic() - start, 1), "interrupted"
        ledger.save()
        raise
    entry["seconds"], entry["rc"] = round(time.monotonic() - start, 1), rc
    entry["load"].append(load())
    ledger.save()
    return rc


def run_study(study: Study, out: Path, again: bool = False) -> bool:
    """Run `study`'s commands that have not finished yet (all of them with `again`, its output removed first);
    True when every command has finished."""
    ledger = Ledger(out)
    if again:
        for step in study.steps:
            shutil.rmtree(out / step.exp_name, ignore_errors=True)
        ledger.forget(study.key)
    for step in study.steps:
        # output a command wrote that the ledger did not time: resuming it would time a resume, not the study
        timed = any(i["step"] == step.name for i in ledger.invocations(study.key))
        if (out / step.exp_name).exists() and not timed:
            print(
                f"evidence: {out / step.exp_name} exists, but no invocation of {study.key} is in {ledger.path}: "
                "run with --again to run it anew (or remove it)",
                flush=True,
            )
            return False
        present = all(p.is_file() for p in step_files(out, step).values())
        if ledger.step_done(study.key, step.name) and present:
            print(f"evidence: {study.key}/{step.name} finished already ({out / step.exp_name})", flush=True)
            continue
        print(f"evidence: {study.key}/{step.name}: {' '.join(study.argv(step, str(out)))}", flush=True)
        rc = _invoke(ledger, study, step, out)
        if rc != 0:
            print(f"evidence: {study.key}/{step.name} exited with {rc}; run again to resume", flush=True)
            return False
    return True


def collect(study: Study, out: Path) -> dict:
    """A finished study's data file: what the page needs, from the run's own files and the ledger."""
    ledger = Ledger(out)
    steps = {}
    for step in study.steps:
        files = {name: json.loads(path.read_text()) for name, path in step_files(out, step).items()}
        steps[step.name] = {"command": study.argv(step, str(out)), "files": files}
    return {"key": study.key, "title": study.title, "invocations": ledger.invocations(study.key), "steps": steps}
