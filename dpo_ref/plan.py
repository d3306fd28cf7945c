"""What a study command will do: the studies, each run's content hash, which runs are done, and the `--dry-run` text.

A run is done when its status is finished, every file it wrote is there and readable, and its config hash (settings
and the resolved models' fingerprints) matches, so re-running a command resumes after a crash, runs a damaged or
outdated run again, and a finished experiment only rebuilds its tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from . import data
from .config import Experiment, ReferenceConfig, RunSpec, expand
from .errors import UserError
from .objectives import OBJECTIVES
from .store import content_hash, damage, jsonl_rows, read_json


@dataclass(frozen=True)
class Study:
    command: str  # the CLI command
    title: str
    help: str  # the command's --help text
    default: str  # the embedded default experiment, relative to the repository root
    tables: tuple[str, ...]  # study-specific views in results.md (see reporting.tables.write_report)
    similarity: bool = False  # measure how alike each reference is to the policy (similarity.json)
    one_reference: bool = True  # the study varies something else than the reference


STUDIES = {
    s.command: s
    for s in [
        Study(
            "sweep-beta",
            "RQ1: DPO across beta for one reference",
            "RQ1: train DPO for each beta against one reference; tabulate win rate, length, KL and ranking accuracy.",
            "experiments/rq1_sweep_beta/default.yaml",
            ("grid",),
        ),
        Study(
            "compare-objectives",
            "RQ2: DPO vs objectives without a reference or with an unconditional one",
            "RQ2: DPO vs posterior probability (no reference), likelihood (unconditional reference), SimPO, IPO, each "
            "over its own beta grid; best beta chosen on validation prompts.",
            "experiments/rq2_compare_objectives/default.yaml",
            ("grid", "best"),
        ),
        Study(
            "swap-reference",
            "RQ3: references of other strength, family and tokenizer, across beta",
            "RQ3: DPO against each listed reference (stronger, same or other family, other tokenizer) across beta, "
            "with how similar each reference is beside the outcome.",
            "experiments/rq3_swap_reference/default.yaml",
            ("grid", "best"),
            similarity=True,
            one_reference=False,
        ),
    ]
}


def check_study(exp: Experiment, study: str, source: str) -> None:
    """Each command studies one axis; refuse experiments that do not fit it, naming the key."""
    if STUDIES[study].one_reference and len(exp.references) != 1:
        raise UserError(f"{source}: references", f"{study} takes exactly one reference, got {len(exp.references)}")


# statuses a rerun skips; their numbers are reported as they are (pruned: a tune-beta trial its pruner stopped)
FINISHED = ("done", "degenerate", "diverged", "pruned")


def reference_config(exp: Experiment, name: str | None) -> ReferenceConfig | None:
    return next((r for r in exp.references if r.name == name), None)


def reference_spec(exp: Experiment, name: str | None) -> str | None:
    ref = reference_config(exp, name)
    return ref.model if ref else None


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


def prepared_models(exp_dir: Path) -> dict | None:
    """The models the last prepare of `exp_dir` resolved (prepared/plan.json), or None before any."""
    try:
        return read_json(Path(exp_dir) / "prepared" / "plan.json")["models"]
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
    from .evaluation.evaluate import EvalResult  # here, not at the top: it loads TRL, and the CLI imports plan

    measures = {f.name for f in fields(EvalResult)}
    return isinstance(m, dict) and isinstance(m.get("eval"), dict) and measures <= set(m["eval"])


def _dict_rows(rows) -> bool:
    return bool(rows) and all(isinstance(r, dict) for r in rows)


# what a finished run wrote: file -> (parse its text, whether the parsed value is what a run writes)
WRITTEN = {
    "run.yaml": (yaml.safe_load, lambda m: isinstance(m, dict) and isinstance(m.get("run"), dict)),
    "metrics.json": (json.loads, _metrics),
    "generations.jsonl": (jsonl_rows, _dict_rows),
    "validation.jsonl": (jsonl_rows, _dict_rows),
    "ranking.jsonl": (jsonl_rows, _dict_rows),
    "model_outputs.json": (json.loads, lambda rows: isinstance(rows, list) and bool(rows)),
}


def _incomplete(run_dir: Path, status: str, trained: bool) -> str | None:
    """Why a run whose status is `status` (a finished one) does not hold all it wrote, or None: a diverged run wrote
    its run.yaml only; a done or degenerate one every file of WRITTEN, and a trained one an intact `policy/`."""
    names = ["run.yaml"] if status == "diverged" else list(WRITTEN)
    values = {}
    for name in names:
        parse, valid = WRITTEN[name]
        try:
            values[name] = parse((run_dir / name).read_text())
        except FileNotFoundError:
            return f"{name} missing"
        except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
            return f"{name} unreadable ({type(e).__name__})"
        if not valid(values[name]):
            return f"{name} does not hold what a finished run writes"
    if status != "diverged" and len(values["model_outputs.json"]) != len(values["generations.jsonl"]):
        return "model_outputs.json and generations.jsonl hold different numbers of samples"
    problem = damage(run_dir / "policy") if trained and status != "diverged" else None
    return f"policy/: {problem}" if problem else None


def run_status(run_dir: Path, run: RunSpec) -> RunState:
    """The run's state from its files alone (no config hash: what `dporef report` shows)."""
    if not (run_dir / "status.json").exists():
        return RunState("pending")
    try:
        status = read_json(run_dir / "status.json")["status"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return RunState("damaged", f"status.json unreadable ({type(e).__name__})")
    if status not in FINISHED:
        return RunState(str(status))
    problem = _incomplete(run_dir, status, trained=run.objective in OBJECTIVES)
    return RunState("damaged", problem) if problem else RunState(status)


def run_state(exp_dir: Path, exp: Experiment, run: RunSpec, models: dict) -> RunState:
    """The run's state: `run_status`, and `changed` when it finished with another config hash than `run_hash`."""
    state = run_status(exp_dir / run.run_id, run)
    if not state.done:
        return state
    meta = yaml.safe_load((exp_dir / run.run_id / "run.yaml").read_text())  # readable: run_status checked it
    if meta.get("config_hash") != run_hash(exp, run, models):
        return RunState("changed", "its settings or models changed since it ran")
    return state


def is_done(exp_dir: Path, exp: Experiment, run: RunSpec, models: dict) -> bool:
    return run_state(exp_dir, exp, run, models).done


def not_done(exp: Experiment, exp_dir: Path) -> list[RunSpec]:
    """The runs not done with the models the last prepare resolved (all of them before any prepare). Decided without
    resolving a model, as a launcher does before it starts anything (a login node does not hash checkpoints); a run
    the next prepare finds outdated is run by the next command."""
    models = prepared_models(exp_dir)
    return [r for r in expand(exp) if not (models and is_done(exp_dir, exp, r, models))]


def estimated_steps(exp: Experiment, n_pairs: int) -> int:
    if exp.train.max_steps > 0:
        return exp.train.max_steps
    per_epoch = math.ceil(n_pairs / (exp.train.batch_size * exp.train.grad_accum))
    return math.ceil(per_epoch * exp.train.epochs)


def scoring_needs(exp: Experiment, runs: list[RunSpec]) -> list[tuple[str, str, bool]]:
    """(name, model spec, unconditional) of every reference scoring pass the runs read, in a stable order: the
    conditional p_ref(y|x) of each reference a run trains against, and the policy's unconditional p_LM(y)."""
    needed = set()
    for run in runs:
        mode = OBJECTIVES[run.objective].reference if run.objective in OBJECTIVES else "none"
        if mode == "conditional":
            needed.add((run.reference, reference_spec(exp, run.reference), False))
        elif mode == "unconditional":
            needed.add(("policy", exp.policy, True))
    return sorted(needed)


def plan_text(exp: Experiment, runs: list[RunSpec], exp_dir: Path) -> str:
    """The expanded plan `--dry-run` prints: runs, references to score, steps per run. A run is shown done when it
    is done with the models the last prepare resolved (a dry run resolves nothing)."""
    n_pairs = data.source(exp).n_train_pairs(exp)
    steps = estimated_steps(exp, n_pairs) if n_pairs is not None else None
    judge = exp.judge.kind + (f" {exp.judge.model}" if exp.judge.model else "")
    lines = [
        f"experiment {exp.name} -> {exp_dir}",
        f"policy: {exp.policy}   data: {exp.data.source}   judge: {judge}",
        f"test prompts (reported, never chosen on): {data.test_prompts_text(exp)}",
        "validation prompts (best beta, tune-beta, checkpoints): the validation pairs' prompts, less any test prompt",
        "references to score:",
    ]
    needs = scoring_needs(exp, runs)
    lines += [f"  {n}: {spec} [{'p_LM(y), no prompt' if u else 'p_ref(y|x)'}]" for n, spec, u in needs] or ["  (none)"]
    moving = [r for r in exp.references if r.kind == "moving" and any(run.reference == r.name for run in runs)]
    lines += [
        f"  {r.name} is moving (TR-DPO: ref <- {r.alpha:g} * policy + {1 - r.alpha:g} * ref every {r.sync_steps} "
        "steps): a second copy of the policy in memory while training; the scores above are its starting point's"
        for r in moving
    ]
    lines.append(f"runs ({len(runs)}, ~{steps if steps is not None else '?'} optimizer steps each):")
    models = prepared_models(exp_dir)
    for run in runs:
        state = "done" if models and is_done(exp_dir, exp, run, models) else "pending"
        lines.append(
            f"  {run.run_id:<32} objective={run.objective:<10} reference={run.reference or '-':<8} "
            f"beta={'-' if run.beta is None else f'{run.beta:g}':<7} seed={run.seed}  [{state}]"
        )
    return "\n".join(lines)


def find_run(exp: Experiment, run_id: str, where: str) -> RunSpec:
    """The run called `run_id` in the experiment's grid."""
    runs = {r.run_id: r for r in expand(exp)}
    if run_id not in runs:
        raise UserError(where, f"no run {run_id!r} in experiment {exp.name}; runs: {', '.join(runs)}")
    return runs[run_id]
