"""Stage 3, report: results tables and plots rebuilt from the run directories on disk, and the token analysis of a
finished run; both read files only, so they work on any machine that sees the results."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Experiment, RunSpec, expand
from ..errors import UserError
from ..models import is_adapter, load_model, load_tokenizer, resolve
from ..plan import STUDIES, run_status
from ..reporting.format import rich_table
from ..reporting.settings import BEST_COLUMNS, aggregate, best_per_method
from ..reporting.similarity import COLUMNS as SIMILARITY_COLUMNS
from ..reporting.tables import collect, shown_columns, write_report
from ..reporting.tokens import per_item, token_log_ratios, write_analysis
from ..reporting.uncertainty import BEST_RULE, add_run_intervals, describe, indistinguishable, setting_intervals
from ..store import read_json
from ..ui import stdout
from .run import Prepared


def results_dir(exp_dir: Path) -> tuple[Experiment, str]:
    """(experiment, study) of a results directory, from the files the command that made it wrote."""
    spec, command = exp_dir / "experiment.yaml", exp_dir / "command.json"
    if not (spec.is_file() and command.is_file()):
        raise UserError(str(exp_dir), "not an experiment results directory (no experiment.yaml / command.json)")
    return Experiment.model_validate(yaml.safe_load(spec.read_text())), read_json(command)["study"]


def report(exp_dir: Path, exp: Experiment, study: str, judge: str, extra: dict | None = None) -> None:
    """Rebuild the results files from the run directories on disk and print the tables; a damaged run (a file it
    wrote missing or unreadable) is shown as such, with the reason, and runs again on the next study command."""
    runs = expand(exp)
    states = {r.run_id: run_status(exp_dir / r.run_id, r) for r in runs}
    damaged = {run_id: s.reason for run_id, s in states.items() if s.status == "damaged"}
    rows = collect(exp_dir, [r.run_id for r in runs], damaged)
    if extra is None:  # rebuilt alone: keep the timings of the command that last ran the stages
        extra = _last_timings(exp_dir)
    samples = add_run_intervals(exp_dir, rows, exp.judge.kind)
    comparison, bounds = indistinguishable(rows, samples), setting_intervals(rows, samples)
    sim_path = exp_dir / "similarity.json"
    sim = read_json(sim_path) if sim_path.is_file() else None
    title = STUDIES[study].title
    write_report(exp_dir, rows, f"{exp.name} ({title})", STUDIES[study].tables, extra, sim, judge, comparison, bounds)
    stdout.print(rich_table(rows, shown_columns(rows), f"{exp.name}: {title} (95% intervals in brackets)"))
    if comparison is not None:
        stdout.print(describe(comparison).strip(), soft_wrap=True)
    if "best" in STUDIES[study].tables:
        columns = BEST_COLUMNS + (SIMILARITY_COLUMNS if sim else [])
        best = best_per_method(aggregate(rows, bounds), sim)
        stdout.print(rich_table(best, columns, f"best beta per method ({BEST_RULE})"))


def _last_timings(exp_dir: Path) -> dict:
    try:
        last = read_json(exp_dir / "results.json")
    except (OSError, ValueError):
        return {}
    keys = ("reference_scoring", "prepared", "wall_seconds", "stage_seconds")
    return {k: last[k] for k in keys if isinstance(last, dict) and k in last}


def analyze_run(run_dir: Path, min_count: int = 100, top: int = 15) -> dict:
    """Write `<run_dir>/analysis/{tokens.csv, tokens.md, histogram.png}` for a finished run; return a summary."""
    run_dir = Path(run_dir)
    policy_dir = run_dir / "policy"
    if not ((run_dir / "run.yaml").is_file() and ((policy_dir / "config.json").is_file() or is_adapter(policy_dir))):
        raise UserError(str(run_dir), "not a finished training run (needs run.yaml and policy/)")
    prepared = Prepared.open(run_dir.parent)
    run = RunSpec.model_validate(yaml.safe_load((run_dir / "run.yaml").read_text())["run"])
    policy_ref = prepared.model("policy")
    reference = policy_ref if run.reference is None else prepared.model("references", run.reference)
    tokenizer = load_tokenizer(policy_ref)
    if load_tokenizer(reference).get_vocab() != tokenizer.get_vocab():
        raise UserError(
            str(run_dir), f"reference {reference.spec} has another tokenizer; per-token ratios need the same one"
        )
    val = prepared.pairs["validation"]
    seqs = [(p, c) for p, c in zip(val["prompt_ids"], val["chosen_ids"])]
    seqs += [(p, r) for p, r in zip(val["prompt_ids"], val["rejected_ids"])]
    policy = load_model(resolve(str(run_dir / "policy")))
    exp = prepared.exp
    ids, ratios = token_log_ratios(policy, load_model(reference), seqs, exp.eval.batch_size, exp.train.max_length)
    return write_analysis(run_dir / "analysis", per_item(ids, ratios), tokenizer, min_count, top, run.run_id)
