"""Preference pairs from local files or the Hugging Face hub cache, normalised to what `data` consumes.

Two schemas are read: `strings` (prompt, chosen and rejected as text) and `messages` (chosen and rejected as chat
conversations that end with the assistant's response, as in HuggingFaceH4/ultrafeedback_binarized). Everything works
offline: a hub dataset must already be in the local hub cache. Pairs that cannot teach a preference (empty, identical,
conversations that differ before the response) are dropped and counted per split, never silently.
"""

import codecs
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ..errors import UserError, excerpt
from ..store import cache_root

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SHARDED = (".parquet", ".jsonl")  # formats whose splits may come in shards named `<split>-*`
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
COLUMNS = ("prompt", "chosen", "rejected")
NEEDS = "needs prompt/chosen/rejected as strings or chosen/rejected as chat messages"
ALLOWED = "a .jsonl/.json/.parquet/.csv file, a directory of split files, or a hub dataset id org/name"
VALIDATION_FRACTION = 0.05
TEXT_KINDS = ("json", "csv")  # formats read as UTF-8 text
CHUNK = 8 << 20  # bytes per read while a text file's encoding is checked
# The longest JSON line (one record) read, and the most text one record of a JSON array may hold. 16 MiB is about 4M
# tokens at 4 bytes a token: four times the longest context window of today's models (1M tokens), so no pair a model
# can train on is refused, while a longer line is a damaged file (a lost newline, a binary blob) that would be held
# in memory whole and tokenized for minutes before anything said what is wrong.
MAX_RECORD_BYTES = 16 << 20
WRITE_ERRNOS = {28, 30, 122, 27, 13, 1}  # ENOSPC, EROFS, EDQUOT, EFBIG, EACCES, EPERM: the cache cannot be written


@dataclass
class SourceReport:
    """Per split: pairs read, kept, and dropped with the reason (nothing is dropped silently).

    A dropped pair is counted once, under the first reason that applies: empty, mismatched, identical. Pairs left
    out by `max_train`/`max_validation` are the rest: read - empty - mismatched - identical - kept."""

    read: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    empty: dict[str, int] = field(default_factory=dict)  # chosen or rejected empty/whitespace-only (or prompt empty)
    identical: dict[str, int] = field(default_factory=dict)  # chosen == rejected
    mismatched: dict[str, int] = field(default_factory=dict)  # conversations differ before the final assistant turn
    schema: str = ""  # "strings" | "messages" (which schema was detected)
    carved_validation: bool = False  # validation was held out from train: the source has no validation split

    def lines(self) -> list[str]:
        out = []
        for split, read in self.read.items():
            dropped = self.empty[split] + self.mismatched[split] + self.identical[split]
            line = (
                f"{split}: read {read}, kept {self.kept[split]}; dropped {self.empty[split]} empty, "
                f"{self.mismatched[split]} mismatched, {self.identical[split]} identical"
            )
            if capped := read - dropped - self.kept[split]:
                line += f"; {capped} over the maximum left out"
            if split == "validation" and self.carved_validation:
                line += f" (held out from train, {VALIDATION_FRACTION:.0%})"
            out.append(line)
        return out


def load_source(
    source: str,
    train_split: str = "train",
    validation_split: str = "validation",
    max_train: int | None = None,
    max_validation: int | None = None,
    where: str = "data",
) -> tuple[DatasetDict, SourceReport]:
    """Splits `train` and `validation` with columns exactly prompt/chosen/rejected, and what was dropped.

    `source` is a file (the train split), a directory holding `<split>.<ext>` or `<split>-*.parquet|jsonl` files at
    any depth, or a hub dataset id in the local hub cache. Without a validation split, a fixed 5% of train (at least
    one pair, seed 0) is held out as validation. `max_train`/`max_validation` keep the first N pairs left after
    dropping, for quick runs on big sets. `prompt` is a string when every prompt is a single user message, otherwise
    every prompt is a list of messages (a column has one type)."""
    path = _locate(source, where)
    if path.is_file():
        train_files, validation_files = [path], None
    else:
        files = _data_files(path)
        train_files, validation_files = _split_files(files, train_split), _split_files(files, validation_split)
        if not train_files:
            found = sorted({f.stem.split("-")[0] if f.suffix in SHARDED else f.stem for f in files})
            raise UserError(where, f"{source}: no split {train_split!r}; splits found: {found or 'none'}")

    raw = {"train": read_files(train_files, where)}
    schema = _schema(raw["train"], train_files[0], where)
    if validation_files:
        raw["validation"] = read_files(validation_files, where)
        if _schema(raw["validation"], validation_files[0], where) != schema:
            raise UserError(where, f"{source}: splits {train_split!r} and {validation_split!r} differ in schema")
    else:
        raw["train"], raw["validation"] = _carve(raw["train"], train_files[0], where)

    report = SourceReport(schema=schema, carved_validation=not validation_files)
    pairs = {}
    for split, cap in (("train", max_train), ("validation", max_validation)):
        counts, kept = Counter(), []
        for i, row in enumerate(raw[split].select_columns([c for c in COLUMNS if c in raw[split].column_names])):
            dropped, pair = _pair(row, schema, f"{source} {split} row {i}", where)
            if dropped:
                counts[dropped] += 1
            else:
                kept.append(pair)
        pairs[split] = kept[:cap]
        report.read[split], report.kept[split] = len(raw[split]), len(pairs[split])
        report.empty[split], report.identical[split] = counts["empty"], counts["identical"]
        report.mismatched[split] = counts["mismatched"]
    for split, line in zip(report.read, report.lines()):
        if not report.kept[split]:
            raise UserError(where, f"{source}: no usable pair in split {split} ({line})")

    if not all(isinstance(p["prompt"], str) for kept in pairs.values() for p in kept):
        for p in (p for kept in pairs.values() for p in kept if isinstance(p["prompt"], str)):
            p["prompt"] = [{"role": "user", "content": p["prompt"]}]
    out = DatasetDict({s: Dataset.from_dict({c: [p[c] for p in kept] for c in COLUMNS}) for s, kept in pairs.items()})
    return out, report


def _locate(source: str, where: str) -> Path:
    """The local file or directory behind `source`; a hub id resolves to its snapshot in the local hub cache."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in FORMATS:
            raise UserError(where, f"{source}: unsupported file type {path.suffix!r}; allowed: {', '.join(FORMATS)}")
        return path
    if path.is_dir():
        return path
    if path.suffix in FORMATS:
        raise UserError(where, f"{source}: no such file")
    if not HUB_ID.fullmatch(source):
        raise UserError(where, f"{source!r} is not a file, a directory or a hub dataset id; allowed: {ALLOWED}")
    try:
        return Path(snapshot_download(source, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(
            where,
            f"hub dataset {source!r} is not in the local cache (dporef works offline); download it first with "
            f"`hf download --repo-type dataset {source}` or give a local path",
        ) from None


def _data_files(root: Path) -> list[Path]:
    """The readable files under `root` at any depth, hidden ones (such as `.cache/`) left out."""
    files = (f for f in sorted(root.rglob("*")) if f.suffix in FORMATS and f.is_file())
    return [f for f in files if not any(p.startswith(".") for p in f.relative_to(root).parts)]


def _split_files(files: list[Path], split: str) -> list[Path]:
    """The files of one split: `<split>.<ext>`, or shards `<split>-*.parquet|jsonl` (the hub layout)."""
    return [f for f in files if f.stem == split or (f.suffix in SHARDED and f.stem.startswith(f"{split}-"))]


def read_files(files: list[Path], where: str) -> Dataset:
    """One table from files of one format (json, jsonl, parquet, csv); a file that does not parse is a UserError.

    JSON is read here, record by record, so that a bad one is named by file and line (`read_json`); parquet and csv
    through `datasets`, whose arrow cache goes under dporef's cache (`$DPOREF_CACHE/datasets`), never the user's
    home."""
    kinds = {FORMATS[f.suffix] for f in files}
    if len(kinds) > 1:
        raise UserError(where, f"{files[0].parent}: one split in several file types ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    for f in files:
        _check_bytes(f, kind, where)
    if kind == "json":
        return _table([(f, line, row) for f in files for line, row in read_json(f, where)], files, where)
    cache = cache_root() / "datasets"
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", cache_dir=str(cache))
    except (datasets.exceptions.DatasetGenerationError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:  # the cache, not the data, is at fault
            raise OSError(cause.errno, cause.strerror, cause.filename or str(cache)) from e
        raise UserError(where, f"{files[0]}: cannot read as {kind}: {e.__cause__ or e}") from None


def read_json(path: Path, where: str) -> list[tuple[int, dict]]:
    """(line, record) of every JSON object in a .json or .jsonl file: a JSON array of objects (a .json file; its item
    numbers stand for lines), or one object per line, lines split at "\n" only (str.splitlines would also split at
    \x1c, \x85, \u2028 ... inside a record), blank lines skipped. A line that is not a JSON object, or longer than
    `MAX_RECORD_BYTES`, is a UserError naming `file:line`."""
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8-sig")
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # JSON lines in a .json file
        except RecursionError:
            raise UserError(where, f"{path}: nested too deeply to be a record") from None
        if isinstance(whole, list):
            return [(i + 1, _record(path, i + 1, r, where, "item")) for i, r in enumerate(whole)]
        if isinstance(whole, dict):
            return [(1, _record(path, 1, whole, where, "item"))]
    rows = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(iter(lambda: fh.readline(MAX_RECORD_BYTES + 1), b""), 1):
            line = raw.rstrip(b"\r\n")
            if len(line) > MAX_RECORD_BYTES:
                raise UserError(
                    where,
                    f"{path}:{number}: a line of more than {MAX_RECORD_BYTES} bytes; a record is at most "
                    f"{MAX_RECORD_BYTES >> 20} MiB (about 4M tokens)",
                )
            if b"\0" in line:
                raise UserError(where, f"{path}:{number}: {_NUL}")
            text = line.decode("utf-8").removeprefix("\ufeff") if number == 1 else line.decode("utf-8")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except ValueError as e:
                what = f"{e.msg.removesuffix(' at')} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
                raise UserError(where, f"{path}:{number}: cannot read as json: {what}") from None
            except RecursionError:
                raise UserError(where, f"{path}:{number}: nested too deeply to be a record") from None
            rows.append((number, _record(path, number, value, where, "line")))
    return rows


_NUL = "a NUL byte; a text data file holds none (a binary or damaged file?)"
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _record(path: Path, at: int, value, where: str, unit: str) -> dict:
    """`value` when it is a JSON object of at most `MAX_RECORD_BYTES` of text, else a UserError naming it."""
    name = f"{path}:{at}" if unit == "line" else f"{path}: item {at}"
    if not isinstance(value, dict):
        kind = "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
        raise UserError(where, f"{name}: a JSON {kind}, expected an object (a record with named fields)")
    if unit != "line" and (size := _text_size(value)) > MAX_RECORD_BYTES:
        raise UserError(where, f"{name}: {size} characters of text; a record is at most {MAX_RECORD_BYTES >> 20} MiB")
    return value


def _text_size(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + _text_size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 8


def _table(rows: list[tuple[Path, int, dict]], files: list[Path], where: str) -> Dataset:
    """The records as one table, a column per field (the union of every record's, first seen first; absent: null)."""
    if not rows:
        raise UserError(where, f"{files[0]}: no JSON records")
    names = list(dict.fromkeys(k for _, _, r in rows for k in r))
    columns = {k: [r.get(k) for _, _, r in rows] for k in names}
    try:
        return Dataset.from_dict(columns)
    except (TypeError, ValueError, OverflowError) as e:  # pyarrow: ArrowInvalid, ArrowTypeError
        for k in names:  # name the field, and two records that disagree on its type
            first = next(((f, n, type(r[k])) for f, n, r in rows if r.get(k) is not None), None)
            other = next(((f, n, type(r[k])) for f, n, r in rows if _clash(first, r.get(k))), None)
            if first and other:
                where_first, where_other = (f"{f}:{n}" for f, n, _ in (first, other))
                raise UserError(
                    where,
                    f"{where_other}: field {excerpt(k)} is a JSON {_JSON_TYPES.get(other[2], other[2].__name__)}, "
                    f"but a {_JSON_TYPES.get(first[2], first[2].__name__)} at {where_first}; one type per field",
                ) from None
        raise UserError(where, f"{files[0]}: cannot read as json: {e}") from None


def _clash(first, value) -> bool:
    """Whether `value` has another JSON type than the field's first value (numbers agree with numbers)."""
    if first is None or value is None:
        return False
    numbers = (int, float)
    a, b = first[2], type(value)
    return not (a is b or (a in numbers and b in numbers and a is not bool and b is not bool))


def _check_bytes(path: Path, kind: str, where: str) -> None:
    """Refuse an empty file, and a text file that is not UTF-8 (naming the first bad byte's offset) or holds a NUL
    byte (naming its line), before the readers see it: they would stop with a traceback, or report an offset into
    some internal buffer."""
    if path.stat().st_size == 0:
        raise UserError(where, f"{path}: empty file")
    if kind not in TEXT_KINDS:
        return
    decoder, offset, lines = codecs.getincrementaldecoder("utf-8")(), 0, 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset + e.start - (len(e.object) - len(chunk))  # e.object starts with bytes held from before
                raise UserError(
                    where, f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {at})"
                ) from None
            if (nul := chunk.find(b"\0")) >= 0:
                line = lines + chunk.count(b"\n", 0, nul) + 1
                raise UserError(where, f"{path}:{line}: {_NUL}")
            if not chunk:
                return
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _kind(feature) -> str | None:
    """ "text", "messages" (a list of role/content records) or None for a column's type."""
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    inner = getattr(feature, "feature", None)
    if isinstance(inner, dict) and {"role", "content"} <= inner.keys():
        return "messages"
    return None


def _schema(ds: Dataset, path: Path, where: str) -> str:
    prompt, chosen, rejected = (_kind(ds.features.get(c)) for c in COLUMNS)
    if prompt == chosen == rejected == "text":
        return "strings"
    if chosen == rejected == "messages" and prompt in ("text", None):
        return "messages"
    raise UserError(where, f"{path}: columns {ds.column_names} found; {NEEDS}")


def _carve(ds: Dataset, path: Path, where: str) -> tuple[Dataset, Dataset]:
    """(train, validation): a fixed random 5% of the rows, at least one, held out in file order."""
    if len(ds) < 2:
        raise UserError(where, f"{path}: {len(ds)} pair(s); holding out a validation split needs at least 2")
    held = set(random.Random(0).sample(range(len(ds)), max(1, round(VALIDATION_FRACTION * len(ds)))))
    return ds.select([i for i in range(len(ds)) if i not in held]), ds.select(sorted(held))


def _pair(row: dict, schema: str, at: str, where: str) -> tuple[str | None, dict]:
    """(why the pair is dropped, or None; the pair as prompt/chosen/rejected). A pair of more than `MAX_RECORD_BYTES`
    of text (from parquet or csv: a JSON line that long is refused as it is read) is a UserError."""
    if (size := _text_size(row)) > MAX_RECORD_BYTES:
        raise UserError(where, f"{at}: {size} characters of text; a pair is at most {MAX_RECORD_BYTES >> 20} MiB")
    if schema == "strings":
        prompt, chosen, rejected = (row[c] or "" for c in COLUMNS)
        same_prefix = True
    else:
        prefix, chosen = _final_turn(row["chosen"], at, where)
        other_prefix, rejected = _final_turn(row["rejected"], at, where)
        same_prefix = prefix == other_prefix
        if not prefix:
            prompt = row.get("prompt") or ""
        elif len(prefix) == 1 and prefix[0]["role"] == "user":
            prompt = prefix[0]["content"]
        else:
            prompt = prefix
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not (prompt if isinstance(prompt, list) else prompt.strip()) or not chosen.strip() or not rejected.strip():
        return "empty", pair
    if not same_prefix:
        return "mismatched", pair
    if chosen == rejected:
        return "identical", pair
    return None, pair


def _final_turn(conversation: list[dict] | None, at: str, where: str) -> tuple[list[dict], str]:
    """(the messages before the response, the response text); an empty conversation has an empty response."""
    if not conversation:
        return [], ""
    if conversation[-1]["role"] != "assistant":
        raise UserError(
            where, f"{at}: a conversation ends with a {conversation[-1]['role']!r} message; needs a final assistant one"
        )
    prefix = [{"role": m["role"], "content": m["content"]} for m in conversation[:-1]]
    return prefix, conversation[-1]["content"] or ""
