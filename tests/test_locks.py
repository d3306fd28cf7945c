"""Two commands on one results directory or one cache never corrupt each other: a run and a cache entry are written
by one process at a time (store.locked, an OS lock), a second one skips, waits or reads what the first wrote, and a
lock file that a killed process left behind never blocks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_WORLD
from datasets import Dataset, DatasetDict
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.data.tokenize import tokenize_pairs
from dpo_ref.models import load_tokenizer, resolve
from dpo_ref.reference import ReferenceEngine
from dpo_ref.store import Held, lock_file, locked

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["objectives.0.betas=[0.1]", "train.max_steps=2", "eval.max_new_tokens=12"]
RUN = "dpo-sft-b0.1-s0"
HOLD = "import sys, time; from dpo_ref.store import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True)\n"


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"},  # no wrapped lines
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen, text: str) -> str:
    """The process's output up to and including the first line that holds `text`."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"{text!r} never came: {''.join(lines)}")


def holder(path, seconds: float) -> subprocess.Popen:
    """A process that holds the lock of `path` for `seconds` (once it has printed "held")."""
    proc = start("-c", HOLD + f"    time.sleep({seconds})", str(path))
    read_until(proc, "held")
    return proc


def flock_holders(path) -> set[int]:
    """The processes the kernel lists as holding a flock on `path`'s inode (/proc/locks)."""
    inode = os.stat(lock_file(path)).st_ino
    rows = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return {int(r[4]) for r in rows if r[1] == "FLOCK" and int(r[5].split(":")[2]) == inode}


def said(text: str) -> str:
    return " ".join(text.split())  # the console's line wrapping undone


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")
def test_a_lock_a_killed_process_left_behind_never_blocks(tmp_path):
    path = tmp_path / "entry"
    proc = holder(path, 600)
    assert flock_holders(path) == {proc.pid}  # the OS's own view: the other process holds it
    with pytest.raises(Held, match="is held by another process"):
        with locked(path, timeout=0):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert lock_file(path).is_file()  # left behind by the killed process ...
    assert flock_holders(path) == set()  # ... but the kernel released its lock
    t0 = time.monotonic()
    with locked(path, timeout=0):  # taken at once, without waiting
        assert flock_holders(path) == {os.getpid()}
    assert time.monotonic() - t0 < 1


def test_a_held_lock_is_waited_for_or_refused_in_one_line(tmp_path):
    path = tmp_path / "entry"
    proc = holder(path, 3)
    held_at = time.monotonic()
    with pytest.raises(Held) as refused:
        with locked(path, timeout=0.2):
            pass
    assert str(refused.value) == f"{path} is still held by another process after 0.2s (lock file {lock_file(path)})"
    lines = []
    with locked(path, on_wait=lines.append):  # waits as long as it takes: until the holder lets go
        assert time.monotonic() - held_at > 2.5
    assert lines == [f"waiting for {path}: another process holds {lock_file(path)}"]
    proc.wait(timeout=30)


@pytest.mark.slow  # scores a reference of the embedded world in two processes
def test_a_second_process_reads_the_scores_the_first_computed(tiny_world, tmp_path):
    """Both processes start while the entry's lock is held, so both look it up at the same moment: one scores it,
    the other waits under the lock and reads what the first wrote instead of scoring again."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests')\n"
        "import datasets; datasets.disable_caching()  # tokenizing writes no cache file into the world\n"
        "from conftest import TINY\n"
        "from dpo_ref.data.tokenize import tokenize_pairs\n"
        "from dpo_ref.models import load_tokenizer, resolve\n"
        "from dpo_ref.reference import ReferenceEngine\n"
        "from dpo_ref.world import WorldConfig, build_world\n"
        "world = build_world(WorldConfig(**TINY))\n"
        "ref = resolve('world:sft', world)\n"
        "tok = load_tokenizer(ref)\n"
        "pairs = tokenize_pairs(world.preference_data(), tok, 64)[0]\n"
        "engine = ReferenceEngine(cache_dir=Path(sys.argv[1]))\n"
        "print('ready', flush=True)\n"
        "scores = engine.pair_scores(ref, pairs, tok, 64, 16)\n"
        "print('counts', engine.computed, engine.cached, float(scores['train']['chosen'].sum()))\n"
    )
    ref = resolve("world:sft", tiny_world)
    tok = load_tokenizer(ref)
    in_memory = DatasetDict({k: Dataset.from_dict(v.to_dict()) for k, v in tiny_world.preference_data().items()})
    here = ReferenceEngine(cache_dir=tmp_path / "here")
    want = here.pair_scores(ref, tokenize_pairs(in_memory, tok, 64)[0], tok, 64, 16)
    (entry,) = (tmp_path / "here").glob("*.json")  # the entry's name: the same key in any cache
    cache = tmp_path / "cache"
    with locked(cache / entry.name):
        procs = [start("-c", script, str(cache)) for _ in range(2)]
        for proc in procs:
            read_until(proc, "ready")
        time.sleep(2)  # both are now at the lock
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    counts = sorted(line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("counts"))
    assert [c[:2] for c in counts] == [["0", "1"], ["1", "0"]], outputs  # one computed, the other read it
    assert float(counts[0][2]) == float(counts[1][2]) == float(want["train"]["chosen"].sum())  # the same scores
    assert len(list(cache.glob("*.json"))) == 1


def cli(*args: str):
    sets = [a for s in TINY_WORLD + SHORT for a in ("--set", s)]
    return CliRunner().invoke(app, [*args, *sets])


def study(out) -> subprocess.Popen:
    sets = [a for s in TINY_WORLD + SHORT for a in ("--set", s)]
    return start("-m", "dpo_ref", "sweep-beta", "--out", str(out), *sets)


def run_one(exp_dir, *extra: str) -> subprocess.Popen:
    return start("-m", "dpo_ref", "run-one", str(exp_dir), RUN, *extra)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    """The experiment run by one study command alone: what concurrent commands must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = cli("sweep-beta", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out / "rq1_sweep_beta"


def prepared(tmp_path):
    result = cli("sweep-beta", "--out", str(tmp_path), "--prepare-only")
    assert result.exit_code == 0, result.output
    return tmp_path / "rq1_sweep_beta"


def same_run(exp_dir, want, run_id):
    got = json.loads((exp_dir / run_id / "metrics.json").read_text())
    assert got["eval"] == json.loads((want / run_id / "metrics.json").read_text())["eval"], run_id
    assert (exp_dir / run_id / "generations.jsonl").read_text() == (want / run_id / "generations.jsonl").read_text()


@pytest.mark.slow
def test_two_run_one_of_one_run_train_it_once(uninterrupted, tmp_path):
    exp_dir = prepared(tmp_path)
    procs = [run_one(exp_dir), run_one(exp_dir)]  # started together
    results = [(proc.wait(timeout=600), said(proc.stdout.read())) for proc in procs]
    trained = [r for r in results if r[0] == 0 and f"finished {RUN}: done" in r[1]]
    assert len(trained) == 1, results
    (code, other) = next(r for r in results if r not in trained)
    # the other one either found it running (exit 2, one line) or, when it came later, done
    held = f"error: {exp_dir}: run {RUN}: another process is running it (lock {lock_file(exp_dir / RUN)}); pass --wait"
    assert (code == 2 and held in other) or (code == 0 and f"already done: {RUN}" in other), results
    same_run(exp_dir, uninterrupted, RUN)


@pytest.mark.slow
def test_a_killed_run_one_blocks_nothing_and_a_held_run_is_refused_or_waited_for(uninterrupted, tmp_path):
    exp_dir = prepared(tmp_path)
    killed = run_one(exp_dir)
    status = exp_dir / RUN / "status.json"
    deadline = time.monotonic() + 300
    while not (status.is_file() and json.loads(status.read_text())["status"] == "running"):
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # no chance to clean up: its lock file and its half-written run stay
    killed.wait(timeout=30)
    lock = lock_file(exp_dir / RUN)
    assert lock.is_file()
    with locked(exp_dir / RUN, timeout=0):  # taken at once all the same; held here as a live process would
        refused = CliRunner().invoke(app, ["run-one", str(exp_dir), RUN])
        waiting = run_one(exp_dir, "--wait")
        read_until(waiting, f"waiting for {exp_dir / RUN}: another process holds {lock}")
        time.sleep(1)
        assert waiting.poll() is None  # still waiting ...
        assert json.loads(status.read_text())["status"] == "running"  # ... and the held run left as it is
    assert refused.exit_code == 2
    want = f"error: {exp_dir}: run {RUN}: another process is running it (lock {lock}); pass --wait to wait\n"
    assert refused.stderr == want  # one line, naming the run and the lock file
    assert waiting.wait(timeout=600) == 0
    assert f"finished {RUN}: done" in waiting.stdout.read()  # the killed attempt started over, and finished
    same_run(exp_dir, uninterrupted, RUN)


@pytest.mark.slow
def test_two_study_commands_on_one_directory_train_every_run_once(uninterrupted, tmp_path):
    """Both start together on one results directory; both are let into the prepare stage at the same moment."""
    exp_dir = tmp_path / "rq1_sweep_beta"
    with locked(exp_dir / "prepared"):
        procs = [study(tmp_path), study(tmp_path)]
        for proc in procs:
            read_until(proc, f"waiting for {exp_dir / 'prepared'}")
    outputs = []
    for proc in procs:
        assert proc.wait(timeout=600) == 0
        outputs.append(said(proc.stdout.read()))
    for run_id in ("sft", RUN):
        trained = [out for out in outputs if f"finished {run_id}: " in out]
        assert len(trained) == 1, (run_id, outputs)  # trained once, by one of them
        same_run(exp_dir, uninterrupted, run_id)
    assert any("prepared inputs reused" in out for out in outputs)  # the second waited for the first's prepare
    untimed = lambda d: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows_of(d)]  # noqa: E731
    assert untimed(exp_dir) == untimed(uninterrupted)  # the report: every run, the numbers of an uninterrupted run


def rows_of(exp_dir):
    return json.loads((exp_dir / "results.json").read_text())["rows"]
