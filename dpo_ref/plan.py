"""What a study command will do: the studies, each run's content hash, which runs are done, and the `--dry-run` text.

A run is done when its status is finished and its config hash matches, so re-running a command resumes after a crash
and a finished experiment only rebuilds its tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import data
from .config import Experiment, RunSpec, expand
from .errors import UserError
from .objectives import OBJECTIVES
from .store import content_hash, read_json


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


FINISHED = ("done", "degenerate", "diverged")  # statuses a rerun skips; their numbers are reported as they are


def reference_spec(exp: Experiment, name: str | None) -> str | None:
    return next((r.model for r in exp.references if r.name == name), None)


def run_hash(exp: Experiment, run: RunSpec) -> str:
    """Hash of everything that determines a run's result; a finished run with another hash is run again."""
    # the untrained SFT row depends on the training settings only through max_length (validation truncation)
    train = exp.train.max_length if run.objective == "sft" else exp.train.model_dump()
    parts = [
        exp.world.model_dump() if data.needs_world(exp) else None,
        exp.policy,
        *data.source(exp).hash_parts(exp),
        exp.judge.model_dump(),
        reference_spec(exp, run.reference),
        train,
        exp.eval.model_dump(),
        run.model_dump(),
    ]
    return content_hash(parts)


def is_done(exp_dir: Path, exp: Experiment, run: RunSpec) -> bool:
    run_dir = exp_dir / run.run_id
    try:
        status = read_json(run_dir / "status.json")
        meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return status.get("status") in FINISHED and meta.get("config_hash") == run_hash(exp, run)


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
    """The expanded plan `--dry-run` prints: runs, references to score, steps per run."""
    n_pairs = data.source(exp).n_train_pairs(exp)
    steps = estimated_steps(exp, n_pairs) if n_pairs is not None else None
    judge = exp.judge.kind + (f" {exp.judge.model}" if exp.judge.model else "")
    lines = [
        f"experiment {exp.name} -> {exp_dir}",
        f"policy: {exp.policy}   data: {exp.data.source}   judge: {judge}",
        "references to score:",
    ]
    needs = scoring_needs(exp, runs)
    lines += [f"  {n}: {spec} [{'p_LM(y), no prompt' if u else 'p_ref(y|x)'}]" for n, spec, u in needs] or ["  (none)"]
    lines.append(f"runs ({len(runs)}, ~{steps if steps is not None else '?'} optimizer steps each):")
    for run in runs:
        state = "done" if is_done(exp_dir, exp, run) else "pending"
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
