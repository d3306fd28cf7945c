"""Launchers decide where each run's `run-one` executes, never what it computes: two local worker processes and
SLURM jobs (through submitit's local executor) give the metrics of the in-process sweep, the workers overlap in time
but never exceed their number, a failed run leaves the others running, a rerun submits only what is not done, and
`--dry-run` shows the processes or jobs without writing anything."""

import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import SlurmConfig, expand, load_experiment

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "experiments" / "paper" / "rq1_sweep_beta_mistral.yaml"
SHORT = ["objectives.0.betas=[0.1,0.05,0.01]", "train.max_steps=2", "eval.max_new_tokens=12"]
RUNS = ["sft", "dpo-sft-b0.1-s0", "dpo-sft-b0.05-s0", "dpo-sft-b0.01-s0"]


def cli(*args: str, sets=SHORT):
    pairs = [a for s in TINY_WORLD + list(sets) for a in ("--set", s)]
    return CliRunner().invoke(app, [*args, *pairs])


def said(text: str) -> str:
    return " ".join(text.split())  # the console's line wrapping undone


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    "sets, where, message",
    [
        (
            ["launch.launcher=ssh"],
            "--set launch.launcher=ssh",
            "unknown launcher 'ssh'; available: local, accelerate, slurm",
        ),
        (["launch.gpus=[0,1]", "launch.workers=2"], ": launch", "set `gpus` (one process per GPU) or `workers`"),
        (["launch.gpus=[0,0]"], "--set launch.gpus=[0,0]", "GPU ids are distinct integers >= 0"),
        (["launch.slurm.nodes=2"], "--set launch.slurm.nodes=2", "run-one uses one node"),
        (
            ["launch.slurm.extra={dependency: afterok:1}"],
            "--set launch.slurm.extra={dependency: afterok:1}",
            "'dependency' is set by dporef",
        ),
        (['launch.slurm.extra={qos: "a\\nb"}'], '--set launch.slurm.extra={qos: "a\\nb"}', "holds a line break"),
    ],
)
def test_bad_launch_settings_are_refused_in_one_line(tmp_path, sets, where, message):
    result = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), sets=sets)  # refused before the dry run
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    # the location is the --set that gave the bad value (or, for two that clash, the key they share)
    assert line.startswith("error: ") and f"{where}: " in line and message in line, line


def test_the_launcher_flag_overrides_the_yaml(tmp_path):
    flag = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), "--launcher", "local", sets=["launch.launcher=slurm"])
    assert flag.exit_code == 0, flag.output
    assert "#SBATCH" not in flag.stdout and "launcher slurm" not in flag.stdout


def test_local_dry_run_shows_the_processes_with_their_gpus(tmp_path):
    exp_dir = tmp_path / "rq1_sweep_beta"
    workers = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), sets=SHORT + ["launch.workers=2"])
    assert workers.exit_code == 0, workers.output
    lines = [
        line.split(" run-one ")[1].split() for line in workers.stdout.splitlines() if " -m dpo_ref run-one " in line
    ]
    # two workers, each given every pending run (then --log-each), the second starting at its half of the grid
    assert [line[1:-1] for line in lines] == [RUNS, RUNS[2:] + RUNS[:2]] and {line[-1] for line in lines} == {
        "--log-each"
    }
    assert "2 `run-one` worker processes" in said(workers.stdout) and "CUDA_VISIBLE_DEVICES" not in workers.stdout
    gpus = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), sets=SHORT + ["launch.gpus=[3,5]"])
    assert gpus.exit_code == 0, gpus.output
    pins = re.findall(r"CUDA_VISIBLE_DEVICES=(\S+) \S+ -m dpo_ref run-one \S+ (\S+)", gpus.stdout)
    assert pins == [("3", "sft"), ("5", "dpo-sft-b0.1-s0"), ("<free>", "dpo-sft-b0.05-s0"), ("<free>", RUNS[3])]
    assert not exp_dir.exists()


def sbatch_options(script: str) -> dict[str, str]:
    """`#SBATCH --key=value` lines as a mapping (a bare flag maps to True), shell quotes removed."""
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value.strip("'") if value else True
    return options


def dry_run_stages(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """A slurm dry run's stages: {stage: (its size, its `key: value` parameter lines as a mapping)}."""
    parts = re.split(r"^--- (prepare|run|report): (.+) ---$", text, flags=re.M)
    return {
        stage: (size, dict(re.findall(r"^(\w+): (.*)$", body, flags=re.M)))
        for stage, size, body in zip(parts[1::3], parts[2::3], parts[3::3])
    }


def test_slurm_dry_run_of_a_paper_experiment_prints_the_parameters_and_touches_nothing(tmp_path, cache_dir):
    exp = load_experiment(PAPER)
    cache_before = files_under(cache_dir)
    result = CliRunner().invoke(
        app, ["sweep-beta", str(PAPER), "--dry-run", "--launcher", "slurm", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path) == [] and files_under(cache_dir) == cache_before  # nothing written or downloaded
    text = result.stdout
    out_dir = tmp_path / exp.name / "slurm"
    assert "SlurmExecutor.update_parameters (not the literal sbatch scripts" in said(text)  # what it shows, honestly
    assert f"logs in {out_dir}:" in said(text) and "#SBATCH" not in text
    stages = dry_run_stages(text)
    assert list(stages) == ["prepare", "run", "report"]
    (_, prep), (size, runs), (_, report) = stages.values()
    cfg = exp.launch.slurm
    assert prep["gpus_per_node"] == "1" and runs["gpus_per_node"] == "8"  # the paper's prepare / run GPUs
    for params in (prep, runs):
        assert params["time"] == "2880" and params["mem"] == "512GB" and params["cpus_per_task"] == "32"
        assert ast.literal_eval(params["additional_parameters"])["requeue"] is True  # pre-empted jobs requeue
    assert ast.literal_eval(runs["additional_parameters"])["kill-on-invalid-dep"] == "yes"
    n_runs = len(exp.objectives[0].betas) + 1  # and the SFT row
    assert size == f"a job array of {n_runs} tasks, at most {min(n_runs, cfg.array_parallelism)} at once"
    assert runs["array_parallelism"] == str(cfg.array_parallelism) and stages["prepare"][0] == "1 job"
    assert runs["dependency"] == "afterok:<prepare job>" and report["dependency"] == "afterany:<runs array>"
    assert "gpus_per_node" not in report and "dependency" not in prep
    assert {p["job_name"] for p in (prep, runs, report)} == {f"dporef-{exp.name}-{s}" for s in stages}
    tasks = re.findall(r"^# task (\d+): .*?run-one (\S+) (\S+) --wait$", text, flags=re.M)
    assert [(int(i), run_id) for i, _, run_id in tasks] == list(enumerate(r.run_id for r in expand(exp)))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, cache_dir):
    """The 4-run sweep run in the command's own process, one run after another: what launchers must reproduce."""
    out = tmp_path_factory.mktemp("in-process")
    result = cli("sweep-beta", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out / "rq1_sweep_beta"


def same_results(exp_dir: Path, want: Path) -> None:
    for run_id in RUNS:
        got = json.loads((exp_dir / run_id / "metrics.json").read_text())
        expected = json.loads((want / run_id / "metrics.json").read_text())
        assert got["eval"] == expected["eval"], run_id  # same machine, same seeds: the same floats
        assert json.loads((exp_dir / run_id / "status.json").read_text())["status"] == "done"
    assert [r["status"] for r in json.loads((exp_dir / "results.json").read_text())["rows"]] == ["done"] * len(RUNS)


def intervals(exp_dir: Path) -> dict[str, tuple[float, float]]:
    """(start, end) of each run from its own files: run.yaml is written as a run starts, status.json's `finished`
    as it ends."""
    return {
        r: (
            (exp_dir / r / "run.yaml").stat().st_mtime,
            json.loads((exp_dir / r / "status.json").read_text())["finished"],
        )
        for r in RUNS
    }


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


@pytest.mark.slow
def test_two_local_workers_equal_one_and_overlap(in_process, tmp_path, monkeypatch):
    # the in-process runs' torch threads: workers split the cores otherwise, and another thread count sums floats in
    # another order (KL differs in the 7th digit)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    result = cli("sweep-beta", "--out", str(tmp_path), sets=SHORT + ["launch.workers=2"])
    assert result.exit_code == 0, result.output
    exp_dir = tmp_path / "rq1_sweep_beta"
    same_results(exp_dir, in_process)
    spans = intervals(exp_dir)
    overlaps = [
        min(spans[a][1], spans[b][1]) - max(spans[a][0], spans[b][0]) for i, a in enumerate(RUNS) for b in RUNS[i + 1 :]
    ]
    t0 = min(start for start, _ in spans.values())
    shown = ", ".join(f"{r} {s - t0:.1f}-{e - t0:.1f}s" for r, (s, e) in spans.items())
    print(f"\nrun intervals: {shown}; longest overlap of two runs {max(overlaps):.1f}s")
    assert max(overlaps) > 0  # two runs executed at the same time ...
    assert most_at_once(list(spans.values())) == 2  # ... and never more than the two workers
    for run_id in RUNS:
        log = exp_dir / "logs" / f"{run_id}.log"
        assert f"finished {run_id}: done" in log.read_text()
        assert f"output in {log}" in said(result.stderr)


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others(tmp_path):
    exp_dir = tmp_path / "rq1_sweep_beta"
    exp_dir.mkdir()
    (exp_dir / "sft").write_text("a file where the run's directory goes: the run cannot start")
    result = cli(
        "sweep-beta", "--out", str(tmp_path), sets=["objectives.0.betas=[0.1]", *SHORT[1:], "launch.workers=2"]
    )
    assert result.exit_code == 1, result.output  # a run failed
    assert "failed: sft: error: sft: " in said(result.stderr)  # the reason, from the run's log
    assert json.loads((exp_dir / "dpo-sft-b0.1-s0" / "status.json").read_text())["status"] == "done"
    rows = {r["run_id"]: r["status"] for r in json.loads((exp_dir / "results.json").read_text())["rows"]}
    assert rows["dpo-sft-b0.1-s0"] == "done" and rows["sft"] != "done"


@pytest.mark.slow
def test_slurm_through_submitits_local_executor(in_process, tmp_path):
    sets = SHORT + ["launch.slurm.cluster=local"]
    result = cli("sweep-beta", "--out", str(tmp_path), "--launcher", "slurm", sets=sets)
    assert result.exit_code == 0, result.output
    exp_dir = tmp_path / "rq1_sweep_beta"
    same_results(exp_dir, in_process)
    jobs = exp_dir / "slurm"
    submitted = sorted(jobs.glob("*_submitted.pkl"))
    assert len(submitted) == 1 + len(RUNS) + 1  # prepare, one task per run, report
    logs = "".join(p.read_text() for p in jobs.glob("*_log.out"))
    assert logs.count("Job completed successfully") == len(submitted)
    for run_id in RUNS:
        assert f"finished {run_id}: done" in logs
    assert yaml.safe_load((exp_dir / "experiment.yaml").read_text())["launch"]["launcher"] == "slurm"

    again = cli("sweep-beta", "--out", str(tmp_path), "--launcher", "slurm", sets=sets)
    assert again.exit_code == 0, again.output
    assert "nothing submitted" in said(again.stderr)
    assert sorted(jobs.glob("*_submitted.pkl")) == submitted  # no job at all

    shutil.rmtree(exp_dir / RUNS[2])  # one run lost: only it would be submitted again
    plan = cli("sweep-beta", "--out", str(tmp_path), "--launcher", "slurm", "--dry-run", sets=sets)
    assert plan.exit_code == 0, plan.output
    assert "1 runs pending" in plan.stdout and dry_run_stages(plan.stdout)["run"][0] == "1 job"  # no array
    assert re.findall(r"^# task \d+: dporef run-one \S+ (\S+)$", plan.stdout, flags=re.M) == [RUNS[2]]


FAKE_SBATCH = """#!/bin/sh
# records each script it is given and answers as sbatch does; exits 1 when the script names partition `nope`
if grep -q -- '--partition=nope' "$1"; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi
n=$(( $(ls "$RECORD" | wc -l) + 101 ))
cp "$1" "$RECORD/$n.sh"
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` and `srun` on PATH that submit nothing: the scripts sbatch was given, by job id (101, 102, ...)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    return record


@pytest.mark.slow  # builds the tiny world (the inputs are checked before anything is submitted)
def test_slurm_submits_prepare_then_the_array_then_the_report(fake_slurm, tmp_path, tiny_world):
    out = tmp_path / "out"
    result = cli("sweep-beta", "--out", str(out), "--launcher", "slurm")
    assert result.exit_code == 0, result.output
    scripts = {p.stem: sbatch_options(p.read_text()) for p in fake_slurm.glob("*.sh")}
    assert sorted(scripts) == ["101", "102", "103"]
    prep, runs, report = scripts["101"], scripts["102"], scripts["103"]
    assert "dependency" not in prep and "array" not in prep
    assert runs["dependency"] == "afterok:101" and runs["array"] == f"0-{len(RUNS) - 1}%{len(RUNS)}"
    assert runs["kill-on-invalid-dep"] == "yes" and report["dependency"] == "afterany:102"
    for run_id in RUNS:
        assert f"run {run_id}: job 102_{RUNS.index(run_id)}" in said(result.stderr)
        assert not (out / "rq1_sweep_beta" / run_id).exists()  # nothing ran here: the jobs will


@pytest.mark.slow  # builds the tiny world
def test_slurm_submits_the_runs_against_a_trained_reference_after_the_run_that_trains_it(
    fake_slurm, tmp_path, tiny_world
):
    guide = "{name: guide, kind: trained, run: dpo-sft-b0.1-s0}"
    sets = [f"references=[{{name: sft, model: world:sft}}, {guide}]", "objectives=[{name: dpo, betas: [0.1, 1]}]"]
    result = cli("swap-reference", "--out", str(tmp_path / "out"), "--launcher", "slurm", sets=sets)
    assert result.exit_code == 0, result.output
    scripts = {p.stem: sbatch_options(p.read_text()) for p in fake_slurm.glob("*.sh")}
    assert sorted(scripts) == ["101", "102", "103", "104"]  # prepare, two run arrays, report
    first, second, report = scripts["102"], scripts["103"], scripts["104"]
    assert first["dependency"] == "afterok:101" and first["array"] == "0-2%3"  # sft and the two runs against sft
    assert second["dependency"] == "afterany:102" and second["array"] == "0-1%2"  # the two against the guide
    assert report["dependency"] == "afterany:103"
    for job, run_id in (("102_1", "dpo-sft-b0.1-s0"), ("103_0", "dpo-guide-b0.1-s0"), ("103_1", "dpo-guide-b1-s0")):
        assert f"run {run_id}: job {job}" in said(result.stderr)


@pytest.mark.slow  # builds the tiny world
def test_an_sbatch_refusal_is_one_line(fake_slurm, tmp_path, tiny_world):
    result = cli(
        "sweep-beta", "--out", str(tmp_path), "--launcher", "slurm", sets=SHORT + ["launch.slurm.partition=nope"]
    )
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in result.output
    assert "launch.slurm: sbatch refused the prepare job: " in line and "invalid partition specified: nope" in line
    assert list(fake_slurm.iterdir()) == []


@pytest.mark.parametrize(("gb", "want"), [(64, "64GB"), (64.0, "64GB"), (1.5, "1536MB"), (0.25, "256MB")])
def test_slurm_mem_is_whole_gb_else_mb(gb, want):
    from dpo_ref.launch import slurm

    assert slurm.mem(gb) == want
    assert slurm.parameters(SlurmConfig(mem_gb=gb), "x", "run")["mem"] == want
    assert "mem" not in slurm.parameters(SlurmConfig(), "x", "run")  # unset: the cluster's default


def test_slurm_parameters_are_what_submitits_public_api_accepts(fake_slurm, tmp_path):
    """Every stage's parameters go through submitit's public `SlurmExecutor.update_parameters` (which rejects an
    unknown name or a bad value); a fake `srun` on PATH lets the executor be built without SLURM."""
    import submitit

    from dpo_ref.launch import slurm

    cfg = SlurmConfig(partition="gpu", account="lab", mem_gb=1.5, extra={"qos": "normal"})
    for stage, dependency in (("prepare", None), ("run", "afterok:101"), ("report", "afterany:102")):
        params = slurm.parameters(cfg, "x", stage) | ({"dependency": dependency} if dependency else {})
        submitit.SlurmExecutor(folder=tmp_path / "jobs").update_parameters(**params)
        assert params["mem"] == "1536MB" and params["additional_parameters"]["qos"] == "normal"
