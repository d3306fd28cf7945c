"""Cache entries that cannot falsify results: each carries a checksum and its expected shape, is verified on every
read, and is rebuilt, with one line saying so, when it does not match.

Two kinds: a directory finished by `store.atomic_dir` (a world, a rebuilt model, instruction pairs, prepared data)
is checked against its manifest (`store.damage`); a JSON entry (reference scores) holds its payload with the
payload's sha256 and shape, and is checked against the shape the reader expects.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .store import atomic_write_json, check_file, damage
from .ui import console


def intact_dir(root: Path, what: str) -> bool:
    """Whether the cache directory `root` is there and intact, every byte hashed again against its manifest (an
    in-place edit that keeps sizes and dates is found: its owner is about to read it). A damaged one is removed (the
    caller rebuilds it) with one line saying so."""
    root = Path(root)
    if not root.is_dir():
        return False
    problem = damage(root)
    if problem is None:
        return True
    console.print(f"[yellow]{what} {root} is damaged ({problem}); rebuilding it")
    shutil.rmtree(root, ignore_errors=True)
    return False


def _checksum(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()


def write_entry(path: Path, payload: Any, shape: Any) -> None:
    """Write a JSON cache entry: the payload, its sha256 and its shape (what a reader checks it against)."""
    atomic_write_json(path, {"sha256": _checksum(payload), "shape": shape, "payload": payload})


def _mismatch(entry: dict, shape: Any) -> str | None:
    """Why a parsed entry is not what write_entry wrote for a reader expecting `shape`, or None."""
    try:
        same = entry.get("sha256") == _checksum(entry["payload"])
    except ValueError:  # NaN or infinity in the payload: never what write_entry wrote
        same = False
    if not same:
        return "checksum does not match"
    return None if entry.get("shape") == shape else f"shape {entry.get('shape')}, expected {shape}"


def read_entry(path: Path, shape: Any, what: str) -> Any | None:
    """The payload of a JSON cache entry, or None when there is none or it is damaged (unreadable, another checksum
    or another shape than `shape`); a damaged one is named in one line and left for the caller to rebuild. The bytes
    are read once, and what is checked is what is returned."""
    entry, problem = check_file(path, json.loads, lambda e: isinstance(e, dict) and "payload" in e)
    if problem == "missing":
        return None
    if problem is None:
        problem = _mismatch(entry, shape)
    if problem is None:
        return entry["payload"]
    problem = "not an entry" if problem == "invalid" else problem
    console.print(f"[yellow]{what} {path} is damaged ({problem}); rebuilding it")
    return None
