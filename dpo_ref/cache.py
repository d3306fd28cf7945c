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

from .store import atomic_write_json, damage
from .ui import console


def intact_dir(root: Path, what: str) -> bool:
    """Whether the cache directory `root` is there and intact. A damaged one is removed (the caller rebuilds it)
    with one line saying so."""
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


def read_entry(path: Path, shape: Any, what: str) -> Any | None:
    """The payload of a JSON cache entry, or None when there is none or it is damaged (unreadable, another checksum
    or another shape than `shape`); a damaged one is named in one line and left for the caller to rebuild."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        problem = None
        if not isinstance(entry, dict) or "payload" not in entry:
            problem = "not an entry"
        elif entry.get("sha256") != _checksum(entry["payload"]):
            problem = "checksum does not match"
        elif entry.get("shape") != shape:
            problem = f"shape {entry.get('shape')}, expected {shape}"
    except (OSError, ValueError) as e:  # unreadable, torn, or not JSON
        problem = f"unreadable: {type(e).__name__}"
    if problem is None:
        return entry["payload"]
    console.print(f"[yellow]{what} {path} is damaged ({problem}); rebuilding it")
    return None
