"""What a study command will do: the studies it can run (each command's title and help), the reference scoring
passes its runs need, and the `--dry-run` text. Whether a run is done is the experiment directory's (expdir.runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import data
from .config import Experiment, RunSpec, reference_config

if TYPE_CHECKING:
    from .expdir import ExperimentDir
from .errors import UserError


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
        mode = run.registered.reference if run.registered else "none"
        if mode == "conditional":
            ref = reference_config(exp, run.reference)
            if ref.kind == "trained":  # scored by the runs against it, once the run it names is done
                continue
            for name in ref.mix or [ref.name]:  # a mixture reads its components' passes
                needed.add((name, reference_config(exp, name).model, False))
        elif mode == "unconditional":
            needed.add(("policy", exp.policy, True))
    return sorted(needed)


def plan_text(exp: Experiment, runs: list[RunSpec], exp_dir: ExperimentDir) -> str:
    """The expanded plan `--dry-run` prints: runs, references to score, steps per run. A run is shown done when it
    is done with the models the last prepare resolved (a dry run resolves nothing)."""
    # here, not at the top: the experiment directory's readers load TRL, and the CLI imports plan
    from .expdir import is_done, prepared_models

    n_pairs = data.source(exp).n_train_pairs(exp)
    steps = estimated_steps(exp, n_pairs) if n_pairs is not None else None
    judge = exp.judge.kind + (f" {exp.judge.model}" if exp.judge.model else "")
    lines = [
        f"experiment {exp.name} -> {exp_dir.root}",
        f"policy: {exp.policy}   data: {exp.data.source}   judge: {judge}",
        f"test prompts (reported, never chosen on): {data.test_prompts_text(exp)}",
        "validation prompts (best beta, tune-beta, checkpoints): the validation pairs' prompts, less any test prompt",
        "references to score:",
    ]
    needs = scoring_needs(exp, runs)
    lines += [f"  {n}: {spec} [{'p_LM(y), no prompt' if u else 'p_ref(y|x)'}]" for n, spec, u in needs] or ["  (none)"]
    used = [r for r in exp.references if any(run.reference == r.name for run in runs)]
    lines += [
        f"  {r.name} is a mixture, log p = {' + '.join(f'{w:g} log p_{n}' for n, w in r.mix.items())}: its columns "
        "are summed from those above, it has no scoring pass of its own"
        for r in used
        if r.kind == "mixture"
    ]
    lines += [
        f"  {r.name} is the policy run {r.run} trains (Pre-DPO's guiding reference): scored once that run is done, "
        "by the first run against it (cached), so those runs start in a later wave"
        for r in used
        if r.kind == "trained"
    ]
    moving = [r for r in used if r.kind in ("moving", "bema")]
    how = {
        "moving": lambda r: f"TR-DPO: ref <- {r.alpha:g} * policy + {1 - r.alpha:g} * ref every {r.sync_steps} steps",
        "bema": lambda r: f"BEMA: ref <- the bias-corrected moving average of the policy every {r.sync_steps} steps",
    }
    more = {"moving": "", "bema": ", and its start and average on the CPU"}
    lines += [
        f"  {r.name} is moving ({how[r.kind](r)}): a second copy of the policy in memory while training"
        f"{more[r.kind]}; the scores above are its starting point's"
        for r in moving
    ]
    lines.append(f"runs ({len(runs)}, ~{steps if steps is not None else '?'} optimizer steps each):")
    models = prepared_models(exp_dir)
    grouped = waves(exp, runs)
    for i, wave in enumerate(grouped):
        if len(grouped) > 1:
            lines.append(f" wave {i + 1} of {len(grouped)}" + (" (after the runs it trains against)" if i else ""))
        for run in wave:
            state = "done" if models and is_done(exp_dir, exp, run, models) else "pending"
            lines.append(
                f"  {run.run_id:<32} objective={run.objective:<10} reference={run.reference or '-':<8} "
                f"beta={'-' if run.beta is None else f'{run.beta:g}':<7} seed={run.seed}  [{state}]"
            )
    return "\n".join(lines)


def dependency(exp: Experiment, run: RunSpec) -> str | None:
    """The run whose trained policy `run` trains against (a `trained` reference), or None."""
    ref = reference_config(exp, run.reference)
    return ref.run if ref is not None and ref.kind == "trained" and run.registered is not None else None


def waves(exp: Experiment, runs: list[RunSpec]) -> list[list[RunSpec]]:
    """`runs` in the order they can execute: first every run that needs no other, then the runs against a
    `trained` reference (the run it names is in the first wave, or done already when it is not among `runs`). The
    schema allows no deeper chain, so there are at most two waves; none is empty."""
    later = [r for r in runs if dependency(exp, r) is not None]
    first = [r for r in runs if dependency(exp, r) is None]
    return [w for w in (first, later) if w]
