"""The processes of one run under `accelerate launch` (torchrun sets WORLD_SIZE and RANK): which one this is, the
one word the main process tells the others, and the decisions they take from it. Outside such a launch there is one
process, the main one.

Only the main process takes the run's lock, writes its directory and evaluates; every process trains (the Trainer's
accelerator does the collectives). The others learn from the main process whether there is anything to train and
which checkpoint to resume from.
"""

from __future__ import annotations

import os

_told = False  # whether this (main) process has told the others yet: once per process, a run-one trains one run


def size() -> int:
    """How many processes train this run together."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def join() -> None:
    """Join the process group before any model is loaded, so that each process's `cuda` is its own GPU (accelerate
    pins it); gloo on a machine without GPUs. Nothing outside a group."""
    if size() > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def _broadcast(value):
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def tell(word: str) -> None:
    """Main process: tell the others `word` (once; later calls and calls outside a group do nothing)."""
    global _told
    if size() > 1 and is_main() and not _told:
        _told = True
        _broadcast(word)


def hear() -> str:
    """Any other process: wait for the main process's word."""
    return _broadcast(None)


def agree(value):
    """Every process of the group calls it at the same point; each gets the main process's `value` (outside a
    group, `value` itself): for a decision only the main process may take, such as which checkpoint to resume."""
    return _broadcast(value) if size() > 1 else value
