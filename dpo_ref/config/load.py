"""Reading an experiment: YAML files that may extend others, `--set` overrides, and errors that name file and key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import UserError
from .schema import Experiment

Check = Callable[[Experiment], tuple[str, str] | None]  # a cross-cutting rule: (key, message) when it is broken


def apply_override(data: dict, assignment: str, source: str) -> None:
    """Apply one `--set key.sub=value` (value parsed as YAML; list items addressed by index, `objectives.0.betas`)."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment}", "expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw)
    node: Any = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{source}: {'.'.join(parts[: i + 1])}", f"no list item {part!r} (has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise UserError(f"{source}: {'.'.join(parts[: i + 1])}", "is not a mapping; cannot set a sub-key")


def _describe(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent: Any = model
        for p in err["loc"][:-1]:
            if isinstance(p, int):
                continue
            ann = parent.model_fields[p].annotation
            parent = getattr(ann, "__args__", (ann,))[0] if not isinstance(ann, type) else ann
        allowed = ", ".join(parent.model_fields) if isinstance(parent, type) else "?"
        return loc, f"unknown key; allowed: {allowed}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] != "missing" and err["loc"]:  # not the whole file for cross-key checks
        msg += f" (got {err['input']!r})"
    return loc, msg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(str(path), "experiment file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(str(path), "top level must be a mapping of keys (name, objectives, ...)")
    return data


def merge(base: dict, child: dict) -> dict:
    """`child` over `base`: mappings merge key by key (recursively), anything else in `child` replaces `base`'s."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The files `path` extends (`extends: other.yaml`, relative to the file, itself possibly extending another),
    base first, each with its own keys."""
    path = Path(path)
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"{path}: extends", f"files extend each other in a cycle: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return [(path, data)]
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends", f"expected the path of one YAML file, got {parent!r}")
    base = path.parent / parent
    if not base.is_file():
        raise UserError(f"{path}: extends", f"{parent}: no such file (paths are relative to {path.parent})")
    return read_chain(base, (*seen, path.resolve())) + [(path, data)]


def _origin(loc: tuple, chain: list[tuple[Path, dict]], default: Path) -> Path:
    """The last file of the chain that sets the key at `loc` (or its nearest parent key): where to fix it."""
    for depth in range(len(loc), 0, -1):
        for path, data in reversed(chain):
            node: Any = data
            for part in loc[:depth]:
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                    node = node[part]
                else:
                    break
            else:
                return path
    return default


def load_experiment(path: Path | str, overrides: list[str] = (), checks: list[Check] = ()) -> Experiment:
    """Read (following `extends`), override and validate a YAML experiment, then apply `checks`; any problem is a
    `UserError` naming the file and key."""
    path = Path(path)
    chain = read_chain(path)
    data: dict = {}
    for _, part in chain:
        data = merge(data, part)
    for assignment in overrides:
        apply_override(data, assignment, str(path))
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc, msg = _describe(err, Experiment)
        where = _origin(err["loc"], chain, path) if err["loc"] else path
        raise UserError(f"{where}: {loc}" if loc else str(where), msg) from None
    for check in checks:
        broken = check(exp)
        if broken:
            raise UserError(f"{_origin(tuple(broken[0].split('.')), chain, path)}: {broken[0]}", broken[1])
    return exp
