"""`file_hash`: every byte counts, each large file is read once (a memo under the dporef cache), and large files
show a progress bar in bytes. Expected digests come from hashlib directly."""

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from dpo_ref import store
from dpo_ref.store import MEMO_BYTES, PROGRESS_BYTES, file_hash

MIB = 1 << 20
HOUR_NS = 3600 * 10**9


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def opened(monkeypatch):
    """Names of the files store opens to hash (memo entries are read and written without `open`)."""
    names = []

    def counting_open(file, *args, **kwargs):
        names.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(store, "open", counting_open, raising=False)
    return names


def _aged(path: Path, age_ns: int = HOUR_NS) -> Path:
    """Set the mtime `age_ns` in the past: a file written a while ago, out of the racy window."""
    past = time.time_ns() - age_ns
    os.utime(path, ns=(past, past))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_hash_covers_every_byte_and_name(tmp_path, cache):
    data = bytes(range(256)) * 4096
    (tmp_path / "w.bin").write_bytes(data)
    assert file_hash(tmp_path / "w.bin", 64) == hashlib.sha256(data).hexdigest()
    assert file_hash(tmp_path / "w.bin") == _sha(data)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text('{"hidden_size": 8}')
        (d / "model.safetensors").write_bytes(data)
    assert file_hash(a) == file_hash(b)  # content-addressed: the path does not count
    (b / "model.safetensors").write_bytes(data[:-1] + b"\x00")
    assert file_hash(a) != file_hash(b)
    (b / "model.safetensors").write_bytes(data)
    (b / "config.json").rename(b / "generation_config.json")
    assert file_hash(a) != file_hash(b)


def test_each_file_is_read_once_until_it_changes(tmp_path, cache, opened):
    weights = tmp_path / "model.safetensors"
    old = b"a" * (2 * MEMO_BYTES)
    weights.write_bytes(old)
    _aged(weights)
    assert file_hash(weights) == _sha(old)
    assert file_hash(weights) == _sha(old)
    assert opened == ["model.safetensors"]  # the second answer came from the memo
    assert len(list((cache / "filehash").glob("*.json"))) == 1

    new = b"b" * len(old)
    with open(weights, "r+b") as f:  # in place: same inode, same size
        f.write(new)
    _aged(weights, HOUR_NS // 2)
    assert file_hash(weights) == file_hash(weights) == _sha(new)
    assert len(opened) == 2

    mtime = weights.stat().st_mtime_ns
    swapped = tmp_path / "swapped.tmp"
    newer = b"c" * len(old)
    swapped.write_bytes(newer)
    os.utime(swapped, ns=(mtime, mtime))
    os.replace(swapped, weights)  # same size and mtime, another inode
    assert file_hash(weights) == _sha(newer)
    assert len(opened) == 3


def test_recent_files_and_broken_entries_are_hashed_again(tmp_path, cache, opened):
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"f" * (2 * MEMO_BYTES))  # just written: a same-size rewrite could keep its mtime
    assert file_hash(fresh) == file_hash(fresh) == _sha(fresh.read_bytes())
    assert opened == ["fresh.bin", "fresh.bin"]
    assert not (cache / "filehash").exists()

    _aged(fresh)
    file_hash(fresh)
    (entry,) = (cache / "filehash").glob("*.json")
    entry.write_text('{"path": ')
    assert file_hash(fresh) == _sha(fresh.read_bytes())
    assert len(opened) == 4


class FakeProgress:
    """Records the tasks a rich progress display is given."""

    def __init__(self):
        self.tasks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def add_task(self, description, total):
        self.tasks[description] = [total, 0]
        return description

    def advance(self, task, amount):
        self.tasks[task][1] += amount


def test_large_files_show_a_bar_in_mib(tmp_path, cache):
    model = tmp_path / "model"
    model.mkdir()
    with open(model / "big.bin", "wb") as f:
        f.truncate(PROGRESS_BYTES)  # sparse: no disk
    (model / "config.json").write_text("{}")
    displays = []

    def progress():
        displays.append(FakeProgress())
        return displays[-1]

    expected = hashlib.sha256()
    for _ in range(PROGRESS_BYTES // MIB):
        expected.update(bytes(MIB))
    assert file_hash(model / "big.bin", progress=progress) == expected.hexdigest()[:16]
    file_hash(model, progress=progress)  # config.json is too small for a bar
    mib = PROGRESS_BYTES / MIB
    assert [d.tasks for d in displays] == [{"hashing big.bin (MiB)": [mib, mib]}] * 2


def test_damage_reads_every_byte_and_only_fingerprints_trust_the_memo(tmp_path, cache, opened):
    root = tmp_path / "entry"
    with store.atomic_dir(root) as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * (2 * MEMO_BYTES))
    weights = _aged(root / "weights.bin")
    fingerprint = file_hash(root)  # memoised, as a model's fingerprint is
    before = weights.stat()
    with open(weights, "r+b") as f:  # in place: same inode, same size, and the date put back
        f.write(b"x")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    opened.clear()
    assert store.damage(root) == "weights.bin changed"  # what is about to be read is hashed in full
    assert opened == ["weights.bin"]
    assert store.damage(root, memo=True) is None and file_hash(root) == fingerprint  # the memo cannot see it
    assert opened.count("weights.bin") == 1  # neither read it (file_hash reads the small manifest again)


def test_a_checked_read_parses_and_hashes_the_same_bytes(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"eval": {"win_rate": 0.5}}')
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.check_file(path, json.loads, lambda m: "eval" in m, digest) == ({"eval": {"win_rate": 0.5}}, None)
    assert store.check_file(path, json.loads, lambda m: "eval" in m, "0" * 64) == (None, "does not match its checksum")
    assert store.check_file(path, json.loads, lambda m: "history" in m) == (None, "invalid")
    assert store.check_file(tmp_path / "none.json", json.loads) == (None, "missing")
    path.write_text('{"eval": ')
    assert store.check_file(path, json.loads, None, digest) == (None, "unreadable (JSONDecodeError)")
    with pytest.raises(store.Unusable) as err:
        store.read_checked(path, json.loads, None, "run the study again")
    assert str(err.value) == f"{path}: unreadable (JSONDecodeError); run the study again"
