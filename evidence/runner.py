"""Running a study: each of its `dporef` commands as a subprocess, timed, every invocation recorded in a ledger
(`<out>/evidence-ledger.json`) before it starts and again when it ends, so an interrupted study resumes (dporef
skips its finished runs) and its wall time is the sum of its invocations. A finished study's results.json (and
tune.json), the pairs' counts of its prepare stage where its page shows them, and its ledger entry are copied into
docs/results/data/<key>.json, from which its page is rendered; its report's figures (frontier.png ...) are copied
into docs/results/img/.

A command run outside the runner (started by hand before the runner knew the study) is recorded by `adopt`: the
same ledger entry as an invocation the runner timed, from the times `date +%s` printed before and after it, marked
as timed outside the runner; the commit is the last one before its start (its uncommitted changes are unknown)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from .provenance import commit, commit_before, load, machine, now
from .studies import Step, Study

LEDGER = "evidence-ledger.json"
PLAN = "prepared/plan.json"  # the prepare stage's counts: pairs kept and dropped per split, test/validation prompts
EXTERNAL = "external: date +%s before and after the same command"  # `timed_by` of an adopted invocation
SLACK = 60  # seconds: `date +%s` and the files' modification times come from the same clock, a moment apart


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
    commit and machine it ran on. Two runners may share one ledger (two studies in two terminals): a save rewrites
    only the studies this one touched, under a lock, over what the file holds then."""

    def __init__(self, out: Path):
        self.path = out / LEDGER
        self.data = self._read()
        self._touched: set[str] = set()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def invocations(self, key: str) -> list[dict]:
        self._touched.add(key)
        return self.data.setdefault(key, {"invocations": []})["invocations"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = self._read()
            for key in self._touched:
                if key in self.data:
                    merged[key] = self.data[key]
                else:
                    merged.pop(key, None)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(merged, indent=1) + "\n")
            tmp.replace(self.path)
        self.data = merged

    def step_done(self, key: str, step: str, command: list[str]) -> bool:
        """Whether the last invocation of `step` ran `command` (as the study gives it now: a command changed since,
        say by a new `--set`, runs again, resuming its experiment) and finished with exit status 0."""
        mine = [i for i in self.invocations(key) if i["step"] == step]
        return bool(mine) and mine[-1]["rc"] == 0 and mine[-1]["command"][1:] == command[1:]

    def forget(self, key: str) -> None:
        self._touched.add(key)
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
                "run with --again to run it anew (or remove it), or, if the study's own command wrote it timed by "
                f"`date +%s` around it, record that with `python -m evidence adopt {study.key} ...`",
                flush=True,
            )
            return False
        present = all(p.is_file() for p in step_files(out, step).values())
        if ledger.step_done(study.key, step.name, study.argv(step, str(out))) and present:
            print(f"evidence: {study.key}/{step.name} finished already ({out / step.exp_name})", flush=True)
            continue
        print(f"evidence: {study.key}/{step.name}: {' '.join(study.argv(step, str(out)))}", flush=True)
        rc = _invoke(ledger, study, step, out)
        if rc != 0:
            print(f"evidence: {study.key}/{step.name} exited with {rc}; run again to resume", flush=True)
            return False
    return True


def image_name(study: Study, step: Step, image: str) -> str:
    """Where a figure of `step`'s report lands under docs/results/img/: `<key>-frontier.png` (`<key>-<step>-...`
    for a study of several commands)."""
    stem = study.key if len(study.steps) == 1 else f"{study.key}-{step.name}"
    return f"{stem}-{image}"


def pairs_counts(exp_dir: Path) -> dict | None:
    """What the page shows of the pairs, from the prepare stage's plan.json (None where there is none): per split the
    pairs kept and those dropped (truncated, prompt too long, unfinished, beyond a reference's context), and the
    test and validation prompts with the pairs set aside for being on test prompts. Not the models' locations."""
    path = exp_dir / PLAN
    if not path.is_file():
        return None
    plan = json.loads(path.read_text())
    return {
        "tokenization": plan.get("tokenization"),
        "prompts": plan.get("prompts"),
        "sampled": plan.get("sampled_pairs"),
    }


def collect(study: Study, out: Path) -> dict:
    """A finished study's data file: what the page needs, from the run's own files and the ledger; `images` names
    the figures `copy_images` copies (those the report wrote), relative to docs/results/."""
    ledger = Ledger(out)
    steps = {}
    for step in study.steps:
        files = {name: json.loads(path.read_text()) for name, path in step_files(out, step).items()}
        steps[step.name] = {"command": study.argv(step, str(out)), "files": files}
        present = [i for i in step.images if (out / step.exp_name / i).is_file()]
        steps[step.name]["images"] = {i: f"img/{image_name(study, step, i)}" for i in present}
        if step.pairs:
            steps[step.name]["pairs"] = pairs_counts(out / step.exp_name)
    return {"key": study.key, "title": study.title, "invocations": ledger.invocations(study.key), "steps": steps}


def copy_images(study: Study, out: Path, img_dir: Path) -> list[Path]:
    """Copy the figures `collect` names into `img_dir`, removing the study's figures there that it did not write now
    (its report no longer draws them, or a new command renamed them); returns the paths written."""
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for step in study.steps:
        for image in step.images:
            source, target = out / step.exp_name / image, img_dir / image_name(study, step, image)
            if source.is_file():
                shutil.copyfile(source, target)
                written.append(target)
    for stale in set(img_dir.glob(f"{study.key}-*")) - set(written):
        stale.unlink()
    return written


class AdoptError(ValueError):
    """An external invocation that cannot be recorded as the study's (one line: why)."""


def _first_number(loadavg: str | None) -> float | None:
    """The 1-minute load average from `/proc/loadavg`'s line (`1.56 2.57 3.19 3/116 32187`) or a number alone."""
    if loadavg is None or not loadavg.strip():
        return None
    try:
        return round(float(loadavg.split()[0]), 2)
    except ValueError:
        raise AdoptError(f"not a load average: {loadavg!r} (give /proc/loadavg's line, or its first number)") from None


def adopt(
    study: Study,
    out: Path,
    started: int,
    ended: int,
    rc: int,
    load_start: str | None,
    load_end: str | None = None,
    step_name: str | None = None,
    commit_hash: str | None = None,
) -> dict:
    """Record in the ledger an invocation of `study`'s command that ran outside the runner, timed by `date +%s`
    before (`started`) and after (`ended`) it, with its exit status `rc` and the load average at its start (and
    end). The entry is `_invoke`'s, marked `timed_by: EXTERNAL`; its commit is `commit_hash`, else the last commit of
    HEAD's first-parent history committed before the start, and its uncommitted changes are unknown (None). Refused,
    with AdoptError, unless the experiment directory's command.json ran the study's exact command and was written
    after the start (by this invocation), unless an exit status 0 comes with a results.json written after the start,
    and when the ledger has this invocation already."""
    steps = {s.name: s for s in study.steps}
    if step_name is None and len(steps) > 1:
        raise AdoptError(f"{study.key} has several commands ({', '.join(steps)}): name one with --step")
    if step_name is not None and step_name not in steps:
        raise AdoptError(f"{study.key} has no command {step_name!r}; its commands: {', '.join(steps)}")
    step = steps[step_name] if step_name else study.steps[0]
    argv = study.argv(step, str(out))
    if ended < started:
        raise AdoptError(f"--ended {ended} is before --started {started}")
    command_file = out / step.exp_name / "command.json"
    if not command_file.is_file():
        raise AdoptError(f"{command_file} is missing: no command of {study.key} ran under {out}")
    ran = json.loads(command_file.read_text()).get("argv") or []
    if ran[1:] != argv[1:]:  # argv[0]: the script as it was called (`.venv/bin/dporef`, `dporef`)
        raise AdoptError(f"{command_file} ran `{' '.join(ran)}`, not {study.key}'s `{' '.join(argv)}`")
    if command_file.stat().st_mtime < started - SLACK:  # the command writes it as it starts
        raise AdoptError(f"{command_file} was written before --started {started}: by an earlier invocation")
    results = out / step.exp_name / "results.json"
    if rc == 0 and not (results.is_file() and results.stat().st_mtime >= started - SLACK):
        raise AdoptError(f"--rc 0, but {results} is missing or older than --started {started}: not this invocation's")
    start = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ledger = Ledger(out)
    if any(i["step"] == step.name and i["started"] == start for i in ledger.invocations(study.key)):
        raise AdoptError(f"{ledger.path} has the invocation of {study.key}/{step.name} started {start} already")
    loads = [_first_number(load_start)] + ([_first_number(load_end)] if load_end else [])
    entry = {"step": step.name, "command": argv, "started": start, "seconds": float(ended - started), "rc": rc}
    entry |= commit_before(started, commit_hash) | {"machine": machine(), "load": loads, "timed_by": EXTERNAL}
    ledger.invocations(study.key).append(entry)
    ledger.save()
    return entry
