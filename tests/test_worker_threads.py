"""The local launcher's CPU workers split the machine's cores: each child's torch gets cores // workers threads
(at least one), unless the user set OMP_NUM_THREADS or MKL_NUM_THREADS, which are kept."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import RunSpec
from dpo_ref.expdir import ExperimentDir
from dpo_ref.launch import local

CORES = len(os.sched_getaffinity(0))
# what a child sees: the variables it inherited and the threads torch took from them
SNIPPET = """import json, os, sys, torch
json.dump({"omp": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()}, open(sys.argv[1], "w"))"""


def children_see(tmp_path: Path, slots: int, runs: int) -> list[dict]:
    """Start `runs` children on a launcher of `slots` CPU workers; what each saw."""
    seen = tmp_path / "seen"
    seen.mkdir()
    procs = local.Processes(
        ExperimentDir(tmp_path / "exp"),
        [str(i) for i in range(slots)],
        pinned=False,
        command=lambda exp_dir, run: [sys.executable, "-c", SNIPPET, str(seen / f"{run.run_id}.json")],
    )
    pending = [RunSpec(run_id=f"r{i}", objective="sft", reference=None, beta=None, seed=0) for i in range(runs)]
    local.execute(procs, pending)  # "failed" each: no run wrote a status, which is not what is tested here
    return [json.loads((seen / f"{run.run_id}.json").read_text()) for run in pending]


def workers_see(tmp_path: Path, workers: int, runs: int) -> list[dict]:
    """Start the CPU workers of a launcher with `workers` for `runs` runs; what each worker process saw."""
    seen = tmp_path / "seen"
    seen.mkdir()
    pending = [RunSpec(run_id=f"r{i}", objective="sft", reference=None, beta=None, seed=0) for i in range(runs)]
    group = local.Workers(
        ExperimentDir(tmp_path / "exp"),
        pending,
        workers,
        command=lambda exp_dir, order: [sys.executable, "-c", SNIPPET, str(seen / f"{order[0].run_id}.json")],
    )
    local.run_workers(group)  # "failed" each: no run wrote a status, which is not what is tested here
    return [json.loads(p.read_text()) for p in sorted(seen.iterdir())]


def test_cpu_workers_share_the_cores(tmp_path, no_thread_settings):
    want = max(1, CORES // 2)
    assert workers_see(tmp_path, workers=2, runs=4) == [{"omp": str(want), "torch": want}] * 2


def test_no_more_cpu_workers_than_runs(tmp_path, no_thread_settings):
    """Three workers asked for, two runs: two workers, each with half the cores."""
    want = max(1, CORES // 2)
    assert workers_see(tmp_path, workers=3, runs=2) == [{"omp": str(want), "torch": want}] * 2


@pytest.fixture
def no_thread_settings(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)


def test_two_workers_share_the_cores(tmp_path, no_thread_settings):
    want = max(1, CORES // 2)
    assert children_see(tmp_path, slots=2, runs=2) == [{"omp": str(want), "torch": want}] * 2


def test_more_workers_than_cores_get_one_thread_each(tmp_path, no_thread_settings):
    assert children_see(tmp_path, slots=CORES + 1, runs=1) == [{"omp": "1", "torch": 1}]


def test_a_users_thread_setting_is_kept_and_said(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one worker alone would get every core
    assert children_see(tmp_path, slots=1, runs=1) == [{"omp": "1", "torch": 1}]
    assert "OMP_NUM_THREADS=1" in local.Processes(ExperimentDir(tmp_path), ["0"], pinned=False).threads


def test_the_dry_run_says_the_threads_of_each_worker(tmp_path, no_thread_settings):
    sets = [*TINY_WORLD, "objectives.0.betas=[0.1]", "launch.workers=2"]
    result = CliRunner().invoke(
        app, ["sweep-beta", "--dry-run", "--out", str(tmp_path), *[a for s in sets for a in ("--set", s)]]
    )
    assert result.exit_code == 0, result.output
    want = max(1, CORES // 2)
    said = " ".join(result.stdout.split())  # the console's line wrapping undone
    assert "2 `run-one` worker processes sharing the pending runs" in said
    assert f"{want} torch thread{'s' if want > 1 else ''} each ({CORES} cores)" in said


# A stand-in worker: for each run it is given, status.json says running, then done (what run-one writes first and last)
FAKE_WORKER = """import json, sys, time, pathlib
for run_id in sys.argv[2:]:
    status = pathlib.Path(sys.argv[1]) / run_id / "status.json"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps({"status": "running"}))
    time.sleep(1.2)
    status.write_text(json.dumps({"status": "done"}))"""


def test_a_runs_earlier_failed_attempt_is_not_reported_as_news(tmp_path, capsys):
    """A run that failed in an earlier command is pending again: the launcher says it started and finished now, not
    that it 'finished: failed' before any worker touched it."""
    exp_dir = ExperimentDir(tmp_path / "exp")
    (tmp_path / "exp" / "r0").mkdir(parents=True)
    (tmp_path / "exp" / "r0" / "status.json").write_text(json.dumps({"status": "failed", "error": "earlier"}))
    pending = [RunSpec(run_id="r0", objective="sft", reference=None, beta=None, seed=0)]
    group = local.Workers(
        exp_dir, pending, 1, command=lambda d, order: [sys.executable, "-c", FAKE_WORKER, str(d.root), "r0"]
    )
    assert local.run_workers(group) == 0
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "r0" in line]
    assert [line.split(";")[0].split(" in ")[0] for line in lines] == ["started r0", "finished r0: done"], lines
