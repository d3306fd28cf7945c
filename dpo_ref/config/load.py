"""Reading an experiment: YAML files that may extend others, `--set` overrides, and errors that name file and key."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import EXCERPT, UserError, excerpt, one_line
from .schema import Experiment

Check = Callable[[Experiment], tuple[str, str] | None]  # a cross-cutting rule: (key, message) when it is broken
MAX_YAML_BYTES = 1 << 20  # an experiment is a few hundred bytes; a file or --set value far larger is not one
MAX_YAML_VALUES = 100_000  # values a document may hold once its aliases are expanded (refuses "billion laughs")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it: 4x faster or more


def parse_yaml(text: str, where: str, numbered: bool = True) -> Any:
    """One YAML document, safely: its aliases are counted on the composed node graph (where an alias is one shared
    node) before any value is built, so an alias bomb is refused in milliseconds and with little memory. `numbered`
    puts the line of a syntax error into `where`."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(where, f"{len(text)} characters; an experiment is at most {MAX_YAML_BYTES} bytes")
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, where)
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = min(mark.line + 1, len(text.splitlines()) or 1) if mark else 0  # libyaml: end of stream is 1 past
        at = f"{where}:{line}" if line and numbered else where
        raise UserError(at, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise UserError(where, "not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a node graph that expands to more than `MAX_YAML_VALUES` values, or that contains itself through an
    alias; each shared node is sized once (depth-first, without recursion)."""
    size: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _children(node)
        if finished:
            ancestors.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_VALUES:
                raise UserError(where, f"holds more than {MAX_YAML_VALUES} values once its aliases are expanded")
        elif id(node) in ancestors:
            raise UserError(where, "an alias refers to a node that contains it (recursive YAML)")
        elif id(node) not in size:
            ancestors.add(id(node))
            stack += [(node, True)] + [(c, False) for c in children]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _non_finite(node: Any, loc: tuple = ()) -> tuple[tuple, float] | None:
    """(key path, value) of the first NaN or infinite number under `node` (`.nan`, `.inf` in YAML), or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return loc, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return next((found for k, v in items if (found := _non_finite(v, (*loc, k))) is not None), None)


def apply_override(data: dict, assignment: str, source: str) -> None:
    """Apply one `--set key.sub=value` (value parsed as YAML; list items addressed by index, `objectives.0.betas`)."""
    if "=" not in assignment:
        raise UserError(f"--set {one_line(assignment, EXCERPT)}", "expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = assignment.split("=", 1)
    value = parse_yaml(raw, f"--set {one_line(key.strip(), EXCERPT)}", numbered=False)
    node: Any = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{source}: {'.'.join(parts[: i + 1])}", f"no list item {part!r} (has {len(node)})")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise UserError(f"{source}: {'.'.join(parts[:i])}", "is not a mapping or a list; cannot set a sub-key")
        if i == len(parts) - 1:
            node[index] = value
        else:
            node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]


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
        msg += f" (got {excerpt(err['input'])})"
    return loc, msg


def _read_yaml(path: Path) -> dict:
    """The mapping in an experiment file; its size is checked before it is read, its bytes before they are parsed."""
    if path.is_dir():
        raise UserError(str(path), "is a directory; expected an experiment YAML file")
    if not path.is_file():
        raise UserError(str(path), "experiment file not found")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise UserError(str(path), f"{path.stat().st_size} bytes; an experiment is at most {MAX_YAML_BYTES} bytes")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(str(path), f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise UserError(str(path), "empty file; an experiment needs at least `name` and `objectives`")
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
        raise UserError(f"{path}: extends", f"expected the path of one YAML file, got {excerpt(parent)}")
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
    if (bad := _non_finite(data)) is not None:
        loc, value = bad
        raise UserError(
            f"{_origin(loc, chain, path)}: {'.'.join(map(str, loc))}", f"must be a finite number (got {value})"
        )
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
