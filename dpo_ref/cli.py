"""The `dporef` command line: parse, load the experiment, call the runner or a stage, print. Nothing else lives here.

The three study commands are made from the study table (plan.STUDIES); the others work on results directories.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from .errors import EXCERPT, UserError, one_line
from .plan import STUDIES
from .store import Unusable
from .ui import quiet_libraries


class OneLineErrors(TyperGroup):
    """Click's own errors (an unknown option, a missing argument, a value of the wrong type, a file it cannot read)
    in the form of dporef's: one line `error: <where>: <what is wrong>` and exit code 2, not a usage box."""

    def main(self, *args, **kwargs):
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})  # Exit(n) comes back as n
        except typer.TyperException as e:  # Typer's click: its UsageError, BadParameter, FileError ...
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                where = ctx.command_path if ctx else "dporef"
                typer.echo(f"error: {where}: {one_line(e.format_message(), 2 * EXCERPT)}", err=True)
            code = 2
        except typer.Abort:
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="dporef",  # the program's name in messages, in tests too (CliRunner would call it `root`)
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study how the reference policy shapes DPO: beta sweeps, objectives, reference swaps.",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM sends before pre-emption) as an interrupt: the run stops as on Ctrl-C, marked
    `interrupted` with a line saying how to resume, and the command exits 143 as shells report it."""


def _terminate(signum, frame):
    raise Terminated()


@app.callback()
def _handle_sigterm() -> None:
    """Before every command: SIGTERM raises Terminated instead of ending the process at once with nothing said."""
    if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
        signal.signal(signal.SIGTERM, _terminate)


ExperimentArg = Annotated[Path | None, typer.Argument(help="YAML experiment; default: the command's embedded default.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Results root: runs land in OUT/<experiment name>/.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.learning_rate=1e-4.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the expanded plan (runs, references, steps) and exit.")]
PrepareOpt = Annotated[
    bool,
    typer.Option(
        "--prepare-only",
        help="Prepare the experiment (models, tokenized pairs, reference scores, SFT baselines) and print the "
        "`dporef run-one` command of every pending run, to run elsewhere; then `dporef report`.",
    ),
]
LauncherOpt = Annotated[
    str | None,
    typer.Option(
        "--launcher",
        help="Where the runs execute: local (this machine; launch.gpus / launch.workers), accelerate (this machine, "
        "each run across its GPUs through `accelerate launch`; launch.accelerate) or slurm (every stage a SLURM job "
        "through submitit; launch.slurm). Default: the experiment's launch.launcher.",
    ),
]
ExpDirArg = Annotated[Path, typer.Argument(help="An experiment's results directory, e.g. runs/rq1_sweep_beta.")]


def _os_error(e: OSError) -> str:
    """`<path>: <what the OS said> (<ERRNO>)`, e.g. a read-only or full disk, a path under a regular file."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    name = errno.errorcode.get(e.errno or 0)
    what = f"{e.strerror} ({name})" if name and e.strerror else str(e)
    return one_line(f"{paths}: {what}" if paths else what, 600)


def _guarded(action: Callable[[], int | None]) -> None:
    """Run a command body: a user's mistake or a disk fault outside a run is one line and exit code 2, Ctrl-C exit
    130 (SIGTERM 143), failed runs exit 1 (a fault during a run marks it failed)."""
    try:
        failed = action()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except OSError as e:
        typer.echo(f"error: {_os_error(e)}", err=True)
        raise typer.Exit(2) from None
    except Unusable as e:  # a file dporef wrote, read back and found damaged where no caller named it
        typer.echo(f"error: {e.where}: {e.message}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as e:
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
    if failed:
        raise typer.Exit(1)


def default_experiment(study: str) -> Path:
    """The study's default YAML, looked up in the working directory, then beside the installed package."""
    rel = Path(STUDIES[study].default)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / rel).is_file():
            return base / rel
    raise UserError(str(rel), "default experiment not found; pass an experiment file")


def _study_command(study: str):
    def command(
        experiment: ExperimentArg = None,
        out: OutOpt = Path("runs"),
        set_: SetOpt = None,
        dry_run: DryOpt = False,
        prepare_only: PrepareOpt = False,
        launcher: LauncherOpt = None,
    ) -> None:
        def body() -> int:
            from .runner import read_experiment, run_experiment

            path = experiment or default_experiment(study)
            overrides = [*(set_ or []), *([f"launch.launcher={launcher}"] if launcher else [])]  # the flag wins
            exp = read_experiment(path, overrides)
            quiet_libraries()
            return run_experiment(exp, out, study, str(path), dry_run=dry_run, prepare_only=prepare_only)

        _guarded(body)

    command.__doc__ = STUDIES[study].help
    return command


for _study in STUDIES:
    app.command(_study)(_study_command(_study))


@app.command("tune-beta")
def tune_beta(
    experiment: ExperimentArg = None,
    budget: Annotated[int, typer.Option("--budget", min=1, help="Trials (runs) at most, pruned ones included.")] = 6,
    checks: Annotated[
        int,
        typer.Option(
            "--checks",
            min=0,
            help="Validation evaluations during each trial, for the pruner to stop one that lags (0: no pruning).",
        ),
    ] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    out: OutOpt = Path("runs"),
    set_: SetOpt = None,
    launcher: LauncherOpt = None,
) -> None:
    """The best beta without a grid: Optuna searches log-beta over the range the experiment's betas span (three trials spread over it, then a Gaussian-process sampler; a median pruner on validation checks), selecting on validation prompts only. Each trial is an ordinary run of OUT/<name>_tune; run it again to resume or, with a larger --budget, to go on."""  # noqa: E501

    def body() -> int:
        from .runner import read_experiment
        from .tune import TuneSettings
        from .tune import tune_beta as search

        path = experiment or default_experiment("sweep-beta")
        overrides = [*(set_ or []), *([f"launch.launcher={launcher}"] if launcher else [])]
        exp = read_experiment(path, overrides)
        quiet_libraries()
        return search(exp, out, str(path), TuneSettings(budget, checks, seed))

    _guarded(body)


@app.command("run-one")
def run_one(
    exp_dir: ExpDirArg,
    run_ids: Annotated[
        list[str],
        typer.Argument(
            help="The run to execute, e.g. dpo-sft-b0.1-s0 (see --dry-run); several: this process runs them in turn, "
            "leaving a run another process holds for the end, so processes given the same runs share them out."
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="When another process is running this run, wait for it instead of exiting.")
    ] = False,
    log_each: Annotated[
        bool,
        typer.Option("--log-each", help="Write each run's output to the experiment's logs/<run_id>.log (workers)."),
    ] = False,
    callback: Annotated[
        list[str] | None,
        typer.Option(
            "--callback",
            help="A Trainer callback factory MODULE:FUNCTION, called with (prepared experiment, run) in every process "
            "that trains the run; it returns a transformers TrainerCallback or None. Repeatable. tune-beta passes its "
            "pruner this way.",
        ),
    ] = None,
) -> None:
    """Train and evaluate one run of a prepared experiment, reading only what the prepare stage wrote; runs of one experiment may execute at the same time in separate processes. A run already done is left as it is (exit 0); a run another process is running exits with code 2 and one line saying so, or with --wait waits for it and then runs it only if it is still not done. With several runs, one after another; exit 1 if any failed."""  # noqa: E501

    def body() -> int:
        from .expdir import ExperimentDir
        from .stages.run import callback_factory, run_several
        from .stages.run import run_one as execute

        quiet_libraries()
        factories = [callback_factory(spec, "--callback") for spec in callback or []]
        if len(run_ids) > 1 or log_each:
            statuses = run_several(ExperimentDir(exp_dir), run_ids, log_each, factories)
            return int("failed" in statuses)  # diverged and degenerate runs are results too
        status = execute(ExperimentDir(exp_dir), run_ids[0], wait, factories)
        return int(status == "failed")

    _guarded(body)


@app.command("analyze")
def analyze(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished training run, e.g. runs/rq1_sweep_beta/dpo-sft-b0.01-s0.")
    ],
    min_count: Annotated[
        int, typer.Option(min=1, help="Only list vocabulary items seen at least this many times.")
    ] = 100,
    top: Annotated[int, typer.Option(min=1, help="How many most up- and down-weighted items to list.")] = 15,
) -> None:
    """Token-level log p_theta/p_ref over validation responses, averaged per vocabulary item: histogram and most moved tokens, EOS singled out."""  # noqa: E501

    def body() -> None:
        from .expdir import ExperimentDir
        from .stages.report import analyze_run
        from .ui import stdout

        quiet_libraries()
        run = ExperimentDir(run_dir.parent).run(run_dir.name)  # a run inside its experiment: no link followed
        summary = analyze_run(run, min_count, top)
        stdout.print(run.analysis_file("tokens.md").read_text(), markup=False)
        stdout.print(f"{summary['items']} vocabulary items; files in {run.analysis}", markup=False)

    _guarded(body)


def _rebuild(exp_dir: Path) -> None:
    from .expdir import ExperimentDir
    from .stages.report import rebuild

    rebuild(ExperimentDir(exp_dir))


@app.command("report")
def report(
    exp_dir: ExpDirArg,
    html: Annotated[
        bool, typer.Option("--html", help="Print the path of report.html (written by every report) at the end.")
    ] = False,
):
    """Rebuild results.csv / .md / .json, the plots and report.html (one self-contained page) from the run
    directories on disk."""
    _guarded(lambda: _rebuild(exp_dir))
    if html:
        from .expdir import ExperimentDir
        from .ui import stdout

        html_path = ExperimentDir(exp_dir).result("report.html").absolute()
        stdout.print(f"report: {html_path}", markup=False, soft_wrap=True)


@app.command("import-annotations")
def import_annotations(
    exp_dir: ExpDirArg,
    files: Annotated[list[Path], typer.Argument(help="AlpacaEval annotations.json files (one or more).")],
):
    """Read AlpacaEval annotations of the runs' model_outputs.json (e.g. a GPT-4 judge) and add their win rate and LC win rate (ae_*) to the tables."""  # noqa: E501

    def body() -> None:
        from .expdir import ExperimentDir
        from .stages.report import annotate

        annotate(ExperimentDir(exp_dir), files)

    _guarded(body)
