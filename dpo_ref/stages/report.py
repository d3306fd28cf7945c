"""Stage 3, report: results tables and plots rebuilt from the run directories on disk, imported AlpacaEval
annotations, and the token analysis of a finished run; all read files only, so they work on any machine that sees the
results."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import data
from ..config import Experiment, RunSpec, expand, reference_config
from ..errors import UserError
from ..evaluation.alpaca_eval import import_annotations
from ..expdir import ExperimentDir, Prepared, RunDir, checked, read_run, read_spec
from ..models import load_tokenizer, resolve
from ..plan import STUDIES
from ..precision import regime_for
from ..reporting.format import rich_table
from ..reporting.settings import BEST_COLUMNS, aggregate, best_per_method
from ..reporting.similarity import COLUMNS as SIMILARITY_COLUMNS
from ..reporting.tables import collect, shown_columns, write_report
from ..reporting.tokens import per_item, token_log_ratios, write_analysis
from ..reporting.uncertainty import BEST_RULE, add_run_intervals, describe, indistinguishable, setting_intervals
from ..store import atomic_write_json, damage, read_json
from ..ui import stdout


def _is_mapping(value) -> bool:
    return isinstance(value, dict)


def _run_meta(meta) -> bool:
    """run.yaml as a run writes it: its spec under `run`."""
    return RunSpec.model_validate(meta["run"]) is not None


def results_dir(exp_dir: ExperimentDir) -> tuple[Experiment, str]:
    """(experiment, study) of a results directory, from the files the command that made it wrote."""
    exp, command = read_spec(exp_dir)
    if command["study"] not in STUDIES:
        study = command["study"]
        raise UserError(str(exp_dir.command), f"names no study dporef knows ({study!r}); run the study command again")
    return exp, command["study"]


def rebuild(exp_dir: ExperimentDir) -> None:
    """`dporef report`: the report of a results directory, from its files alone."""
    exp, study = results_dir(exp_dir)
    report(exp_dir, exp, study, data.describe_judge(exp))


def report(exp_dir: ExperimentDir, exp: Experiment, study: str, judge: str, extra: dict | None = None) -> None:
    """Rebuild the results files from the run directories on disk and print the tables; a damaged run (a file it
    wrote missing or unreadable) is shown as such, with the reason, and runs again on the next study command."""
    files = {r.run_id: read_run(exp_dir.run(r.run_id), r) for r in expand(exp)}
    rows = collect(files)
    histories = {run_id: f.metrics.get("history") for run_id, f in files.items() if f.metrics is not None}
    if extra is None:  # rebuilt alone: keep the timings of the command that last ran the stages
        extra = _last_timings(exp_dir)
    samples = add_run_intervals(exp_dir, rows, exp.judge.kind)
    comparison, bounds = indistinguishable(rows, samples), setting_intervals(rows, samples)
    again = "run the study command again to measure it"
    sim = checked(exp_dir.similarity, json.loads, _is_mapping, again) if exp_dir.similarity.is_file() else None
    title = STUDIES[study].title
    unconverged = [run_id for run_id, items in samples.items() if not items["lc"].converged]
    tables = STUDIES[study].tables
    write_report(
        exp_dir, rows, f"{exp.name} ({title})", tables, extra, sim, judge, comparison, bounds, unconverged, histories
    )
    stdout.print(rich_table(rows, shown_columns(rows), f"{exp.name}: {title} (95% intervals in brackets)"))
    if comparison is not None:
        stdout.print(describe(comparison).strip(), soft_wrap=True)
    if "best" in STUDIES[study].tables:
        columns = BEST_COLUMNS + (SIMILARITY_COLUMNS if sim else [])
        best = best_per_method(aggregate(rows, bounds), sim)
        stdout.print(rich_table(best, columns, f"best beta per method ({BEST_RULE})"))


def _last_timings(exp_dir: ExperimentDir) -> dict:
    try:
        last = read_json(exp_dir.result("results.json"))
    except (OSError, ValueError):
        return {}
    keys = ("reference_scoring", "prepared", "wall_seconds", "stage_seconds")
    return {k: last[k] for k in keys if isinstance(last, dict) and k in last}


def annotate(exp_dir: ExperimentDir, files: list[Path]) -> None:
    """`dporef import-annotations`: write each run's AlpacaEval summary (alpaca_eval.json) from annotation files,
    every file checked before anything is written, then rebuild the report; rows that name no run of this experiment
    are skipped, with a line saying so."""
    exp, _ = results_dir(exp_dir)
    started = {r.run_id: exp_dir.run(r.run_id) for r in expand(exp) if exp_dir.run(r.run_id).spec.is_file()}
    summaries, unmatched = import_annotations(exp.name, files, {run_id: rd.root for run_id, rd in started.items()})
    for generator, n in unmatched.items():
        stdout.print(f"skipped {n} annotation rows of {generator!r}: no such run in {exp_dir.root}", markup=False)
    if not summaries:
        raise UserError(str(exp_dir.root), f"no annotation row names a run of experiment {exp.name!r}")
    for run_id, summary in summaries.items():
        atomic_write_json(started[run_id].annotations, summary)
    rebuild(exp_dir)


def analyze_run(run_dir: RunDir, min_count: int = 100, top: int = 15) -> dict:
    """Write `<run_dir>/analysis/{tokens.csv, tokens.md, histogram.png}` for a finished run; return a summary."""
    if not (run_dir.spec.is_file() and run_dir.policy.is_dir() and damage(run_dir.policy) is None):
        raise UserError(str(run_dir.root), "not a finished training run (needs run.yaml and an intact policy/)")
    prepared = Prepared.open(ExperimentDir(run_dir.root.parent))
    meta = checked(run_dir.spec, yaml.safe_load, _run_meta, "run the study command again to rerun it")
    run = RunSpec.model_validate(meta["run"])
    policy_ref = prepared.model("policy")
    trained_against = reference_config(prepared.exp, run.reference)
    if trained_against is not None and trained_against.kind == "mixture":
        raise UserError(str(run_dir.root), "trained against a mixture: per-token ratios need one reference model")
    reference = prepared.reference_model(run) or policy_ref
    tokenizer = load_tokenizer(policy_ref)
    if load_tokenizer(reference).get_vocab() != tokenizer.get_vocab():
        raise UserError(
            str(run_dir.root), f"reference {reference.spec} has another tokenizer; per-token ratios need the same one"
        )
    val = prepared.pairs["validation"]
    seqs = [(p, c) for p, c in zip(val["prompt_ids"], val["chosen_ids"])]
    seqs += [(p, r) for p, r in zip(val["prompt_ids"], val["rejected_ids"])]
    exp = prepared.exp
    regime = regime_for(policy_ref, exp.train.precision)  # the trained policy's, as it was evaluated
    policy, ref_model = (
        regime.load(resolve(str(run_dir.policy))),
        regime_for(reference, exp.train.precision).load(reference),
    )
    with regime.autocast():
        ids, ratios = token_log_ratios(policy, ref_model, seqs, exp.eval.batch_size, exp.train.max_length)
    return write_analysis(run_dir, per_item(ids, ratios), tokenizer, min_count, top, run.run_id)
