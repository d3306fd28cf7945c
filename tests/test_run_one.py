"""Prepare once, run anywhere: `--prepare-only`, then `dporef run-one` in two processes at once, equal to the runs
of an ordinary in-process sweep of the same experiment."""

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app

pytestmark = pytest.mark.slow

SHORT = ["objectives.0.betas=[0.1,0.01]", "train.max_steps=6", "train.logging_steps=1", "eval.max_new_tokens=20"]
RUNS = ["dpo-sft-b0.1-s0", "dpo-sft-b0.01-s0"]


def cli(*args: str):
    sets = [a for s in TINY_WORLD + SHORT for a in ("--set", s)]
    return CliRunner().invoke(app, [*args, *sets])


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("in-process")
    result = cli("sweep-beta", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out / "rq1_sweep_beta"


def run_one(exp_dir, run_id) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_ref", "run-one", str(exp_dir), run_id],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_prepared_runs_in_two_processes_equal_an_in_process_sweep(in_process, tmp_path):
    prepared = cli("sweep-beta", "--out", str(tmp_path), "--prepare-only")
    assert prepared.exit_code == 0, prepared.output
    exp_dir = tmp_path / "rq1_sweep_beta"
    for run_id in ["sft", *RUNS]:
        assert f"dporef run-one {exp_dir} {run_id}" in prepared.stdout
        assert not (exp_dir / run_id).exists()  # prepare trains nothing
    assert (exp_dir / "prepared" / "plan.json").is_file() and (exp_dir / "baseline" / "test.jsonl").is_file()

    procs = [run_one(exp_dir, run_id) for run_id in RUNS]  # both at once, on one prepared directory
    for proc in procs:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output
    for run_id in RUNS:
        got = json.loads((exp_dir / run_id / "metrics.json").read_text())
        want = json.loads((in_process / run_id / "metrics.json").read_text())
        assert got["eval"] == want["eval"], run_id  # same machine, same seeds: the same floats
        assert [h["loss"] for h in got["history"] if "loss" in h] == [h["loss"] for h in want["history"] if "loss" in h]
        assert (exp_dir / run_id / "generations.jsonl").read_text() == (
            in_process / run_id / "generations.jsonl"
        ).read_text()
        assert json.loads((exp_dir / run_id / "status.json").read_text())["status"] == "done"

    # the study command then finds them done and only runs the SFT row; the report has all three
    finish = cli("sweep-beta", "--out", str(tmp_path))
    assert finish.exit_code == 0, finish.output
    assert finish.stderr.count("already done: ") == 2
    rows = json.loads((exp_dir / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done", "done", "done"]


def test_run_one_refuses_unknown_runs_and_unprepared_directories(in_process, tmp_path):
    unknown = CliRunner().invoke(app, ["run-one", str(in_process), "dpo-sft-b7-s0"])
    assert unknown.exit_code == 2
    assert "no run 'dpo-sft-b7-s0' in experiment rq1_sweep_beta; runs: sft, dpo-sft-b0.1-s0" in unknown.stderr
    empty = CliRunner().invoke(app, ["run-one", str(tmp_path), "sft"])
    assert empty.exit_code == 2 and "not a prepared experiment" in empty.stderr
