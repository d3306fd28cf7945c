"""Every name inside an experiment directory, in one place: no other module joins a path under one.

<exp_dir>/experiment.yaml      the experiment as validated (what every later stage and process reads)
          command.json         the study command that made the directory, its argv (and tune-beta's settings)
          prepared/plan.json   prepare's record: resolved models, tokenization counts, its content key
          prepared/pairs/      the tokenized pairs with one pair of columns per reference scoring pass
          baseline/NAME.jsonl  the SFT baseline's judged samples on the test / validation prompts (+ NAME.meta.json)
          similarity.json      how alike each reference is to the policy (swap-reference)
          <run_id>/            one run (RunDir)
          results.{csv,md,json,png}, frontier.png, similarity.png, curves.png, report.html   the report
          logs/<run_id>.log    a run's output under the local and accelerate launchers
          tracking/<run_id>/   what `train.report_to` trackers write locally (tensorboard's events, wandb's files)
          slurm/               the slurm launcher's job files and logs (unless launch.slurm.folder)
          tune/                tune-beta's Optuna journal and trial links; tune.json, tune.md its summary

Every path is built by `inside`, which follows no symbolic link below the directory's root: a run directory linked to
another experiment's run would otherwise be written through (the root itself may be a link, e.g. to a scratch disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

REPORT_FILES = ("results.csv", "results.md", "results.json", "results.png", "frontier.png", "similarity.png")
REPORT_FILES += ("curves.png", "report.html")


def inside(root: Path, *parts: str) -> Path:
    """`root / parts`, each part a plain name and no step below `root` a symbolic link (one line otherwise)."""
    path = Path(root)
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part:
            raise UserError(str(root), f"{part!r} is not a name inside the results directory")
        path = path / part
        if path.is_symlink():
            raise UserError(
                str(path),
                "is a symbolic link; dporef follows no link inside a results directory (it could read or write "
                "another experiment's files): replace it with a directory or file of its own, or remove it",
            )
    return path


@dataclass(frozen=True)
class RunDir:
    """One run's directory: what run-one writes there (see stages/run.py) and what the report reads back."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:  # run.yaml: the run's spec and config hash
        return inside(self.root, "run.yaml")

    @property
    def status(self) -> Path:  # status.json: running -> done | degenerate | stopped | diverged | failed | interrupted
        return inside(self.root, "status.json")

    @property
    def metrics(self) -> Path:  # metrics.json: training history and the evaluation
        return inside(self.root, "metrics.json")

    @property
    def generations(self) -> Path:  # the policy's judged samples on the test prompts, with their KL log-ratios
        return inside(self.root, "generations.jsonl")

    @property
    def validation(self) -> Path:  # its judged samples on the validation prompts
        return inside(self.root, "validation.jsonl")

    @property
    def ranking(self) -> Path:  # per validation pair: implicit rewards and log-probs
        return inside(self.root, "ranking.jsonl")

    @property
    def model_outputs(self) -> Path:  # the test samples in AlpacaEval's format
        return inside(self.root, "model_outputs.json")

    @property
    def annotations(self) -> Path:  # AlpacaEval annotations imported for the run (dporef import-annotations)
        return inside(self.root, "alpaca_eval.json")

    @property
    def policy(self) -> Path:  # the trained policy (under LoRA its adapter)
        return inside(self.root, "policy")

    @property
    def trainer(self) -> Path:  # checkpoints while it trains, for a rerun to resume from
        return inside(self.root, "trainer")

    @property
    def analysis(self) -> Path:  # dporef analyze: tokens.csv, tokens.md, histogram.png
        return inside(self.root, "analysis")

    def analysis_file(self, name: str) -> Path:
        return inside(self.root, "analysis", name)


@dataclass(frozen=True)
class PreparedDir:
    """prepare's outputs, sealed as one directory (store.atomic_dir): built in a temporary one, then renamed."""

    root: Path

    @property
    def plan(self) -> Path:  # the resolved models, tokenization counts, the content key it was built for
        return inside(self.root, "plan.json")

    @property
    def pairs(self) -> Path:  # the tokenized pairs with their reference columns (datasets.save_to_disk)
        return inside(self.root, "pairs")


@dataclass(frozen=True)
class ExperimentDir:
    """An experiment's results directory (`--out/<name>`), shared by every stage, process and job of a study."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def run(self, run_id: str) -> RunDir:
        return RunDir(inside(self.root, run_id))

    @property
    def spec(self) -> Path:
        return inside(self.root, "experiment.yaml")

    @property
    def command(self) -> Path:
        return inside(self.root, "command.json")

    @property
    def prepared(self) -> Path:  # sealed as one directory (store.atomic_dir): plan.json and pairs/
        return inside(self.root, "prepared")

    @property
    def plan(self) -> Path:
        return PreparedDir(self.prepared).plan

    @property
    def pairs(self) -> Path:
        return PreparedDir(self.prepared).pairs

    def baseline(self, name: str) -> Path:  # name: test or validation
        return inside(self.root, "baseline", f"{name}.jsonl")

    def baseline_meta(self, name: str) -> Path:  # its content key and checksum
        return inside(self.root, "baseline", f"{name}.meta.json")

    @property
    def similarity(self) -> Path:
        return inside(self.root, "similarity.json")

    def result(self, name: str) -> Path:
        """A report file (REPORT_FILES)."""
        if name not in REPORT_FILES:
            raise ValueError(f"{name} is not a report file ({', '.join(REPORT_FILES)})")
        return inside(self.root, name)

    def tracking(self, run_id: str | None = None) -> Path:  # train.report_to: the trackers' local files
        return inside(self.root, "tracking", run_id) if run_id else inside(self.root, "tracking")

    def log(self, run_id: str) -> Path:
        return inside(self.root, "logs", f"{run_id}.log")

    @property
    def slurm(self) -> Path:
        return inside(self.root, "slurm")

    @property
    def tune_journal(self) -> Path:  # tune-beta's Optuna study (a JournalFileBackend log)
        return inside(self.root, "tune", "optuna.journal")

    @property
    def tune_trials(self) -> Path:  # tune-beta: run id -> trial
        return inside(self.root, "tune", "trials.json")

    def tune_summary(self, suffix: str) -> Path:  # tune.json or tune.md
        return inside(self.root, f"tune.{suffix}")
