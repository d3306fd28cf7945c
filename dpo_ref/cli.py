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

DEFAULTS = {
    "sweep-beta": "experiments/rq1_sweep_beta/default.yaml",
}

ExperimentArg = Annotated[Path | None, typer.Argument(help="YAML experiment; default: the command's embedded default.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Results root: runs land in OUT/<experiment name>/.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.learning_rate=1e-4.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the expanded plan (runs, references, steps) and exit.")]


def default_experiment(study: str) -> Path:
    """The study's default YAML, looked up in the working directory, then beside the installed package."""
    rel = Path(DEFAULTS[study])
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


@app.command("report")
def report(
    exp_dir: Annotated[Path, typer.Argument(help="An experiment's results directory, e.g. runs/rq1_sweep_beta.")],
):
    """Rebuild results.csv / .md / .json and the plot from the run directories on disk."""
    import yaml

    from .config import Experiment, expand
    from .report import SHOWN, collect, rich_table, write_report
    from .ui import stdout

    spec = exp_dir / "experiment.yaml"
    if not spec.is_file():
        typer.echo(f"error: {spec}: not an experiment results directory (no experiment.yaml)", err=True)
        raise typer.Exit(2)
    exp = Experiment.model_validate(yaml.safe_load(spec.read_text()))
    rows = collect(exp_dir, [r.run_id for r in expand(exp)])
    write_report(exp_dir, rows, exp.name)
    stdout.print(rich_table(rows, SHOWN, exp.name))


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())
