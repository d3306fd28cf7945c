"""Bytes dporef reads back are used only as written, and a fault is one line, never a traceback.

1. What a run is about to read (prepared/, the baselines, a cache directory) is hashed in full when it reads it: an
   in-place edit that keeps a file's size, mtime and inode (what the stat memo of `store._digest` keys on) is found.
2. A finished run's files carry checksums (status.json, written last): a hand-edited file makes the run `damaged`,
   rerun by the next study command; and no content that passes `read_run` crashes the report.
3. Every file read back from a results directory goes through a checked reader: one line naming the file and what
   to do, exit code 2.
4. The temporaries of killed atomic writes are removed by later writes, never those of a live writer.
5. A full or read-only disk is one line naming the file whose write failed, and leaves nothing that looks finished.

Expected reasons and messages are written out by hand; the finished sweep is built once for the module."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_WORLD, one_line_error
from typer.testing import CliRunner

from dpo_ref import store
from dpo_ref.cache import intact_dir
from dpo_ref.cli import app
from dpo_ref.store import atomic_dir, atomic_write_bytes, damage, file_hash

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world

SETS = ["objectives.0.betas=[0.1]", "train.max_steps=2", "eval.max_new_tokens=12"]
RUN = "dpo-sft-b0.1-s0"
ARROW = "pairs/train/data-00000-of-00001.arrow"
HOUR_NS = 3600 * 10**9
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished(run_study, tmp_path_factory):
    """A finished two-run sweep (the SFT row and one DPO run) and its results.json."""
    out = tmp_path_factory.mktemp("finished")
    summary, _ = run_study("sweep-beta", out, *SETS, experiment="rq1_sweep_beta")
    return out / "rq1_sweep_beta", summary


def copy_of(finished, tmp_path) -> Path:
    exp_dir = tmp_path / "rq1_sweep_beta"
    shutil.copytree(finished[0], exp_dir)
    return exp_dir


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def study(out, *extra: str):
    sets = [a for s in TINY_WORLD + SETS for a in ("--set", s)]
    return cli("sweep-beta", "--out", out, *extra, *sets)


def said(result) -> str:
    """What the command printed on stderr, with the console's line wrapping undone."""
    return " ".join(result.stderr.split())


def rows(exp_dir) -> dict:
    return {r["run_id"]: r for r in json.loads((exp_dir / "results.json").read_text())["rows"]}


def reported(exp_dir) -> dict:
    """`dporef report`'s rows, once it exited 0 without a traceback."""
    result = cli("report", exp_dir)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output + repr(result.exception)
    return rows(exp_dir)


def aged(root: Path) -> None:
    """Every file under `root` (or `root` itself) an hour old, out of the memo's racy window."""
    past = time.time_ns() - HOUR_NS
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if p.is_file():
            os.utime(p, ns=(past, past))


def edit_in_place(path: Path, offset: int, new: bytes) -> None:
    """Overwrite bytes in place: same inode, same size, and the mtime put back as it was."""
    before = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def flip_in_place(path: Path) -> None:
    data = path.read_bytes()
    edit_in_place(path, len(data) // 2, bytes([data[len(data) // 2] ^ 0x01]))


def memoised(path: Path, monkeypatch) -> None:
    """Every file of `path` in the stat memo, as a large one is after a fingerprint (or today's damage()) read it."""
    monkeypatch.setattr(store, "MEMO_BYTES", 1)  # the tiny world's files stand for files of 1 MiB and more
    aged(path)
    file_hash(path)
    if path.is_dir():
        damage(path)


def rechecksum(run_dir: Path, name: str) -> None:
    """Record a file's new sha256 in status.json, as a tool that "repairs" checksums would."""
    status = json.loads((run_dir / "status.json").read_text())
    status.setdefault("sha256", {})[name] = hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
    (run_dir / "status.json").write_text(json.dumps(status))


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))


def edit_rows(path: Path, change) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for row in lines:
        change(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


# --- 1. what a run reads is hashed in full when it reads it


def test_prepared_pairs_edited_in_place_are_never_trained_on(finished, tmp_path, monkeypatch):
    exp_dir = copy_of(finished, tmp_path)
    memoised(exp_dir / "prepared", monkeypatch)
    flip_in_place(exp_dir / "prepared" / ARROW)  # one reference log-prob (or token) altered, size and mtime kept
    shutil.rmtree(exp_dir / RUN)  # pending again: it must not train on the altered pairs
    result = cli("run-one", exp_dir, RUN)
    one_line_error(result, f"error: {exp_dir / 'prepared'}: prepared inputs are damaged ({ARROW} changed)")
    assert "run the study again" in result.stderr and not (exp_dir / RUN).exists()


def test_a_baseline_edited_in_place_is_never_used(finished, tmp_path, monkeypatch):
    exp_dir = copy_of(finished, tmp_path)
    baseline = exp_dir / "baseline" / "test.jsonl"
    memoised(baseline, monkeypatch)
    text = baseline.read_text()
    at = text.index('"reward": 0.')
    edit_in_place(baseline, len(text[:at].encode()), b'"reward": 1.')  # an SFT sample made to win, same size
    one_line_error(cli("run-one", exp_dir, RUN), "prepared inputs are damaged (baseline/test.jsonl changed)")


def test_the_study_rebuilds_prepared_data_edited_in_place(finished, tmp_path, monkeypatch):
    exp_dir = copy_of(finished, tmp_path)
    arrow = exp_dir / "prepared" / ARROW
    original = arrow.read_bytes()
    memoised(exp_dir / "prepared", monkeypatch)
    flip_in_place(arrow)
    result = study(tmp_path, "--prepare-only")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"is damaged ({ARROW} changed); rebuilding it" in said(result)
    assert arrow.read_bytes() == original  # rebuilt (deterministic), not used


def test_a_cache_directory_edited_in_place_is_rebuilt(tmp_path):
    root = tmp_path / "entry"
    with atomic_dir(root) as tmp:
        (tmp / "weights.bin").write_bytes(bytes(2 * store.MEMO_BYTES))  # large enough for the memo as it stands
    aged(root)
    assert damage(root) is None and file_hash(root)  # both read it once: a memo entry for weights.bin
    edit_in_place(root / "weights.bin", 12345, b"\x01")
    assert damage(root) == "weights.bin changed"
    assert not intact_dir(root, "test entry") and not root.exists()  # removed, for its owner to rebuild


# --- 2. a finished run's files carry checksums; nothing that passes read_run crashes the report


def test_a_hand_edited_metrics_file_makes_the_run_damaged_and_it_runs_again(finished, run_study, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    edit_json(exp_dir / RUN / "metrics.json", lambda m: m["eval"].update(win_rate=0.99))
    reason = "metrics.json does not match its checksum in status.json"
    row = reported(exp_dir)[RUN]
    assert (row["status"], row["damage"], row["win_rate"], row["beta"]) == ("damaged", reason, None, 0.1)
    summary, result = run_study("sweep-beta", tmp_path, *SETS, experiment="rq1_sweep_beta")
    assert f"damaged: {RUN}: {reason}; running it again" in said(result)
    again = {r["run_id"]: r for r in summary["rows"]}[RUN]
    want = {r["run_id"]: r for r in finished[1]["rows"]}[RUN]
    assert again["status"] == "done" and again["win_rate"] == want["win_rate"]


def test_an_edited_sample_makes_the_run_damaged(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    lines = (exp_dir / RUN / "generations.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["reward"] += 0.5
    (exp_dir / RUN / "generations.jsonl").write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    row = reported(exp_dir)[RUN]
    assert (row["status"], row["damage"]) == ("damaged", "generations.jsonl does not match its checksum in status.json")
    assert row["kl"] is None and row["win_rate_lo"] is None


def test_a_finished_run_without_checksums_is_damaged(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    edit_json(exp_dir / "sft" / "status.json", lambda s: s.pop("sha256"))
    row = reported(exp_dir)["sft"]
    assert (row["status"], row["damage"]) == ("damaged", "status.json records no checksums of the run's files")


@pytest.mark.parametrize(
    "name, key",
    [
        ("generations.jsonl", "kl_sft_log_ratio"),
        ("generations.jsonl", "prompt"),
        ("validation.jsonl", "reward"),
        ("ranking.jsonl", "logp_rejected"),
    ],
)
def test_rows_without_what_the_report_reads_are_damaged_even_with_their_checksum(finished, tmp_path, name, key):
    exp_dir = copy_of(finished, tmp_path)
    edit_rows(exp_dir / RUN / name, lambda row: row.pop(key))
    rechecksum(exp_dir / RUN, name)
    row = reported(exp_dir)[RUN]
    assert (row["status"], row["damage"]) == ("damaged", f"{name} does not hold what a finished run writes")


def _set_eval(name, value):
    return lambda d: edit_json(d / "metrics.json", lambda m: m["eval"].update({name: value}))


CONTENT = {  # what is written into the run (its checksum then recorded again) -> why the report shows it damaged
    "win rate above 1": (
        "metrics.json",
        _set_eval("win_rate", 5.0),
        "metrics.json's win_rate (5) is not what its samples give ({win_rate})",
    ),
    "negative LC win rate": (
        "metrics.json",
        _set_eval("lc_win_rate", -3.0),
        "metrics.json's lc_win_rate (-3) is not what its samples give ({lc_win_rate})",
    ),
    "seconds as text": (
        "metrics.json",
        lambda d: edit_json(d / "metrics.json", lambda m: m.update(eval_seconds="fast")),
        "metrics.json does not hold what a finished run writes",
    ),
    "a measure as null": (
        "metrics.json",
        _set_eval("kl", None),
        "metrics.json does not hold what a finished run writes",
    ),
    "beta as text": (
        "run.yaml",
        lambda d: (d / "run.yaml").write_text((d / "run.yaml").read_text().replace("beta: 0.1", "beta: high")),
        "run.yaml does not hold what a finished run writes",
    ),
    "lengths as text": (
        "generations.jsonl",
        lambda d: edit_rows(d / "generations.jsonl", lambda r: r.update(length="long")),
        "generations.jsonl does not hold what a finished run writes",
    ),
}


@pytest.mark.parametrize("content", list(CONTENT))
def test_the_report_never_crashes_on_content_with_its_checksum(finished, tmp_path, content):
    exp_dir = copy_of(finished, tmp_path)
    name, change, reason = CONTENT[content]
    want = {r["run_id"]: r for r in finished[1]["rows"]}[RUN]
    change(exp_dir / RUN)
    rechecksum(exp_dir / RUN, name)
    row = reported(exp_dir)[RUN]
    assert row["status"] == "damaged" and row["damage"] == reason.format(
        win_rate=f"{want['win_rate']:.6g}", lc_win_rate=f"{want['lc_win_rate']:.6g}"
    )
    assert row["win_rate"] is None and row["lc_win_rate"] is None and row["kl"] is None
    assert rows(exp_dir)["sft"] == {r["run_id"]: r for r in finished[1]["rows"]}["sft"]


def test_annotations_of_the_wrong_shape_are_damaged_not_a_crash(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    (exp_dir / RUN / "alpaca_eval.json").write_text(json.dumps({"win_rate": "high", "lc_win_rate": [1]}))
    row = reported(exp_dir)[RUN]
    reason = "alpaca_eval.json does not hold what import-annotations writes"
    assert (row["status"], row["damage"]) == ("damaged", reason)


# --- 3. every file read back goes through a checked reader: one line naming it and what to do


SPEC_TODO = "run the study command again"
LEARNING_RATE = "train.learning_rate"


def _learning_rate_as_text(text: str) -> str:
    exp = yaml.safe_load(text)
    exp["train"]["learning_rate"] = "fast"
    return yaml.safe_dump(exp)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda text: "name: [rq1\n", "unreadable (ParserError)"),
        (lambda text: "- 1\n- 2\n", "does not hold an experiment (not a mapping)"),
        (_learning_rate_as_text, f"does not hold a valid experiment ({LEARNING_RATE}: Input should be a valid number)"),
    ],
    ids=["not YAML", "not a mapping", "an invalid value"],
)
def test_a_broken_experiment_file_is_one_line(finished, tmp_path, change, says):
    exp_dir = copy_of(finished, tmp_path)
    spec = exp_dir / "experiment.yaml"
    spec.write_text(change(spec.read_text()))
    for command in (["report", exp_dir], ["run-one", exp_dir, RUN]):
        one_line_error(cli(*command), f"error: {spec}: {says}; {SPEC_TODO}")


@pytest.mark.parametrize(
    "text, says",
    [("{", "unreadable (JSONDecodeError)"), ("[]", "does not hold"), ('{"study": 3}', "does not hold")],
)
def test_a_broken_command_file_is_one_line(finished, tmp_path, text, says):
    exp_dir = copy_of(finished, tmp_path)
    (exp_dir / "command.json").write_text(text)
    one_line_error(cli("report", exp_dir), f"error: {exp_dir / 'command.json'}: ", says, SPEC_TODO)


def test_a_baseline_meta_file_of_the_wrong_shape_is_one_line_then_sampled_again(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    meta = exp_dir / "baseline" / "test.meta.json"
    original = json.loads(meta.read_text())
    meta.write_text("[]\n")
    one_line_error(
        cli("run-one", exp_dir, RUN),
        f"error: {exp_dir / 'prepared'}: prepared inputs are damaged (baseline/test.meta.json does not hold",
        "run the study again",
    )
    result = study(tmp_path, "--prepare-only")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads(meta.read_text()) == original  # sampled again with the same seed: the same key and checksum


def _relocated(exp_dir: Path, tmp_path: Path) -> Path:
    """prepared/ as if prepare had resolved the policy to a copy of it (sealed again, as prepare seals it)."""
    plan_path = exp_dir / "prepared" / "plan.json"
    plan = json.loads(plan_path.read_text())
    copy = tmp_path / "models" / "sft"
    shutil.copytree(plan["models"]["policy"]["location"], copy)
    plan["models"]["policy"]["location"] = plan["models"]["references"]["sft"]["location"] = str(copy)
    plan_path.write_text(json.dumps(plan))
    store.seal(exp_dir / "prepared")
    return copy


def test_a_model_deleted_after_prepare_is_one_line(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    shutil.rmtree(_relocated(exp_dir, tmp_path))
    shutil.rmtree(exp_dir / RUN)
    result = cli("run-one", exp_dir, RUN)
    one_line_error(
        result,
        f"error: {exp_dir / 'prepared' / 'plan.json'}: the policy model world:sft ({tmp_path / 'models' / 'sft'}) "
        "no longer exists; run the study again",
    )
    assert not (exp_dir / RUN / "status.json").exists()  # refused before the run started


def test_a_plan_of_the_wrong_shape_is_one_line(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    (exp_dir / "prepared" / "plan.json").write_text(json.dumps({"key": "x", "models": {"policy": "world:sft"}}))
    store.seal(exp_dir / "prepared")
    one_line_error(
        cli("run-one", exp_dir, RUN),
        f"error: {exp_dir / 'prepared' / 'plan.json'}: does not hold what prepare writes; run the study again",
    )


# --- 4. temporaries of killed writes are removed by later writes, a live writer's never


STALLED = """
import os, sys, time
from pathlib import Path
from dpo_ref import store
def stall(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(600)
store.os.replace = stall  # the temporary is written; the rename never comes
store.atomic_write_text(Path(sys.argv[1]), "a results file\\n")
"""
KILLED_IN_DIR = """
import os, signal, sys
from pathlib import Path
from dpo_ref import store
with store.atomic_dir(Path(sys.argv[1]), replace=True) as tmp:
    (tmp / "plan.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)  # killed while building the directory: no cleanup runs
"""


def child(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE)


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


def test_a_killed_writers_temporary_goes_a_live_writers_stays(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    writer = child(STALLED, exp_dir / "results.csv")
    try:
        assert writer.stdout.readline().strip() == b"writing"
        (live,) = temporaries(exp_dir)
        stale = exp_dir / ".results.md.k1l3d0ne.tmp"
        stale.write_text("half a results file")
        reported(exp_dir)
        assert temporaries(exp_dir) == [live]  # the live writer's temporary is left alone, the stale one went
    finally:
        writer.kill()
        writer.wait()
    reported(exp_dir)
    assert temporaries(exp_dir) == []  # once its writer is gone, the next write removes it


def test_a_directory_killed_while_it_was_built_is_removed_by_the_next_prepare(finished, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    killed = child(KILLED_IN_DIR, exp_dir / "prepared")
    assert killed.wait(timeout=120) == -signal.SIGKILL
    (left,) = temporaries(exp_dir)
    assert left.name.startswith(".prepared.") and (left / "plan.json").is_file()
    old = exp_dir / ".prepared.s0m3th1n.old"  # a swap killed between its two renames
    (old / "prepared").mkdir(parents=True)
    result = study(tmp_path, "--prepare-only")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert temporaries(exp_dir) == []


def test_stale_temporaries_of_other_targets_go_too_and_nothing_else(tmp_path):
    keep = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".a.lock", tmp_path / "x.json"]
    for p in keep:
        p.write_text("kept")
    for name in (".results.csv.abcd1234.tmp", ".results.md.xxxx.tmp", ".entry.q1w2e3r4.old"):
        (tmp_path / name).write_text("stale")
    atomic_write_bytes(tmp_path / "results.json", b"{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in keep] + ["results.json"])


WRITE_MANY = """
import sys
from pathlib import Path
from dpo_ref import store
for i in range(150):
    store.atomic_write_text(Path(sys.argv[1]), f"{sys.argv[2]} {i}\\n" * 2000)
"""


def test_concurrent_writers_and_cleaners_never_break_each_other(tmp_path):
    target = tmp_path / "shared.txt"
    writers = [child(WRITE_MANY, target, w) for w in ("a", "b", "c")]
    while any(w.poll() is None for w in writers):
        store.clean_stale(tmp_path)
    assert [w.returncode for w in writers] == [0, 0, 0]
    lines = target.read_text().splitlines()
    assert len(lines) == 2000 and len(set(lines)) == 1 and lines[0].endswith(" 149")  # one whole write
    assert temporaries(tmp_path) == []


# --- 5. a full or read-only disk: one line naming the file, nothing left that looks finished


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to its last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("where", ["before the samples", "before run.yaml"])
def test_a_disk_filled_during_a_run_names_the_file_and_leaves_it_unfinished(finished, tmpfs, monkeypatch, where):
    from dpo_ref.stages import run as run_stage

    fs = tmpfs("8M")
    exp_dir = fs / "rq1_sweep_beta"
    shutil.copytree(finished[0], exp_dir)
    shutil.rmtree(exp_dir / RUN)
    first = exp_dir / RUN / ("generations.jsonl" if where == "before the samples" else "run.yaml")
    patched = "write_samples" if where == "before the samples" else "clear_attempt"
    original = getattr(run_stage, patched)
    if patched == "clear_attempt":
        (exp_dir / RUN).mkdir()
        (exp_dir / RUN / "status.json").write_text('{"status": "interrupted"}')  # an earlier attempt to clear

    def full(run_dir, *args):
        original(run_dir, *args)
        fill(fs)

    def full_first(run_dir, *args):
        fill(fs)
        return original(run_dir, *args)

    monkeypatch.setattr(run_stage, patched, full_first if patched == "write_samples" else full)
    one_line_error(cli("run-one", exp_dir, RUN), f"error: {first}: No space left on device (ENOSPC)")
    status_file = exp_dir / RUN / "status.json"
    status = json.loads(status_file.read_text())["status"] if status_file.is_file() else "pending"
    assert status == ("running" if where == "before the samples" else "pending")  # nothing taken for finished
    assert not temporaries(exp_dir)
    monkeypatch.undo()
    (fs / "filler").unlink()
    assert reported(exp_dir)[RUN]["status"] == status  # not done: the next command runs it again
    assert cli("run-one", exp_dir, RUN).exit_code == 0 and reported(exp_dir)[RUN]["status"] == "done"


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_cache_that_cannot_hold_a_hash_memo_stops_nothing(finished, tmp_path, tmpfs, monkeypatch, fault):
    exp_dir = copy_of(finished, tmp_path)
    cache = tmpfs("64k")
    (cache / "filehash").mkdir()
    if fault == "read-only":
        tmpfs.read_only(cache)
    else:
        fill(cache)
    monkeypatch.setenv("DPOREF_CACHE", str(cache))
    monkeypatch.setattr(store, "MEMO_BYTES", 1)  # the policy's files stand for large ones, whose digest is memoised
    aged(exp_dir / RUN / "policy")
    assert reported(exp_dir)[RUN]["status"] == "done"


def test_stale_temporaries_that_fill_a_disk_are_removed_before_a_write(tmpfs):
    fs = tmpfs("256k")
    (fs / ".results.csv.k1l3d0ne.tmp").write_bytes(bytes(200_000))  # a killed write's half file
    atomic_write_bytes(fs / "results.csv", bytes(120_000))
    assert [p.name for p in fs.iterdir()] == ["results.csv"]
