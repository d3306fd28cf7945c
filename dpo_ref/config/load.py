"""Reading an experiment: YAML files that may extend others, `--set` overrides, and errors that name file and key."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import EXCERPT, UserError, excerpt, one_line
from .run import trained_reference_problem
from .schema import Experiment

Check = Callable[[Experiment], tuple[str, str] | None]  # a cross-cutting rule: (key, message) when it is broken
MAX_YAML_BYTES = 1 << 20  # an experiment is a few hundred bytes; a file or --set value far larger is not one
MAX_YAML_VALUES = 100_000  # values a document may hold once its aliases are expanded (refuses "billion laughs")
Layer = tuple[str, Any, tuple | None]  # (label, a file's keys or None, the key path of a --set or None)


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it: 4x faster
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-4` and `5e-7` are floats, not strings (YAML 1.1
    wants `1.0e-4`). With strict types a string is never a number, so a plain `1e-4` must be one."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str, numbered: bool = True, prefix: tuple = ()) -> Any:
    """One YAML document, safely: its aliases are counted on the composed node graph (where an alias is one shared
    node) before any value is built, so an alias bomb is refused in milliseconds and with little memory; a key twice
    in one mapping is refused there too (PyYAML would keep the second silently). `numbered` puts line numbers into
    messages; `prefix` is the key path the document sits at (a `--set` value's key)."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(where, f"{len(text)} characters; an experiment is at most {MAX_YAML_BYTES} bytes")
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, where)
            _check_duplicates(node, where, numbered, prefix)
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


def _check_duplicates(root: yaml.Node, where: str, numbered: bool, prefix: tuple) -> None:
    """Refuse a mapping that holds a key twice, at any depth, naming the key's path and both lines. Each node is
    checked once (an alias is a shared node); keys merged in with `<<` are not in the node, so they may be
    overridden."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple]] = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple, yaml.Node] = {}
            children = []
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, name) in first:
                        _duplicate((*path, name), first[(key.tag, name)], key, where, numbered)
                    first[(key.tag, name)] = key
                children.append((value, (*path, name)))
            stack += reversed(children)  # document order: the first duplicate is the one reported
        elif isinstance(node, yaml.SequenceNode):
            stack += reversed([(item, (*path, i)) for i, item in enumerate(node.value)])


def _duplicate(path: tuple, first: yaml.Node, second: yaml.Node, where: str, numbered: bool) -> None:
    a, b = first.start_mark.line + 1, second.start_mark.line + 1
    at = "" if not numbered else f" (twice on line {a})" if a == b else f" (lines {a} and {b})"
    raise UserError(
        f"{where}: {'.'.join(map(str, path))}",
        f"duplicate key{at}: a key may appear once in a mapping (YAML readers silently keep the second and drop the "
        "first); merge them into one",
    )


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


def set_label(assignment: str) -> str:
    """How errors name a `--set`: `--set key=value`, the value cut short."""
    key, _, raw = assignment.partition("=")
    return f"--set {one_line(key.strip(), EXCERPT)}={one_line(raw[: 2 * EXCERPT], EXCERPT)}"


def apply_override(data: dict, assignment: str) -> tuple[str, tuple]:
    """Apply one `--set key.sub=value` (value parsed as YAML; list items addressed by index, `objectives.0.betas`);
    returns its label for messages and the key path it set (list indices as ints)."""
    if "=" not in assignment:
        raise UserError(f"--set {one_line(assignment, EXCERPT)}", "expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = assignment.split("=", 1)
    label = set_label(assignment)
    parts = key.strip().split(".")
    path = tuple(int(p) if p.isdigit() else p for p in parts)
    value = parse_yaml(raw, label, numbered=False, prefix=path)
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(_at(label, path, parts[: i + 1]), f"no list item {part!r} (has {len(node)})")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise UserError(_at(label, path, parts[:i]), "is not a mapping or a list; cannot set a sub-key")
        if i == len(parts) - 1:
            node[index] = value
        else:
            node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]
    return label, path


def _at(label: str, path: tuple, loc) -> str:
    """`label` (a --set's) followed by the key path `loc` unless that is the --set's own key."""
    loc = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
    return label if loc == path else f"{label}: {'.'.join(map(str, loc))}" if loc else label


TYPES = {  # what a type error's field allows, in the words of YAML
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _kind(value: Any) -> str:
    """A YAML value as a message names it: its type, then the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    kinds = ((int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"), (dict, "a mapping"))
    name = next((n for t, n in kinds if isinstance(value, t)), type(value).__name__)
    return f"{name} ({excerpt(value)})"


def _allowed(err: dict) -> str | None:
    if err["type"] == "literal_error":
        expected = err["ctx"]["expected"]
        return f"one of {expected}" if " or " in expected else expected
    return TYPES.get(err["type"])


def _key_path(err: dict, data: Any) -> tuple:
    """The error's key path in the data, without the union members pydantic puts in it (`launch.gpus.list[int].0` is
    `launch.gpus.0`): a part the data does not have is such a member, unless it is the key a `missing` or
    `extra_forbidden` error is about."""
    out, node, loc = [], data, err["loc"]
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and not (i == len(loc) - 1 and err["type"] in ("missing", "extra_forbidden")):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or the model in `list[Model]`, `Model | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in getattr(annotation, "__args__", ()) if (m := _model_of(a)) is not None), None)


def _unknown_key(loc: tuple, model: type[BaseModel]) -> str:
    """An extra key's message: the closest allowed key, if one is close, and all the allowed ones."""
    parent: type[BaseModel] | None = model
    for p in (p for p in loc[:-1] if not isinstance(p, int)):
        field = parent.model_fields.get(p) if parent is not None else None
        parent = _model_of(field.annotation) if field is not None else None
    if parent is None:
        return "unknown key"
    allowed = list(parent.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)  # not `lr` -> lora
    return f"unknown key; {f'did you mean {close[0]}? ' if close else ''}allowed: {', '.join(allowed)}"


def _describe(errors: list[dict], data: Any, model: type[BaseModel]) -> tuple[tuple, str]:
    """The error to report, as (key path, message): an unknown key first (a typo'd key also reports the right key
    missing), else the first; a type error says what the key allows, all members of a union together."""
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _key_path(err, data)
    if err["type"] == "extra_forbidden":
        return loc, _unknown_key(loc, model)
    if _allowed(err) is not None:
        same = [e for e in errors if _key_path(e, data) == loc and _allowed(e) is not None]
        allowed = list(dict.fromkeys(_allowed(e) for e in same))
        words = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        return loc, f"{words}, got {_kind(err['input'])}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] != "missing" and err["loc"]:  # not the whole file for cross-key checks
        msg += f" (got {excerpt(err['input'])})"
    return loc, msg


def _read_yaml(path: Path) -> dict:
    """The mapping in an experiment file; its size is checked before it is read, its bytes before they are parsed."""
    if path.is_dir():
        raise UserError(str(path), "is a directory; expected an experiment YAML file")
    if path.exists() and not path.is_file():  # a FIFO, socket or device: reading it could block or never end
        raise UserError(str(path), "is not a regular file (a pipe, socket or device); expected an experiment YAML file")
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
    if base.exists() and not base.is_file():
        raise UserError(f"{path}: extends", f"{parent}: not a regular file; expected an experiment YAML file")
    if not base.is_file():
        raise UserError(f"{path}: extends", f"{parent}: no such file (paths are relative to {path.parent})")
    return read_chain(base, (*seen, path.resolve())) + [(path, data)]


def _owner(loc: tuple, layers: list[Layer]) -> Layer | None:
    """The layer (a file of the chain or a --set, applied in this order) the value at `loc` comes from, where it has
    to be fixed: the last one that sets `loc`, a key under it, or a value above it that is not merged into (a list,
    a string: not a mapping a later layer merges into); else the last one that sets the nearest parent key; None if no
    layer sets any of them."""
    best, best_depth, merged = None, 0, 0  # merged: depth down which a later layer holds mappings (merged into)
    for layer in reversed(layers):
        _, data, path = layer
        if path is not None:  # a --set replaces the value at its path, nothing above it
            common = next((i for i, (a, b) in enumerate(zip(path, loc)) if a != b), min(len(path), len(loc)))
            if common in (len(path), len(loc)):
                return layer
            depth = common
        else:  # a file's mappings merge into the files' before it, anything else replaces theirs
            node, depth = data, 0
            for part in loc:
                if not (isinstance(node, dict) and part in node):
                    break
                node, depth = node[part], depth + 1
                if not isinstance(node, dict) and depth > merged:
                    return layer
            else:
                return layer
        if depth > best_depth:
            best, best_depth = layer, depth
        merged = max(merged, depth)
    return best


def _where(loc: tuple, layers: list[Layer], default: str) -> str:
    """`<file>: <key>` or `--set <key>=<value>[: <key>]`: where the bad value at `loc` was given."""
    owner = _owner(loc, layers) if loc else None
    label, _, path = owner or (default, None, None)
    if path is not None:
        return _at(label, path, loc)
    return f"{label}: {'.'.join(map(str, loc))}" if loc else label


def load_experiment(path: Path | str, overrides: list[str] = (), checks: list[Check] = ()) -> Experiment:
    """Read (following `extends`), override and validate a YAML experiment, then apply `checks`; any problem is a
    `UserError` naming the file and key, or the `--set` that gave the bad value."""
    path = Path(path)
    chain = read_chain(path)
    layers: list[Layer] = [(str(p), part, None) for p, part in chain]
    data: dict = {}
    for _, part in chain:
        data = merge(data, part)
    for assignment in overrides:
        label, key = apply_override(data, assignment)
        layers.append((label, None, key))
    if (bad := _non_finite(data)) is not None:
        loc, value = bad
        raise UserError(_where(loc, layers, str(path)), f"must be a finite number (got {value})")
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as e:
        loc, msg = _describe(e.errors(), data, Experiment)
        raise UserError(_where(loc, layers, str(path)), msg) from None
    for check in (trained_reference_problem, *checks):
        broken = check(exp)
        if broken:
            loc = tuple(int(p) if p.isdigit() else p for p in broken[0].split("."))
            raise UserError(_where(loc, layers, str(path)), broken[1])
    return exp
