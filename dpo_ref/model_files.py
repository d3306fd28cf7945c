"""What a saved model must hold before dporef loads it, checked without loading a weight: a directory's config.json
parses and names an architecture transformers knows for the model's task, its weight files are whole (a safetensors
header is read to find a truncated file) and its tokenizer loads; a .gguf file starts with GGUF's magic bytes. Anything
else is a `UserError` naming the file and the key, before anything is written.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from .errors import UserError, excerpt

GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit on a header's size
CAUSAL, REWARD = "causal-lm", "reward-model"  # what a model spec must be: a policy/reference, or a judge


def first_line(e: BaseException) -> str:
    """The first line of what a library said, with the exception's name when it said nothing."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _known_architectures(task: str) -> dict[str, str]:
    from transformers.models.auto import modeling_auto

    if task == REWARD:
        return modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    return modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def check_model_dir(path: Path, where: str, task: str = CAUSAL) -> None:
    """A saved model directory is what it claims, checked without loading a weight: config.json is a JSON mapping
    whose `model_type` transformers knows for `task`, its weight files are whole and its tokenizer loads. Else a
    `UserError` naming the file at fault."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(where, f"{config_file}: not a valid JSON file ({first_line(e)})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    known = _known_architectures(task)
    if not isinstance(model_type, str) or not model_type:
        raise UserError(where, f"{config_file}: names no architecture (no `model_type`); not a transformers model")
    if model_type not in known:
        what = "a causal language model" if task == CAUSAL else "a sequence-classification (reward) model"
        raise UserError(
            where, f"{config_file}: model_type {excerpt(model_type)} is not an architecture transformers has as {what}"
        )
    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # the config's own values: transformers' validation of a known architecture
        raise UserError(where, f"{config_file}: not a valid {model_type} config ({first_line(e)})") from None
    check_weights(path, where, WEIGHTS, "model.safetensors or pytorch_model.bin")
    try:
        AutoTokenizer.from_pretrained(path)
    except Exception as e:  # missing, damaged, or needing a package that is not installed
        raise UserError(where, f"{path}: no usable tokenizer ({first_line(e)})") from None


def check_weights(path: Path, where: str, names: tuple[str, ...], allowed: str) -> None:
    """The first of `names` present in `path` (an index: every shard it names) is a whole weight file."""
    found = next((path / n for n in names if (path / n).is_file()), None)
    if found is None:
        raise UserError(where, f"{path}: no weights ({allowed})")
    files = [found]
    if found.name.endswith(".index.json"):
        try:
            weight_map = json.loads(found.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
            files = [path / str(s) for s in shards]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(where, f"{found}: not a checkpoint index ({first_line(e)})") from None
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            raise UserError(where, f"{found}: names shard {missing[0] if missing else 'none'}, which is not there")
    for f in files:
        problem = _safetensors_problem(f) if f.suffix == ".safetensors" else _bin_problem(f)
        if problem:
            raise UserError(where, f"{f}: {problem}")


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (read from its header: 8 bytes of length, then JSON naming every tensor's
    byte range), or None. A file cut short ends before the last range."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > min(MAX_SAFETENSORS_HEADER, size - 8):
            return f"not a whole safetensors file ({size} bytes, too short for its header)"
        try:
            header = json.loads(fh.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            end = max((int(e) for e in ends), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return f"not a safetensors file (its header does not parse: {first_line(e)})"
    if 8 + n + end > size:
        return f"truncated: {size} bytes, its header describes {8 + n + end}"
    return None


def _bin_problem(path: Path) -> str | None:
    """Why a torch checkpoint (a zip archive since torch 1.6) is not whole, or None. Its central directory is at its
    end, so a file cut short has none; a legacy pickle (not a zip) is left to torch."""
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if not is_zip:
        return None
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"truncated or damaged torch checkpoint ({first_line(e)})"
    return None


def check_gguf(gguf: Path, where: str) -> None:
    """A GGUF file starts with its magic bytes: anything else (a text file named .gguf) is refused before it is
    hashed or rebuilt."""
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as e:
        raise UserError(where, f"{gguf}: cannot read ({e.strerror or first_line(e)})") from None
    if head != GGUF_MAGIC:
        raise UserError(where, f"{gguf}: not a GGUF file (it starts with {excerpt(head)}, not {GGUF_MAGIC!r})")
