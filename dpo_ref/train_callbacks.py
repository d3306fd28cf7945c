"""Trainer callbacks of every run: progress on dporef's display, and periodic checkpoints to resume from."""

from __future__ import annotations

from transformers import TrainerCallback

from .ui import progress


class RichProgress(TrainerCallback):
    """Training progress on dporef's rich display instead of TRL's tqdm bar."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress()
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.stop()


class PeriodicCheckpoints(TrainerCallback):
    """A full checkpoint (weights, optimizer, scheduler, RNG) every `every` optimizer steps, to resume from after a
    kill. Every checkpoint step (`eval_steps` ones too) is also a logging step: the Trainer's running loss is not
    saved, so a resumed run logs exactly what an uninterrupted run logs only when a log closes at the checkpoint."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:  # the end needs none
            control.should_save = True
        control.should_log = control.should_log or control.should_save
