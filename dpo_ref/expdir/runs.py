"""A run on disk: its content hash, its statuses, and the one reader of the files it wrote.

A run is done when its status is finished, every file it wrote is there, readable, holds what a run writes and has
the bytes whose sha256 its status.json (written last) recorded, and its config hash (settings and the resolved models'
fingerprints) matches, so re-running a command resumes after a crash, runs a damaged, edited or outdated run again,
and a finished experiment only rebuilds its tables. `read_run` is what both that decision and the report read, so the
two never disagree on what a run holds, and it passes on no value a table or a plot could fail on.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .. import data
from ..config import Experiment, RunSpec, expand, reference_config
from ..store import MANIFEST, Unusable, check_file, content_hash, damage, jsonl_rows, sha256_bytes
from .layout import ExperimentDir, RunDir

# statuses a rerun skips; their numbers are reported as they are (stopped: a training callback, such as tune-beta's
# pruner, stopped training before its end; the run was evaluated there)
FINISHED = ("done", "degenerate", "diverged", "stopped")
# statuses whose evaluation ran at the end of training: the report's intervals and its choice of the best use these
EVALUATED = ("done", "degenerate")


def _reference_identity(exp: Experiment, name: str | None, models: dict) -> str | dict | None:
    """What of a reference determines a run: its model spec, and for a moving one also how it moves; for a trained
    one, everything that determines the run that trains it (its hash)."""
    ref = reference_config(exp, name)
    if ref is None or ref.kind == "fixed":
        return ref.model if ref else None
    if ref.kind == "mixture":  # its components' specs, weighted
        return {"mix": {n: [reference_config(exp, n).model, w] for n, w in sorted(ref.mix.items())}}
    if ref.kind == "trained":
        named = next(r for r in expand(exp) if r.run_id == ref.run)  # the schema checked it is in the grid
        return {"trained": ref.run, "run_hash": run_hash(exp, named, models)}
    return ref.model_dump(exclude={"name"})


def run_hash(exp: Experiment, run: RunSpec, models: dict) -> str:
    """Hash of everything that determines a run's result, the resolved models' fingerprints included (`models` as
    prepared/plan.json holds them): a finished run with another hash is run again, so a model whose weights changed
    under the same spec never mixes old and new rows in one table. The world enters through its models."""
    # the untrained SFT row depends on the training settings only through max_length (validation truncation); the
    # trackers that watch training change no result
    train = exp.train.max_length if run.objective == "sft" else exp.train.model_dump(exclude={"report_to"})
    # a reference the models do not name (plan.json of another config, in a dry run) matches no finished run
    ref = reference_config(exp, run.reference)
    mix = ref.mix if ref is not None and ref.mix else {}
    names = sorted(mix) or ([run.reference] if run.reference else [])  # a mixture: its components' weights
    found = [models["references"].get(n, {}).get("fingerprint") for n in names]
    reference = (found[0] if len(found) == 1 else found) if names else None
    judge = models["judge"]["fingerprint"] if models.get("judge") else None
    parts = [
        exp.world.model_dump() if data.needs_world(exp) else None,
        exp.policy,
        *data.source(exp).hash_parts(exp),
        exp.judge.model_dump(),
        _reference_identity(exp, run.reference, models),
        train,
        exp.eval.model_dump(),
        run.model_dump(exclude={k for k in ("loss", "trl", "params") if getattr(run, k) is None}),  # as before them
        {"policy": models["policy"]["fingerprint"], "reference": reference, "judge": judge},
    ]
    return content_hash(parts)


def is_plan(plan) -> bool:
    """prepared/plan.json as prepare writes it: the resolved models (spec, location, fingerprint of the policy, each
    reference and the judge, if any) and its content key."""
    models = plan.get("models") if isinstance(plan, dict) else None
    if not (isinstance(models, dict) and isinstance(plan.get("key"), str)):
        return False
    refs = models.get("references")
    judge = models.get("judge")
    return (
        _model(models.get("policy"))
        and isinstance(refs, dict)
        and all(_model(r) for r in refs.values())
        and (judge is None or _model(judge))
    )


def _model(entry) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("spec", "location", "fingerprint"))


def prepared_models(exp_dir: ExperimentDir) -> dict | None:
    """The models the last prepare of `exp_dir` resolved (prepared/plan.json), or None before any (or when it cannot
    be read: the next prepare writes it again)."""
    plan, _ = check_file(exp_dir.plan, json.loads, is_plan)
    return plan["models"] if plan is not None else None


@dataclass(frozen=True)
class RunState:
    """Where a run stands on disk: `pending` (never started), its status.json's status, `damaged` (a finished run
    with a file missing, unreadable, not what a run writes, or not what the checksum status.json recorded) or `changed`
    (finished with other settings or models), with the reason."""

    status: str
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.status in FINISHED


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value) -> bool:
    """A number a table and a plot can show: what an evaluation writes (NaN or infinity only if a file was edited)."""
    return _number(value) and math.isfinite(value)


def _optional(check):
    return lambda value: value is None or check(value)


def _metrics(m) -> bool:
    """metrics.json holds an `eval` mapping with every measure of an evaluation (what the report tabulates), each a
    number (`degenerate`: None or why), and the training numbers and flags the report shows, of their types."""
    from ..evaluation.evaluate import EvalResult  # here, not at the top: it loads TRL, and the CLI imports plan

    measures = {f.name for f in fields(EvalResult)} - {"degenerate"}
    if not (isinstance(m, dict) and isinstance(m.get("eval"), dict) and measures <= set(m["eval"])):
        return False
    flags = m.get("flags")
    return (
        all(_finite(m["eval"][k]) for k in measures)
        and _optional(lambda r: isinstance(r, str))(m["eval"].get("degenerate"))
        and all(_optional(_number)(m.get(k)) for k in ("train_loss", "steps", "train_seconds", "eval_seconds"))
        and (flags is None or (isinstance(flags, list) and all(isinstance(f, str) for f in flags)))
    )


def _rows(kinds: dict):
    """Whether a JSON-lines file holds one or more rows, each with `kinds` (key -> check of its value)."""

    def valid(rows) -> bool:
        return bool(rows) and all(isinstance(r, dict) and all(c(r.get(k)) for k, c in kinds.items()) for r in rows)

    return valid


def _text(value) -> bool:
    return isinstance(value, str)


def _flag(value) -> bool:
    return isinstance(value, bool) or value in (0, 1)


def _run_yaml(m) -> bool:
    """run.yaml: the run's spec (a RunSpec, whose values a report shows) and its config hash."""
    if not (isinstance(m, dict) and isinstance(m.get("run"), dict) and isinstance(m.get("config_hash"), str)):
        return False
    m["run"] = RunSpec.model_validate(m["run"]).model_dump()  # a ValidationError: not what a run writes
    return True


# what the report reads of each row (reporting/uncertainty.py): key -> check of its value
GENERATED = {"prompt": _text, "reward": _finite, "length": _finite, "ended": _flag}
GENERATED |= {"kl_log_ratio": _finite, "kl_sft_log_ratio": _finite}
RANKED = dict.fromkeys(("reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected"), _finite)
# what a finished run wrote: RunDir attribute -> (parse its text, whether the parsed value is what a run writes)
WRITTEN = {
    "spec": (yaml.safe_load, _run_yaml),
    "metrics": (json.loads, _metrics),
    "generations": (jsonl_rows, _rows(GENERATED)),
    "validation": (jsonl_rows, _rows({"prompt": _text, "reward": _finite})),
    "ranking": (jsonl_rows, _rows(RANKED)),
    "model_outputs": (json.loads, lambda rows: isinstance(rows, list) and bool(rows)),
}
SMALL = ("spec", "metrics")  # what the report tabulates: kept in RunFiles (the rows are read where they are used)
ANNOTATED = ("win_rate", "lc_win_rate", "win_rate_lo", "win_rate_hi", "lc_win_rate_lo", "lc_win_rate_hi")


def _annotations(a) -> bool:
    """alpaca_eval.json (`dporef import-annotations`): the numbers the report shows, each a number or absent."""
    return (
        isinstance(a, dict)
        and all(_optional(_number)(a.get(k)) for k in ANNOTATED)
        and _optional(_text)(a.get("lc_method"))
    )


def _is_status(s) -> bool:
    return isinstance(s, dict) and isinstance(s.get("status"), str)


@dataclass(frozen=True)
class RunFiles:
    """What `read_run` found: the run's state, and for a finished, intact run its run.yaml, metrics.json and status.json
    (and imported AlpacaEval annotations, when there are any) parsed. A damaged run has its spec from the experiment
    (which setting it is), never a number from its files."""

    state: RunState
    spec: dict | None = None
    metrics: dict | None = None
    status: dict | None = None
    annotations: dict | None = None


def _checked(path: Path, name: str, sums: dict | None = None, invalid: str = "what a finished run writes"):
    """(value, why not) of one of a run's files (`name`: its WRITTEN entry); with `sums` (status.json's checksums),
    its bytes must be those it recorded."""
    parse, valid = WRITTEN[name] if name in WRITTEN else (json.loads, _annotations)
    expected = None if sums is None else sums.get(path.name)
    if sums is not None and not isinstance(expected, str):
        return None, f"status.json records no checksum of {path.name}"
    value, problem = check_file(path, parse, valid, expected)
    reasons = {"invalid": f"does not hold {invalid}", "does not match its checksum": f"{problem} in status.json"}
    return value, (None if problem is None else f"{path.name} {reasons.get(problem, problem)}")


def _files(run_dir: RunDir, status: str, trained: bool) -> dict[str, Path]:
    """The files a finished run wrote, whose checksums its status.json records: a diverged run its run.yaml, any
    other every file of WRITTEN, and a trained one the manifest of its sealed `policy/` (which holds theirs)."""
    files = {getattr(run_dir, n).name: getattr(run_dir, n) for n in (["spec"] if status == "diverged" else WRITTEN)}
    if trained and status != "diverged":
        files[f"{run_dir.policy.name}/{MANIFEST}"] = run_dir.policy / MANIFEST
    return files


def finished_status(run_dir: RunDir, status: dict, trained: bool) -> dict:
    """A finished run's status.json (written last): `status` and the sha256 of every file the run wrote, which
    `read_run` checks them against (an edit, even one keeping sizes and dates, makes the run damaged), and of the
    status itself (`status.json`: of its other keys, as JSON with sorted keys)."""
    files = _files(run_dir, status["status"], trained)
    sums = {name: sha256_bytes(path) for name, path in files.items() if path.is_file()}
    return {**status, "sha256": {**sums, run_dir.status.name: _own_sum(status)}}


def _own_sum(status: dict) -> str:
    rest = {k: v for k, v in status.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=float).encode()).hexdigest()


def _incomplete(run_dir: RunDir, status: dict, trained: bool) -> tuple[dict, str | None]:
    """The parsed small files, and why a run whose status is a finished one does not hold all it wrote as it wrote
    it (see `_files`), or None."""
    sums = status.get("sha256")
    if not isinstance(sums, dict):
        return {}, "status.json records no checksums of the run's files"
    if sums.get(run_dir.status.name) != _own_sum(status):
        return {}, "status.json does not match the checksum it records of itself"
    names = ["spec"] if status["status"] == "diverged" else list(WRITTEN)
    values = {}
    for name in names:
        values[name], problem = _checked(getattr(run_dir, name), name, sums)
        if problem:
            return {}, problem
    if status["status"] != "diverged" and len(values["model_outputs"]) != len(values["generations"]):
        return {}, "model_outputs.json and generations.jsonl hold different numbers of samples"
    problem = None
    if trained and status["status"] != "diverged":
        manifest = f"{run_dir.policy.name}/{MANIFEST}"
        problem = damage(run_dir.policy, memo=True)  # the report reads the files above, never these bytes
        if problem is None and sums.get(manifest) != sha256_bytes(run_dir.policy / MANIFEST):
            problem = f"{MANIFEST} does not match its checksum in status.json"
    return {k: v for k, v in values.items() if k in SMALL}, (f"policy/: {problem}" if problem else None)


def read_run(run_dir: RunDir, run: RunSpec) -> RunFiles:
    """The run's state from its files alone (no config hash: what `dporef report` shows), with what it wrote."""
    if not run_dir.status.exists():
        return RunFiles(RunState("pending"))
    status, problem = check_file(run_dir.status, json.loads, _is_status)
    damaged = {"run": run.model_dump()}  # which setting it is, from the experiment
    if problem:
        problem = "does not hold what a run writes" if problem == "invalid" else problem
        return RunFiles(RunState("damaged", f"status.json {problem}"), damaged)
    if status["status"] not in FINISHED:  # running, failed, interrupted: its spec, when it got as far as writing it
        spec, _ = _checked(run_dir.spec, "spec")
        return RunFiles(RunState(status["status"]), spec, status=status)
    values, problem = _incomplete(run_dir, status, trained=run.registered is not None)
    if problem:
        return RunFiles(RunState("damaged", problem), damaged, status=status)
    annotations = None
    if run_dir.annotations.is_file():
        annotations, problem = _checked(run_dir.annotations, "annotations", invalid="what import-annotations writes")
        if problem:
            return RunFiles(RunState("damaged", problem), damaged, status=status)
    return RunFiles(RunState(status["status"]), values.get("spec"), values.get("metrics"), status, annotations)


def run_rows(run_dir: RunDir, name: str) -> list[dict]:
    """The rows of a finished run's `generations`, `validation` or `ranking` file, checked as `read_run` checks them
    (what a run writes, the bytes status.json's checksum names), read once: `Unusable` when they are not."""
    status, problem = check_file(run_dir.status, json.loads, _is_status)
    sums = status.get("sha256") if status is not None else None
    path = getattr(run_dir, name)
    rows, problem = _checked(path, name, sums if isinstance(sums, dict) else {})
    if problem:
        raise Unusable(str(path), problem)
    return rows


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
    status, problem = check_file(run_dir.status, json.loads, _is_status)
    return status["status"] if problem is None else "pending" if problem == "missing" else "failed"


def clear_attempt(run_dir: RunDir, config_hash: str) -> None:
    """Remove an earlier attempt of the run, except the checkpoints in its `trainer/` when it ran with the same config
    hash: an interrupted run resumes from them (train.resume_point)."""
    spec, _ = check_file(run_dir.spec, yaml.safe_load, lambda m: isinstance(m, dict))
    same = spec is not None and spec.get("config_hash") == config_hash
    if not same:
        shutil.rmtree(run_dir.root)
        return
    for entry in (e for e in run_dir.root.iterdir() if e != run_dir.trainer):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
