"""Disk and permission faults, made for real: a small tmpfs that fills up, the same remounted read-only, an --out under
a regular file. A fault is one line naming the path and the error (exit 2; exit 1 with the run marked failed when it
hits a run), leaves no temporary file (`.NAME.*.tmp`, `.NAME.*.old`) and keeps what was finished as it was.

Root can write through chmod 0o555, so read-only means a read-only mount; where mounting is not permitted (no root,
no CAP_SYS_ADMIN) those tests are skipped with the reason. The ENOTDIR tests need nothing and always run."""

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import TINY_WORLD, one_line_error
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.store import atomic_dir, atomic_write_bytes, atomic_write_text

SHORT = TINY_WORLD + ["train.max_steps=2", "eval.max_new_tokens=12", "objectives.0.betas=[0.1]"]
DISK_FOR_ONE_ROW = 400 << 10  # the world's policies (134k parameters, fp32) are ~536 kB; the rest is ~200 kB


def snapshot(root):
    """Every path under `root` with its bytes (files) or None (directories): what "unchanged" compares."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def temporaries(root):
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def study(out, *args, sets=SHORT):
    return CliRunner().invoke(app, ["sweep-beta", "--out", str(out), *args, *[a for s in sets for a in ("--set", s)]])


# --- the atomic writers, on a real full or read-only file system


def test_a_write_that_fills_the_disk_leaves_the_old_file_and_no_temporary(tmpfs):
    fs = tmpfs("64k")
    atomic_write_text(fs / "results.md", "old\n")
    with pytest.raises(OSError) as err:
        atomic_write_bytes(fs / "results.md", b"x" * 200_000)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(fs / "results.md")
    assert [p.name for p in fs.iterdir()] == ["results.md"] and (fs / "results.md").read_text() == "old\n"


def test_a_directory_that_fills_the_disk_is_removed_and_the_old_one_kept(tmpfs):
    fs = tmpfs("64k")
    with atomic_dir(fs / "entry") as tmp:
        (tmp / "small.txt").write_text("kept\n")
    before = snapshot(fs)
    with pytest.raises(OSError) as err, atomic_dir(fs / "entry", replace=True) as tmp:
        (tmp / "big.bin").write_bytes(b"x" * 200_000)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(fs / "entry")
    assert snapshot(fs) == before and not temporaries(fs)


def test_writes_on_a_read_only_file_system_name_the_target(tmpfs):
    fs = tmpfs("1M")
    atomic_write_text(fs / "a.json", "{}\n")
    tmpfs.read_only(fs)
    with pytest.raises(OSError) as err:
        atomic_write_text(fs / "a.json", "{}\n")
    assert err.value.errno == errno.EROFS and err.value.filename == str(fs / "a.json")  # not the temporary's name
    with pytest.raises(OSError) as err, atomic_dir(fs / "entry"):
        pass
    assert err.value.errno == errno.EROFS and err.value.filename == str(fs / "entry")
    assert snapshot(fs) == {"a.json": b"{}\n"}


def test_a_path_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("a file\n")
    with pytest.raises(NotADirectoryError):
        atomic_write_text(tmp_path / "file" / "sub" / "x.json", "{}\n")
    with pytest.raises(OSError) as err, atomic_dir(tmp_path / "file" / "entry"):
        pass
    assert err.value.errno in (errno.ENOTDIR, errno.EEXIST)  # mkdir of a path that is a file: EEXIST
    assert snapshot(tmp_path) == {"file": b"a file\n"}


# --- through the CLI, on the tiny world


@pytest.mark.slow
def test_out_under_a_regular_file_is_one_line(tmp_path, tiny_world):
    (tmp_path / "file").write_text("a file\n")
    result = study(tmp_path / "file" / "runs")
    one_line_error(result, str(tmp_path / "file" / "runs"), "Not a directory (ENOTDIR)")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "rq1_sweep_beta").write_text("a file where the experiment's directory goes\n")
    one_line_error(study(tmp_path / "runs"), str(tmp_path / "runs" / "rq1_sweep_beta"), "File exists (EEXIST)")
    assert snapshot(tmp_path) == {
        "file": b"a file\n",
        "runs": None,
        "runs/rq1_sweep_beta": b"a file where the experiment's directory goes\n",
    }


@pytest.mark.slow
def test_read_only_out_is_one_line(tmpfs, tiny_world):
    fs = tmpfs("1M")
    tmpfs.read_only(fs)
    one_line_error(study(fs), str(fs / "rq1_sweep_beta"), "Read-only file system (EROFS)")
    assert snapshot(fs) == {}


@pytest.mark.slow
def test_a_full_disk_during_prepare_is_one_line_and_leaves_no_temporary(tmpfs, tiny_world):
    fs = tmpfs("48k")
    one_line_error(study(fs), str(fs / "rq1_sweep_beta"), "No space left on device (ENOSPC)")
    assert not temporaries(fs)
    written = fs / "rq1_sweep_beta" / "experiment.yaml"
    assert written.read_text().startswith("name: rq1_sweep_beta")  # what was written is whole


@pytest.mark.slow
def test_a_full_disk_during_a_run_fails_that_run_only(tmpfs, tiny_world):
    fs = tmpfs(f"{DISK_FOR_ONE_ROW // 1024}k")  # prepare, the SFT row and the report fit; a trained policy does not
    assert (Path(tiny_world.models["sft"]) / "model.safetensors").stat().st_size > DISK_FOR_ONE_ROW
    exp_dir = fs / "rq1_sweep_beta"
    result = study(fs)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "Traceback" not in result.output and "failed: dpo-sft-b0.1-s0" in result.stderr
    failed = json.loads((exp_dir / "dpo-sft-b0.1-s0" / "status.json").read_text())
    assert failed["status"] == "failed" and "No space left on device" in failed["error"]
    assert not (exp_dir / "dpo-sft-b0.1-s0" / "policy").exists() and not temporaries(fs)  # no half-saved policy
    statuses = {r["run_id"]: r["status"] for r in json.loads((exp_dir / "results.json").read_text())["rows"]}
    assert statuses == {"sft": "done", "dpo-sft-b0.1-s0": "failed"}  # the report was written, the SFT row is whole
    assert len((exp_dir / "sft" / "generations.jsonl").read_text().splitlines()) == 24  # one per test prompt


@pytest.mark.slow
def test_finished_results_on_a_read_only_disk_stay_as_they_are(tmpfs, tiny_world):
    fs = tmpfs("4M")
    assert study(fs).exit_code == 0
    AutoModelForCausalLM.from_pretrained(fs / "rq1_sweep_beta" / "dpo-sft-b0.1-s0" / "policy")  # a whole policy
    before = snapshot(fs)
    tmpfs.read_only(fs)
    one_line_error(study(fs), str(fs / "rq1_sweep_beta"), "Read-only file system (EROFS)")
    report = CliRunner().invoke(app, ["report", str(fs / "rq1_sweep_beta")])
    one_line_error(report, str(fs / "rq1_sweep_beta" / "results.csv"), "(EROFS)")  # the file, not its temporary
    assert snapshot(fs) == before
