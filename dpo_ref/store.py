"""On-disk primitives every stage shares: the cache root, content hashes, atomic writes and locks.

Every file dporef writes goes through `atomic_write_*` (temp file + rename), so an interrupted command never leaves a
half-written file behind, and every cache entry is keyed by `content_hash` of what produced it. `file_hash` hashes
every byte of a model and memoises each file's digest, so a large checkpoint is read once, not on every command.
`locked` makes one process at a time build a cache entry or run a run, whatever else runs on the same files.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

# sha256, not blake2b: with SHA extensions it hashes ~1.6 GB/s here against ~0.9 GB/s (a 200 MB file, 2 CPU cores)
HASH_CHUNK = 8 << 20  # bytes per read: few system calls and progress updates, small enough to stay in memory
MEMO_BYTES = 1 << 20  # smaller files are read again rather than memoised (a memo entry costs about as much)
PROGRESS_BYTES = 256 << 20  # files this large show a progress bar while they are hashed
MANIFEST = ".dporef-manifest.json"  # in every directory atomic_dir finishes: its files' sizes and checksums
RACY_NS = 2 * 10**9  # the coarsest mtime granularity of common file systems (FAT: 2 s)


def cache_root() -> Path:
    """`$DPOREF_CACHE`, or `~/.cache/dporef`: where the world, prepared data and reference scores live."""
    return Path(os.environ.get("DPOREF_CACHE") or Path.home() / ".cache" / "dporef")


def content_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-serialisable object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: Path, length: int = 16, progress: Callable[[], Any] | None = None) -> str:
    """Hash of a file's bytes, or of every file under a directory (relative names and bytes, in sorted order).

    Every byte counts, whatever the size (fingerprints key every cache, so two checkpoints of one shape must differ),
    and each file is read once: its digest is memoised (`_digest`). `progress` makes a rich progress display
    (`ui.progress`, which this bottom layer may not import) for files of `PROGRESS_BYTES` or more."""
    path = Path(path)
    if not path.is_dir():
        return _digest(path, progress)[:length]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return content_hash([[f.relative_to(path).as_posix(), _digest(f, progress)] for f in files], length)


def _digest(path: Path, progress) -> str:
    """sha256 of a file, memoised in `<cache>/filehash/` by (absolute path, size, mtime_ns, inode).

    One entry per path, rewritten when the file changes. A file modified within `RACY_NS` of the read is not
    memoised: on a file system with coarse timestamps a later same-size overwrite could keep its mtime."""
    real = path.resolve()  # a hub snapshot links into its blobs: memoise the blob, shared by every snapshot
    before = real.stat()
    if before.st_size < MEMO_BYTES:
        return _read_digest(real, before.st_size, progress)
    stat = {"size": before.st_size, "mtime_ns": before.st_mtime_ns, "inode": before.st_ino}
    key = {"path": str(real), **stat, "algorithm": "sha256"}
    entry = cache_root() / "filehash" / f"{content_hash(key['path'], 32)}.json"
    memo = _read_dict(entry)
    if memo is not None and {k: memo.get(k) for k in key} == key and isinstance(memo.get("digest"), str):
        return memo["digest"]
    started = time.time_ns()
    digest = _read_digest(real, before.st_size, progress)
    after = real.stat()
    unchanged = {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "inode": after.st_ino} == stat
    if unchanged and before.st_mtime_ns < started - RACY_NS:
        atomic_write_json(entry, {**key, "digest": digest})
    return digest


def _read_dict(entry: Path) -> dict | None:
    """A JSON mapping dporef wrote (a hash memo, a manifest), or None when it is missing, unreadable or not a mapping:
    the caller then hashes again or reports the directory damaged."""
    try:
        memo = read_json(entry)
    except (OSError, ValueError):
        return None
    return memo if isinstance(memo, dict) else None


def _read_digest(path: Path, size: int, progress) -> str:
    """Read the file in `HASH_CHUNK` pieces into one reused buffer, with a bar in MiB for large files."""
    h = hashlib.sha256()
    buf = bytearray(min(HASH_CHUNK, size + 1))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh, _bar(progress, path.name, size) as advance:
        while n := fh.readinto(buf):
            h.update(view[:n])
            advance(n)
    return h.hexdigest()


@contextmanager
def _bar(progress, name: str, size: int):
    """Yield `advance(n_bytes)`: a progress task for a file of `PROGRESS_BYTES` or more, else a no-op."""
    if progress is None or size < PROGRESS_BYTES:
        yield lambda n: None
        return
    with progress() as display:
        task = display.add_task(f"hashing {name} (MiB)", total=size / 2**20)
        yield lambda n: display.advance(task, n / 2**20)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary sibling renamed into place. When the write fails (a full disk, a read-only
    directory, Ctrl-C) the temporary file is removed, and an OSError names `path` (a failed write() names no file)."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any other file
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _raise_naming(e, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_write_jsonl(path: Path, rows: list) -> None:
    """One JSON value per line, written atomically (what `read_jsonl` reads back)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def jsonl_rows(text: str) -> list:
    """The values of a JSON-lines text, one per line (a blank or broken line is a ValueError)."""
    return [json.loads(line) for line in text.splitlines()]


def read_jsonl(path: Path) -> list:
    return jsonl_rows(Path(path).read_text())


def _listing(root: Path) -> dict[str, int]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}


def seal(root: Path) -> None:
    """Write the manifest of a finished directory: every file's size (its shape) and sha256 (its checksum)."""
    root = Path(root)
    files = {rel: {"size": size, "sha256": _digest(root / rel, None)} for rel, size in _listing(root).items()}
    atomic_write_json(root / MANIFEST, {"files": files})


def damage(root: Path) -> str | None:
    """Why a sealed directory no longer holds what it was sealed with (no manifest, a file missing, added, resized
    or with other bytes), or None when it is intact. Unchanged large files are not read again (`_digest` memo)."""
    root = Path(root)
    manifest = _read_dict(root / MANIFEST)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return "no readable manifest"
    sealed, present = manifest["files"], _listing(root)
    for rel in sorted(set(sealed) | set(present)):
        entry = sealed.get(rel)
        if not isinstance(entry, dict) or rel not in present:
            return f"{rel} {'missing' if rel not in present else 'not in the manifest'}"
        if present[rel] != entry.get("size") or _digest(root / rel, None) != entry.get("sha256"):
            return f"{rel} changed"
    return None


@contextmanager
def atomic_dir(final: Path, replace: bool = False):
    """Yield a temporary sibling directory; on success it is sealed (`seal`) and renamed to `final`, on error it is
    removed.

    Used for cache entries made of several files (a world, a model): readers see all of it or none of it, and can
    tell it was damaged later (`damage`). An existing `final` is kept (another process finished first), or with
    `replace` swapped out for the new one."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    except OSError as e:
        _raise_naming(e, final)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        seal(tmp)
        if final.exists() and replace:
            _swap(tmp, final)
        elif final.exists():  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(e, final)


def _swap(tmp: Path, final: Path) -> None:
    """Put `tmp` in the place of `final`; when that fails the old `final` is put back, and no `.old` is left."""
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
    try:
        os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / final.name, final)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _raise_naming(e: BaseException, path: Path) -> None:
    """Re-raise `e`; an OSError that names no file, or one of `path`'s removed temporaries (`.NAME.*`), names `path`
    instead, so the one line the CLI prints says what could not be written."""
    temporary = os.path.abspath(path.parent / f".{path.name}.")  # tempfile names its files by absolute path
    if (
        isinstance(e, OSError)
        and e.errno
        and (e.filename is None or os.path.abspath(str(e.filename)).startswith(temporary))
    ):
        raise OSError(e.errno, e.strerror, str(path)) from e
    raise e


class Held(TimeoutError):
    """Another process holds the lock of a path (see `locked`)."""


def lock_file(path: Path) -> Path:
    """The lock file of `path`: `.<name>.lock` beside it, so removing or replacing `path` leaves the lock alone."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: Path, timeout: float = -1, on_wait: Callable[[str], Any] | None = None):
    """Hold the lock of `path` while the body runs, so that one process at a time builds or runs what it names.

    An OS lock (flock; no soft fallback, whose marker would outlive its process): the kernel releases it when the
    holding process dies, so a lock file a killed process left behind never blocks. When another process holds it,
    `on_wait` gets one line saying so and this waits `timeout` seconds (negative: as long as it takes; 0: not at all),
    then raises `Held`."""
    lock_path = lock_file(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout == 0:
            raise Held(f"{path} is held by another process (lock file {lock_path})") from None
        if on_wait is not None:
            on_wait(f"waiting for {path}: another process holds {lock_path}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise Held(f"{path} is still held by another process after {timeout:g}s (lock file {lock_path})") from None
    try:
        yield
    finally:
        lock.release()
