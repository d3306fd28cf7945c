"""A study command from start to end: prepare once, run every pending run, rebuild the report.

Runs execute here, one after another in this process, each exactly as `dporef run-one` would run it in another; the
stages between them are files on disk (see stages/), so the same experiment can be prepared here
(`--prepare-only`) and its runs executed elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from . import data
from .config import Experiment, expand, load_experiment
from .plan import STUDIES, check_study, is_done, plan_text
from .stages.prepare import prepare
from .stages.report import report
from .stages.run import Prepared, execute_safely
from .store import atomic_write_json, atomic_write_text
from .ui import console, stdout


def read_experiment(path: Path, overrides: list[str]) -> Experiment:
    """The experiment file with its overrides, validated, with the data registry's cross-key checks."""
    return load_experiment(path, overrides, checks=[data.check_judge])


def run_experiment(
    exp: Experiment, out: Path, study: str, source: str, dry_run: bool = False, prepare_only: bool = False
) -> int:
    """Prepare `exp`, run every pending run and rebuild its report; returns the number of runs that failed."""
    check_study(exp, study, source)
    exp_dir = Path(out) / exp.name
    runs = expand(exp)
    if dry_run:
        stdout.print(plan_text(exp, runs, exp_dir), markup=False, soft_wrap=True)
        return 0
    t_start = time.time()
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir / "experiment.yaml", yaml.safe_dump(exp.model_dump(), sort_keys=False))
    atomic_write_json(exp_dir / "command.json", {"study": study, "experiment_file": source})
    pending = [r for r in runs if not is_done(exp_dir, exp, r)]
    for r in runs:
        if r not in pending:
            console.print(f"[green]already done[/]: {r.run_id}")
    needs_similarity = STUDIES[study].similarity and not (exp_dir / "similarity.json").is_file()
    prepared = {"status": "skipped", "computed": 0, "from_cache": 0}
    if pending or prepare_only or needs_similarity:
        prepared = prepare(exp, exp_dir, study)
    if prepare_only:
        lines = [f"prepared {exp_dir}; run each pending run anywhere that sees it, then `dporef report {exp_dir}`:"]
        stdout.print("\n".join(lines + [f"  dporef run-one {exp_dir} {r.run_id}" for r in pending]), markup=False)
        return 0
    failed = 0
    if pending:
        opened = Prepared.open(exp_dir)
        for i, run in enumerate(pending, 1):
            console.rule(f"[bold]{run.run_id}[/] ({i}/{len(pending)})")
            failed += execute_safely(opened, run) == "failed"
    scoring = {"computed": prepared["computed"], "from_cache": prepared["from_cache"]}
    extra = {"reference_scoring": scoring, "prepared": prepared["status"], "wall_seconds": time.time() - t_start}
    report(exp_dir, exp, study, data.describe_judge(exp), extra=extra)
    console.print(
        f"reference scoring passes: {scoring['computed']} computed, {scoring['from_cache']} from cache; "
        f"{len(runs) - len(pending)} of {len(runs)} runs already done; "
        f"wall time {time.time() - t_start:.1f}s; results in {exp_dir}"
    )
    return failed
