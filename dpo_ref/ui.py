"""Terminal output: one rich console, and progress bars that every stage (scoring, training, generation) shares; in a
log (a file, a pipe, a SLURM or CI job), plain lines instead."""

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)  # logs and progress; results tables go to stdout
console.soft_wrap = not console.is_terminal  # a log gets each message on one line, not cut at 80 columns
stdout = Console(highlight=False, width=None if Console().is_terminal else 160)  # files/pipes get full tables


def quiet_libraries() -> None:
    """Only dporef speaks: the libraries' progress bars and info logs off (dporef shows its own progress)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # e.g. its "Failed to load JSON" next to dporef's own one-line error
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    # TRL 1.16 calls transformers 5's deprecated gradient-checkpointing names when it scores a moving reference
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)


@dataclass
class LogTask:
    """A task of LogProgress: what its lines say."""

    description: str
    total: float
    started: float
    completed: float = 0
    ended: bool = False  # its last line is written


class LogProgress:
    """Progress for a log, with the part of rich's Progress that dporef uses: a line `description: done/total
    (elapsed, eta)` at most every `every` seconds, and one `description: done/total in Ns` when a task completes
    (or, unfinished, when the display stops)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.tasks: list[LogTask] = []
        self.said = clock()  # when the last progress line was written

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to set up: lines are written as tasks advance."""

    def stop(self) -> None:
        for task in self.tasks:
            self._end(task)

    def add_task(self, description: str, total: float) -> int:
        self.tasks.append(LogTask(description, total, self.clock()))
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id].completed + advance)

    def update(self, task_id: int, completed: float) -> None:
        task, now = self.tasks[task_id], self.clock()
        task.completed = completed
        if completed >= task.total:
            self._end(task)
        elif now - self.said >= self.every and not task.ended:
            self.said, elapsed = now, now - task.started
            eta = f"{elapsed * (task.total - completed) / completed:.0f}s" if completed else "?"
            self._say(task, f"({elapsed:.0f}s, eta {eta})")

    def _end(self, task: LogTask) -> None:
        if not task.ended:
            task.ended = True
            self._say(task, f"in {self.clock() - task.started:.1f}s")

    @staticmethod
    def _say(task: LogTask, when: str) -> None:
        console.print(f"{task.description}: {task.completed:.0f}/{task.total:.0f} {when}", markup=False)


def log_interval(default: float = 10.0) -> float:
    """Seconds between two progress lines in a log: DPOREF_LOG_EVERY, else `default` (said once when it is not a
    number of seconds: a display setting is not worth stopping a sweep for)."""
    value = os.environ.get("DPOREF_LOG_EVERY")
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        console.print(
            f"DPOREF_LOG_EVERY={value}: not a number of seconds >= 0; a line every {default:g}s", markup=False
        )
        os.environ["DPOREF_LOG_EVERY"] = str(default)  # said once
        return default
    return seconds


def progress() -> Progress | LogProgress:
    """A progress display: rich's bars on a terminal; plain lines (LogProgress) when the console is not one (rich's
    live display would write nothing there but a blank line as it stops); hidden when DPOREF_QUIET is set (tests)."""
    if not console.is_interactive and not os.environ.get("DPOREF_QUIET"):
        return LogProgress(log_interval())
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=bool(os.environ.get("DPOREF_QUIET")),
    )


@contextmanager
def output_to(path) -> Iterator[None]:
    """Everything this process writes to stdout and stderr (rich, warnings, libraries, C code) appended to `path`
    meanwhile: one process running several runs keeps each run's output in that run's log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
