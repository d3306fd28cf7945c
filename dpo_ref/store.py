"""On-disk primitives every stage shares: the cache root, content hashes, checked reads, atomic writes and locks.

Every file dporef writes goes through `atomic_write_*` (temp file + rename), so an interrupted command never leaves a
half-written file behind, and every cache entry is keyed by `content_hash` of what produced it. `file_hash` hashes
every byte of a model and memoises each file's digest, so a large checkpoint is read once, not on every command; what
decides whether bytes are used (`damage`, `check_file`) hashes them in full, every time. `locked` makes one process at
a time build a cache entry or run a run, whatever else runs on the same files.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

# sha256, not blake2b: with SHA extensions it hashes ~1.6 GB/s here against ~0.9 GB/s (a 200 MB file, 2 CPU cores)
HASH_CHUNK = 8 << 20  # bytes per read: few system calls and progress updates, small enough to stay in memory
MEMO_BYTES = 1 << 20  # smaller files are read again rather than memoised (a memo entry costs about as much)
PROGRESS_BYTES = 256 << 20  # files this large show a progress bar while they are hashed
MANIFEST = ".dporef-manifest.json"  # in every directory atomic_dir finishes: its files' sizes and checksums
RACY_NS = 2 * 10**9  # the coarsest mtime granularity of common file systems (FAT: 2 s)
# what an atomic write leaves when its process dies: `.NAME.<tempfile's random part>.tmp` (or `.old`, `_swap`)
TEMPORARY = re.compile(r"\..+\..+\.(tmp|old)")
PARSE_ERRORS = (ValueError, TypeError, LookupError, RecursionError, yaml.YAMLError)  # UnicodeDecodeError: a ValueError


def cache_root() -> Path:
    """`$DPOREF_CACHE`, or `~/.cache/dporef`: where the world, prepared data and reference scores live."""
    return Path(os.environ.get("DPOREF_CACHE") or Path.home() / ".cache" / "dporef")


def content_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-serialisable object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: Path, length: int = 16, progress: Callable[[], Any] | None = None, memo: bool = True) -> str:
    """Hash of a file's bytes, or of every file under a directory (relative names and bytes, in sorted order).

    Every byte counts, whatever the size (fingerprints key every cache, so two checkpoints of one shape must differ).
    With `memo` (a model's fingerprint) each large file is read once: its digest is memoised (`_digest`); without, it
    is read in full every time (what decides whether bytes are used). `progress` makes a rich progress display
    (`ui.progress`, which this bottom layer may not import) for files of `PROGRESS_BYTES` or more."""
    path = Path(path)
    if not path.is_dir():
        return _digest(path, progress, memo)[:length]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return content_hash([[f.relative_to(path).as_posix(), _digest(f, progress, memo)] for f in files], length)


def _digest(path: Path, progress, memo: bool = True) -> str:
    """sha256 of a file; with `memo`, memoised in `<cache>/filehash/` by (absolute path, size, mtime_ns, inode).

    One entry per path, rewritten when the file changes. A file modified within `RACY_NS` of the read is not
    memoised: on a file system with coarse timestamps a later same-size overwrite could keep its mtime. An in-place
    edit that keeps size, mtime and inode is not seen through the memo: only fingerprints use it (see the callers).
    A memo that cannot be written (a full or read-only cache) is skipped: it only saves time."""
    real = path.resolve()  # a hub snapshot links into its blobs: memoise the blob, shared by every snapshot
    before = real.stat()
    if not memo or before.st_size < MEMO_BYTES:
        return _read_digest(real, before.st_size, progress)
    stat_key = {"size": before.st_size, "mtime_ns": before.st_mtime_ns, "inode": before.st_ino}
    key = {"path": str(real), **stat_key, "algorithm": "sha256"}
    entry = cache_root() / "filehash" / f"{content_hash(key['path'], 32)}.json"
    memoised, _ = check_file(entry, json.loads, lambda m: isinstance(m, dict) and isinstance(m.get("digest"), str))
    if memoised is not None and {k: memoised.get(k) for k in key} == key:
        return memoised["digest"]
    started = time.time_ns()
    digest = _read_digest(real, before.st_size, progress)
    after = real.stat()
    unchanged = {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "inode": after.st_ino} == stat_key
    if unchanged and before.st_mtime_ns < started - RACY_NS:
        with suppress(OSError):
            atomic_write_json(entry, {**key, "digest": digest})
    return digest


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


class Unusable(ValueError):
    """A file dporef wrote and reads back is missing, unreadable or not what it wrote: `where` names the file,
    `message` says what is wrong and what to do (expdir makes it a UserError: one line, exit code 2)."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def check_file(
    path: Path, parse: Callable[[str], Any], valid: Callable[[Any], bool] | None = None, sha256: str | None = None
) -> tuple[Any, str | None]:
    """(value, None), or (None, what is wrong): `missing`, `unreadable (...)`, `invalid` when `valid(value)` is false,
    or `does not match its checksum` (`sha256`, when given), in that order. The bytes are read once, and the same
    bytes are parsed and hashed: what is checked is what is used."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror or type(e).__name__})"
    try:
        value = parse(data.decode())
    except PARSE_ERRORS as e:
        return None, f"unreadable ({type(e).__name__})"
    try:
        ok = valid is None or valid(value)
    except PARSE_ERRORS:  # a check that fails on what it was given (a pydantic ValidationError is a ValueError)
        ok = False
    if not ok:
        return None, "invalid"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None, "does not match its checksum"
    return value, None


def read_checked(path: Path, parse, valid, what_to_do: str, invalid: str = "does not hold what dporef writes") -> Any:
    """`check_file`'s value, or `Unusable` naming `path`, what is wrong with it (`invalid` when `valid` is false) and
    `what_to_do`."""
    value, problem = check_file(path, parse, valid)
    if problem is None:
        return value
    raise Unusable(str(path), f"{invalid if problem == 'invalid' else problem}; {what_to_do}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary sibling renamed into place, held (locked) by this process while it exists, after
    removing the stale temporaries of killed writers beside it (`clean_stale`). When the write fails (a full disk, a
    read-only directory, Ctrl-C) the temporary is removed, and an OSError names `path` (a failed write() names no
    file)."""
    path, tmp, fd = Path(path), None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path.parent)
        fd, tmp = _new_temporary(path, ".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any other file
        with os.fdopen(fd, "wb", closefd=False) as fh:  # the descriptor, and its lock, stay until the rename
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        _raise_naming(e, path)
    finally:
        if fd is not None:
            os.close(fd)


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


def sha256_bytes(path: Path) -> str:
    """sha256 of a file's bytes, read in full (what a checksum recorded beside a file is compared with)."""
    return _digest(Path(path), None, memo=False)


def _listing(root: Path) -> dict[str, int]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}


def seal(root: Path) -> None:
    """Write the manifest of a finished directory: every file's size (its shape) and sha256 (its checksum)."""
    root = Path(root)
    files = {rel: {"size": size, "sha256": sha256_bytes(root / rel)} for rel, size in _listing(root).items()}
    atomic_write_json(root / MANIFEST, {"files": files})


def damage(root: Path, memo: bool = False) -> str | None:
    """Why a sealed directory no longer holds what it was sealed with (no manifest, a file missing, added, resized
    or with other bytes), or None when it is intact. Every byte is read again, so an in-place edit that keeps a file's
    size and mtime is found; `memo` trusts `_digest`'s memo for large files instead, only where the bytes are not
    about to be used (a finished run's policy/, whose numbers the run's checksummed files hold)."""
    root = Path(root)
    manifest, _ = check_file(root / MANIFEST, json.loads, lambda m: isinstance(m, dict))
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return "no readable manifest"
    sealed, present = manifest["files"], _listing(root)
    for rel in sorted(set(sealed) | set(present)):
        entry = sealed.get(rel)
        if not isinstance(entry, dict) or rel not in present:
            return f"{rel} {'missing' if rel not in present else 'not in the manifest'}"
        if present[rel] != entry.get("size") or _digest(root / rel, None, memo) != entry.get("sha256"):
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
        clean_stale(final.parent)
        fd, tmp = _new_temporary(final, ".tmp", directory=True)
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
    finally:
        os.close(fd)


def _swap(tmp: Path, final: Path) -> None:
    """Put `tmp` in the place of `final`; when that fails the old `final` is put back, and no `.old` is left."""
    fd, old = _new_temporary(final, ".old", directory=True)
    try:
        os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / final.name, final)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
        os.close(fd)


def _new_temporary(path: Path, suffix: str, directory: bool = False) -> tuple[int, Path]:
    """A new temporary sibling of `path` (`.NAME.<random><suffix>`, a file or a directory) and a descriptor of it that
    holds its flock until the caller closes it: while the writer lives, `clean_stale` leaves it alone. One that a
    cleaner removed before the lock was taken (it looked abandoned) is made again."""
    while True:
        if directory:
            tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
        else:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while a cleaner that found it first removes it
        except OSError:  # no flock here (a directory on NFS): a cleaner cannot lock it either, so it never removes it
            return fd, Path(tmp)
        with suppress(FileNotFoundError):
            if os.path.samestat(os.lstat(tmp), os.fstat(fd)):
                return fd, Path(tmp)
        os.close(fd)


def clean_stale(directory: Path) -> None:
    """Remove the temporaries a killed writer left in `directory` (`.NAME.*.tmp` and `.NAME.*.old`, files or
    directories): only those whose flock can be taken, so none a live writer holds (`_new_temporary`), on this
    machine or another that shares the file system's locks; the kernel drops a dead process's locks. A temporary that
    cannot be locked or removed (no flock, a read-only disk) is left as it is; this never raises."""
    try:
        with os.scandir(directory) as entries:
            stale = [e for e in entries if TEMPORARY.fullmatch(e.name)]
    except OSError:
        return
    for entry in stale:
        with suppress(OSError):
            mode = os.O_RDONLY if entry.is_dir(follow_symlinks=False) else os.O_RDWR  # a file's lock may need write
            fd = os.open(entry.path, mode | os.O_NOFOLLOW | os.O_NONBLOCK)  # no link followed, no FIFO waited on
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: its writer is alive
                if not os.path.samestat(os.lstat(entry.path), os.fstat(fd)):
                    continue  # renamed into place, or made anew, since it was listed
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            finally:
                os.close(fd)


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
    then raises `Held`. Once held, the stale temporaries beside `path` are removed (`clean_stale`)."""
    lock_path = lock_file(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:  # one line naming it when it cannot be written (read-only, another user's), never a wait that cannot end
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(lock_path)) from e
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
        clean_stale(lock_path.parent)
        yield
    finally:
        lock.release()
