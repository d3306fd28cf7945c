"""How every build of the world or of a world model runs: once per cache entry, under its lock, sealed when whole
(`build_once`), with the libraries quiet, the caller's random state kept and one CPU thread."""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cache import intact_dir
from ..models import write_errors_named
from ..store import atomic_dir, locked
from ..ui import console


def build_once(root: Path, what: str, build: Callable[[Path], None]) -> Path:
    """`root`, built first by `build(tmp)` when it is not in the cache intact: a second process waits for the first
    build and uses it; an interrupted or failed build leaves nothing behind (the temporary directory is renamed at the
    end), and a write that fails in a library (a full disk: safetensors, tokenizers) is an OSError naming `root`."""
    with locked(root, on_wait=console.print):
        if not intact_dir(root, what):
            console.print(f"building {what} (once) into {root}")
            t0 = time.perf_counter()
            with atomic_dir(root) as tmp, write_errors_named(root), quiet(), preserved_global_rng(), single_threaded():
                build(tmp)
            console.print(f"{what} built in {time.perf_counter() - t0:.0f}s")
    return root


@contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers/TRL/datasets logs, progress bars and warnings during a build, then restore them."""
    import datasets
    import transformers

    tf_logging = transformers.utils.logging
    tf_level, tf_bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    trl_logger = logging.getLogger("trl")
    trl_level, ds_bars = trl_logger.level, datasets.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    trl_logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logging.set_verbosity(tf_level)
        trl_logger.setLevel(trl_level)
        if tf_bars:
            tf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """The build seeds Python, NumPy and torch globally (the Trainer does); the caller gets its state back."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Build on one CPU thread. The models are too small to gain much from more (2 threads: ~1.7x per step on
    an idle 2-core machine), while a second torch process on the same cores makes multi-threaded steps 10-40x
    slower (threads spin at barriers); one thread also keeps the floating-point order, hence the world, the same
    on machines with more cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
