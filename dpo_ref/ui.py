"""Terminal output: one rich console, and progress bars that every stage (scoring, training, generation) shares."""

import os
import warnings

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


def progress() -> Progress:
    """A progress display; hidden when DPOREF_QUIET is set (tests) or the console is not a terminal."""
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
