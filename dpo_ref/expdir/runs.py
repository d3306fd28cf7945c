"""A run on disk: its content hash, its statuses, and the one reader of the files it wrote.

A run is done when its status is finished, every file it wrote is there and readable, and its config hash (settings
and the resolved models' fingerprints) matches, so re-running a command resumes after a crash, runs a damaged or
outdated run again, and a finished experiment only rebuilds its tables. `read_run` is what both that decision and the
report read, so the two never disagree on what a run holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .. import data
from ..config import Experiment, RunSpec, expand, reference_config
from ..objectives import OBJECTIVES
from ..store import content_hash, damage, jsonl_rows, read_json
from .layout import ExperimentDir, RunDir

# statuses a rerun skips; their numbers are reported as they are (stopped: a training callback, such as tune-beta's
# pruner, stopped training before its end; the run was evaluated there)
FINISHED = ("done", "degenerate", "diverged", "stopped")
# statuses whose evaluation ran at the end of training: the report's intervals and its choice of the best use these
EVALUATED = ("done", "degenerate")


def _reference_identity(exp: Experiment, name: str | None) -> str | dict | None:
    """What of a reference determines a run: its model spec, and for a moving one also how it moves."""
    ref = reference_config(exp, name)
    if ref is None or ref.kind == "fixed":
        return ref.model if ref else None
    return ref.model_dump(exclude={"name"})


def run_hash(exp: Experiment, run: RunSpec, models: dict) -> str:
    """Hash of everything that determines a run's result, the resolved models' fingerprints included (`models` as
    prepared/plan.json holds them): a finished run with another hash is run again, so a model whose weights changed
    under the same spec never mixes old and new rows in one table. The world enters through its models."""
    # the untrained SFT row depends on the training settings only through max_length (validation truncation)
    train = exp.train.max_length if run.objective == "sft" else exp.train.model_dump()
    # a reference the models do not name (plan.json of another config, in a dry run) matches no finished run
    reference = models["references"].get(run.reference, {}).get("fingerprint") if run.reference else None
    judge = models["judge"]["fingerprint"] if models.get("judge") else None
    parts = [
        exp.world.model_dump() if data.needs_world(exp) else None,
        exp.policy,
        *data.source(exp).hash_parts(exp),
        exp.judge.model_dump(),
        _reference_identity(exp, run.reference),
        train,
        exp.eval.model_dump(),
        run.model_dump(),
        {"policy": models["policy"]["fingerprint"], "reference": reference, "judge": judge},
    ]
    return content_hash(parts)


def prepared_models(exp_dir: ExperimentDir) -> dict | None:
    """The models the last prepare of `exp_dir` resolved (prepared/plan.json), or None before any."""
    try:
        return read_json(exp_dir.plan)["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class RunState:
    """Where a run stands on disk: `pending` (never started), its status.json's status, `damaged` (a finished run
    with a file missing or unreadable) or `changed` (finished with other settings or models), with the reason."""

    status: str
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.status in FINISHED


def _metrics(m) -> bool:
    """metrics.json holds an `eval` mapping with every measure of an evaluation (what the report tabulates)."""
    from ..evaluation.evaluate import EvalResult  # here, not at the top: it loads TRL, and the CLI imports plan

    measures = {f.name for f in fields(EvalResult)}
    return isinstance(m, dict) and isinstance(m.get("eval"), dict) and measures <= set(m["eval"])


def _dict_rows(rows) -> bool:
    return bool(rows) and all(isinstance(r, dict) for r in rows)


def _is_dict(value) -> bool:
    return isinstance(value, dict)


# what a finished run wrote: RunDir attribute -> (parse its text, whether the parsed value is what a run writes)
WRITTEN = {
    "spec": (yaml.safe_load, lambda m: isinstance(m, dict) and isinstance(m.get("run"), dict)),
    "metrics": (json.loads, _metrics),
    "generations": (jsonl_rows, _dict_rows),
    "validation": (jsonl_rows, _dict_rows),
    "ranking": (jsonl_rows, _dict_rows),
    "model_outputs": (json.loads, lambda rows: isinstance(rows, list) and bool(rows)),
}
SMALL = ("spec", "metrics")  # what the report tabulates: kept in RunFiles (the rows are read where they are used)


@dataclass(frozen=True)
class RunFiles:
    """What `read_run` found: the run's state, and for a finished, intact run its run.yaml, metrics.json and status.json
    (and imported AlpacaEval annotations, when there are any) parsed."""

    state: RunState
    spec: dict | None = None
    metrics: dict | None = None
    status: dict | None = None
    annotations: dict | None = None


def _parse(path: Path, parse, valid) -> tuple[object, str | None]:
    try:
        value = parse(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} missing"
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__})"
    return (value, None) if valid(value) else (None, f"{path.name} does not hold what a finished run writes")


def _incomplete(run_dir: RunDir, status: str, trained: bool) -> tuple[dict, str | None]:
    """The parsed small files, and why a run whose status is `status` (a finished one) does not hold all it wrote, or
    None: a diverged run wrote its run.yaml only; any other every file of WRITTEN, and a trained one an intact
    `policy/`."""
    names = ["spec"] if status == "diverged" else list(WRITTEN)
    values = {}
    for name in names:
        values[name], problem = _parse(getattr(run_dir, name), *WRITTEN[name])
        if problem:
            return {}, problem
    if status != "diverged" and len(values["model_outputs"]) != len(values["generations"]):
        return {}, "model_outputs.json and generations.jsonl hold different numbers of samples"
    problem = damage(run_dir.policy) if trained and status != "diverged" else None
    return {k: v for k, v in values.items() if k in SMALL}, (f"policy/: {problem}" if problem else None)


def read_run(run_dir: RunDir, run: RunSpec) -> RunFiles:
    """The run's state from its files alone (no config hash: what `dporef report` shows), with what it wrote."""
    if not run_dir.status.exists():
        return RunFiles(RunState("pending"))
    status, problem = _parse(run_dir.status, json.loads, lambda s: isinstance(s, dict) and "status" in s)
    if problem:
        return RunFiles(RunState("damaged", problem))
    if status["status"] not in FINISHED:  # running, failed, interrupted: its spec, when it got as far as writing it
        spec, _ = _parse(run_dir.spec, *WRITTEN["spec"])
        return RunFiles(RunState(str(status["status"])), spec, status=status)
    values, problem = _incomplete(run_dir, status["status"], trained=run.objective in OBJECTIVES)
    if problem:
        return RunFiles(RunState("damaged", problem), status=status)
    annotations = None
    if run_dir.annotations.is_file():
        annotations, problem = _parse(run_dir.annotations, json.loads, _is_dict)
        if problem:
            return RunFiles(RunState("damaged", problem), status=status)
    return RunFiles(RunState(status["status"]), values.get("spec"), values.get("metrics"), status, annotations)


def run_state(exp_dir: ExperimentDir, exp: Experiment, run: RunSpec, models: dict) -> RunState:
    """The run's state: `read_run`'s, and `changed` when it finished with another config hash than `run_hash`."""
    files = read_run(exp_dir.run(run.run_id), run)
    if not files.state.done:
        return files.state
    if files.spec.get("config_hash") != run_hash(exp, run, models):
        return RunState("changed", "its settings or models changed since it ran")
    return files.state


def is_done(exp_dir: ExperimentDir, exp: Experiment, run: RunSpec, models: dict) -> bool:
    return run_state(exp_dir, exp, run, models).done


def not_done(exp: Experiment, exp_dir: ExperimentDir) -> list[RunSpec]:
    """The runs not done with the models the last prepare resolved (all of them before any prepare). Decided without
    resolving a model, as a launcher does before it starts anything (a login node does not hash checkpoints); a run
    the next prepare finds outdated is run by the next command."""
    models = prepared_models(exp_dir)
    return [r for r in expand(exp) if not (models and is_done(exp_dir, exp, r, models))]


def read_status(run_dir: RunDir) -> str:
    """The status a run's status.json holds (a launcher's view of a run another process executed): `pending` when it
    has none yet, `failed` when it cannot be read."""
    try:
        return str(read_json(run_dir.status)["status"])
    except FileNotFoundError:
        return "pending"
    except (OSError, ValueError, KeyError, TypeError):
        return "failed"
