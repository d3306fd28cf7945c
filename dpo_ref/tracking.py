"""Experiment trackers (`train.report_to`): transformers' own integrations, as in a TRL script, with each run named by
its run id, given the resolved experiment as its config, and writing its local files into the experiment directory.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from .errors import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_installed(names: list[str]) -> None:
    """A tracker whose package is missing: one line and exit 2 before anything is written, not a crash mid-run."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            extra = "pip install 'dporef[trackers]'" if name == "tensorboard" else f"pip install {PACKAGES[name]}"
            raise UserError("train.report_to", f"{name!r} needs its package, which is not installed: {extra}")


@dataclass
class Tracking:
    """The trackers one run reports to: `names` (train.report_to), `directory` for their local files, `project` (the
    experiment's name) and `config`, the run's resolved YAML (the experiment and the run's own settings)."""

    names: list[str]
    directory: Path
    project: str
    config: dict = field(default_factory=dict)

    def trainer_settings(self, run_id: str) -> dict:
        """TrainingArguments for the trackers: transformers names the run (wandb, mlflow, trackio) `run_name`."""
        return {"report_to": list(self.names), "run_name": run_id, "project": self.project}

    def attach(self, trainer) -> None:
        """Point tensorboard at `directory` and add the callback that records `config` once the trackers started."""
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                callback.logging_dir = str(self.directory)  # read at on_train_begin; else output_dir/runs/...
        trainer.add_callback(ConfigToTrackers(self.names, self.config, trainer))

    @contextmanager
    def environment(self):
        """wandb's local files (WANDB_DIR) in `directory` and its project (WANDB_PROJECT) the experiment's, unless the
        user set them; restored afterwards. mlflow and trackio keep their own stores (MLFLOW_TRACKING_URI, trackio's
        cache), which a user shares across projects."""
        defaults = {"WANDB_DIR": str(self.directory), "WANDB_PROJECT": self.project}
        added = [k for k in defaults if k not in os.environ]
        os.environ.update({k: defaults[k] for k in added})
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            yield
        finally:
            for key in added:
                os.environ.pop(key, None)


class ConfigToTrackers(TrainerCallback):
    """The run's resolved YAML into each tracker, through its public API, after the trackers' own callbacks started
    their run (the Trainer calls its integrations before the callbacks added later)."""

    def __init__(self, names: list[str], config: dict, trainer):
        self.names, self.config, self.trainer = names, config, trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if "tensorboard" in self.names:
            for callback in self.trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    text = yaml.safe_dump(self.config, sort_keys=False)
                    callback.tb_writer.add_text("dporef/config", f"```yaml\n{text}```")
        if "wandb" in self.names:
            import wandb

            wandb.config.update({"dporef": self.config}, allow_val_change=True)
        if "trackio" in self.names:
            import trackio

            trackio.config.update({"dporef": self.config}, allow_val_change=True)
        if "mlflow" in self.names:
            import mlflow

            mlflow.log_dict(self.config, "dporef/config.yaml")

    def on_train_end(self, args, state, control, **kwargs):
        # transformers ends trackio's and mlflow's run at the end of training, not wandb's: the next run trained in
        # this process (the in-process launcher trains them one after another) would otherwise log into this one
        if state.is_world_process_zero and "wandb" in self.names:
            import wandb

            wandb.finish()
