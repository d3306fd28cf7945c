"""The `dporef` command line: parse, load the experiment, call the runner, print. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study how the reference policy shapes DPO: beta sweeps, objectives, reference swaps.",
)

ExperimentArg = Annotated[Path | None, typer.Argument(help="YAML experiment; default: the command's embedded default.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Results root: runs land in OUT/<experiment name>/.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.learning_rate=1e-4.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the expanded plan (runs, references, steps) and exit.")]


def default_experiment(study: str) -> Path:
    """The study's default YAML, looked up in the working directory, then beside the installed package."""
    from .runner import STUDIES

    rel = Path(STUDIES[study].default)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / rel).is_file():
            return base / rel
    raise UserError(str(rel), "default experiment not found; pass an experiment file")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars; dporef shows its own progress


def _run(study: str, experiment: Path | None, out: Path, overrides: list[str] | None, dry_run: bool) -> None:
    from .config import load_experiment

    try:
        path = experiment or default_experiment(study)
        exp = load_experiment(path, overrides or [])
        _quiet_libraries()
        from .runner import run_experiment

        failed = run_experiment(exp, out, study, str(path), dry_run=dry_run)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if failed:
        raise typer.Exit(1)


@app.command("sweep-beta")
def sweep_beta(
    experiment: ExperimentArg = None, out: OutOpt = Path("runs"), set_: SetOpt = None, dry_run: DryOpt = False
) -> None:
    """RQ1: train DPO for each beta against one reference; tabulate win rate, length, KL and ranking accuracy."""
    _run("sweep-beta", experiment, out, set_, dry_run)


@app.command("compare-objectives")
def compare_objectives(
    experiment: ExperimentArg = None, out: OutOpt = Path("runs"), set_: SetOpt = None, dry_run: DryOpt = False
) -> None:
    """RQ2: DPO vs posterior probability (no reference), likelihood (unconditional reference), SimPO, IPO, each over its own beta grid; best beta chosen on validation prompts."""  # noqa: E501
    _run("compare-objectives", experiment, out, set_, dry_run)


@app.command("swap-reference")
def swap_reference(
    experiment: ExperimentArg = None, out: OutOpt = Path("runs"), set_: SetOpt = None, dry_run: DryOpt = False
) -> None:
    """RQ3: DPO against each listed reference (stronger, same or other family, other tokenizer) across beta, with how similar each reference is beside the outcome."""  # noqa: E501
    _run("swap-reference", experiment, out, set_, dry_run)


@app.command("analyze")
def analyze(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished training run, e.g. runs/rq1_sweep_beta/dpo-sft-b0.01-s0.")
    ],
    min_count: Annotated[int, typer.Option(help="Only list vocabulary items seen at least this many times.")] = 100,
    top: Annotated[int, typer.Option(help="How many most up- and down-weighted items to list.")] = 15,
) -> None:
    """Token-level log p_theta/p_ref over validation responses, averaged per vocabulary item: histogram and most moved tokens, EOS singled out."""  # noqa: E501
    from .analyze import analyze_run
    from .ui import stdout

    try:
        _quiet_libraries()
        summary = analyze_run(run_dir, min_count, top)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    stdout.print((run_dir / "analysis" / "tokens.md").read_text(), markup=False)
    stdout.print(f"{summary['items']} vocabulary items; files in {run_dir / 'analysis'}", markup=False)


def _results_dir(exp_dir: Path):
    """(experiment, study) of a results directory, from the files the command that made it wrote."""
    import yaml

    from .config import Experiment
    from .store import read_json

    spec, command = exp_dir / "experiment.yaml", exp_dir / "command.json"
    if not (spec.is_file() and command.is_file()):
        raise UserError(str(exp_dir), "not an experiment results directory (no experiment.yaml / command.json)")
    return Experiment.model_validate(yaml.safe_load(spec.read_text())), read_json(command)["study"]


ExpDirArg = Annotated[Path, typer.Argument(help="An experiment's results directory, e.g. runs/rq1_sweep_beta.")]


@app.command("report")
def report(exp_dir: ExpDirArg):
    """Rebuild results.csv / .md / .json and the plot from the run directories on disk."""
    from .runner import report as rebuild

    try:
        exp, study = _results_dir(exp_dir)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    rebuild(exp_dir, exp, study)


@app.command("import-annotations")
def import_annotations(
    exp_dir: ExpDirArg,
    files: Annotated[list[Path], typer.Argument(help="AlpacaEval annotations.json files (one or more).")],
):
    """Read AlpacaEval annotations of the runs' model_outputs.json (e.g. a GPT-4 judge) and add their win rate and LC win rate (ae_*) to the tables."""  # noqa: E501
    from .alpaca import import_annotations as read_annotations
    from .runner import report as rebuild
    from .ui import stdout

    try:
        exp, study = _results_dir(exp_dir)
        summaries, unmatched = read_annotations(exp_dir, exp.name, files)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for generator, n in unmatched.items():
        stdout.print(f"skipped {n} annotation rows of {generator!r}: no such run in {exp_dir}", markup=False)
    if not summaries:
        typer.echo(f"error: {exp_dir}: no annotation row names a run of experiment {exp.name!r}", err=True)
        raise typer.Exit(2)
    rebuild(exp_dir, exp, study)


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())
