"""A run killed in mid-training (SIGTERM, what SLURM sends before pre-emption, or SIGKILL) resumes from its last
checkpoint when run again, to the result of an uninterrupted run: the same weights, losses and evaluation.

The killing is real: `dporef run-one` runs in a child process, which this test signals once a given checkpoint of
it is complete on disk."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import TINY_WORLD
from safetensors.torch import load_file
from typer.testing import CliRunner

from dpo_ref.cli import app

pytestmark = pytest.mark.slow

RUN = "dpo-sft-b0.1-s0"
BASE = ["objectives.0.betas=[0.1]", "train.max_steps=20", "eval.max_new_tokens=12"]
# checkpoints every 5 steps, logs every 3: a checkpoint step is logged only because checkpoint_steps makes it a
# logging step, which is what keeps the losses logged after a resume equal to an uninterrupted run's
PERIODIC = BASE + ["train.checkpoint_steps=5", "train.logging_steps=3"]
# with checkpoint choice: evaluation (and a checkpoint) every 4 steps, periodic full checkpoints every 6, logs every 5
WITH_EVAL = BASE + ["train.checkpoint_steps=6", "train.eval_steps=4", "train.logging_steps=5"]


def cli(*args: str, sets: list[str] | None = None):
    """`dporef ARGS`; a study command (with `sets`) on the tiny world."""
    overrides = [] if sets is None else [a for s in TINY_WORLD + sets for a in ("--set", s)]
    result = CliRunner().invoke(app, [*args, *overrides])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, cache_dir) -> dict:
    """Each setting's experiment, prepared once; a test runs a copy (`fresh`)."""
    dirs = {}
    for name, sets in (("periodic", PERIODIC), ("with_eval", WITH_EVAL)):
        out = tmp_path_factory.mktemp(f"prepared-{name}")
        cli("sweep-beta", "--out", str(out), "--prepare-only", sets=sets)
        dirs[name] = out / "rq1_sweep_beta"
    return dirs


def fresh(exp_dir, out):
    shutil.copytree(exp_dir, out / "rq1_sweep_beta")
    return out / "rq1_sweep_beta"


def checkpoints(run_dir) -> list[int]:
    """Steps of the complete checkpoints on disk: the Trainer writes trainer_state.json last."""

    def complete(ckpt) -> bool:
        try:
            return isinstance(json.loads((ckpt / "trainer_state.json").read_text()), dict)
        except (OSError, ValueError):
            return False

    return sorted(int(c.name.split("-")[1]) for c in (run_dir / "trainer").glob("checkpoint-*") if complete(c))


def kill_after_checkpoint(exp_dir, step: int, sig: int) -> tuple[int, str]:
    """Start `dporef run-one` in a child process, send it `sig` once checkpoint-`step` is complete on disk; its exit
    code and output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_ref", "run-one", str(exp_dir), RUN],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while step not in checkpoints(exp_dir / RUN):
        assert proc.poll() is None and time.time() < deadline, "the run ended before that checkpoint"
        time.sleep(0.005)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    return proc.returncode, output


def result(run_dir) -> tuple[dict, dict]:
    return json.loads((run_dir / "metrics.json").read_text()), load_file(run_dir / "policy" / "model.safetensors")


def assert_same_training(resumed_dir, uninterrupted_dir):
    (got, got_w), (want, want_w) = result(resumed_dir), result(uninterrupted_dir)
    assert got_w.keys() == want_w.keys()
    assert max(float((got_w[k] - want_w[k]).abs().max()) for k in want_w) <= 1e-6

    def losses(m):
        return [(h["step"], h.get("loss"), h.get("eval_loss")) for h in m["history"] if "train_loss" not in h]

    assert [s for s, *_ in losses(got)] == [s for s, *_ in losses(want)]
    for (_, loss, eval_loss), (_, want_loss, want_eval) in zip(losses(got), losses(want)):
        assert loss == pytest.approx(want_loss, abs=1e-6) and eval_loss == pytest.approx(want_eval, abs=1e-6)
    assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)  # the mean over all 20 steps
    assert got["steps"] == want["steps"] == 20 and got["checkpoint_step"] == want["checkpoint_step"]
    assert got["eval"] == pytest.approx(want["eval"], abs=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """Each setting's run done in one go, in this process."""
    runs = {}
    for name, prepared_dir in prepared.items():
        exp_dir = fresh(prepared_dir, tmp_path_factory.mktemp(f"uninterrupted-{name}"))
        cli("run-one", str(exp_dir), RUN)
        assert json.loads((exp_dir / RUN / "metrics.json").read_text())["resumed_from_step"] is None
        runs[name] = exp_dir / RUN
    return runs


@pytest.fixture(scope="module")
def terminated(prepared, tmp_path_factory):
    """A run sent SIGTERM after its first checkpoint, as it was left (a test changes a copy, `copy_of`)."""
    exp_dir = fresh(prepared["periodic"], tmp_path_factory.mktemp("terminated"))
    code, output = kill_after_checkpoint(exp_dir, 5, signal.SIGTERM)
    return exp_dir, code, output, checkpoints(exp_dir / RUN)


def copy_of(terminated, tmp_path):
    shutil.copytree(terminated[0], tmp_path / "exp")
    return tmp_path / "exp"


def test_sigterm_stops_the_run_and_says_how_to_resume(terminated):
    exp_dir, code, output, kept = terminated
    assert code == 143, output  # 128 + SIGTERM, as a shell reports it
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted: {RUN}; to resume, run the same command again, or `dporef run-one {exp_dir} {RUN}`"]
    assert "Traceback" not in output
    assert json.loads((exp_dir / RUN / "status.json").read_text())["status"] == "interrupted"
    assert kept and kept[0] >= 5 and not (exp_dir / RUN / "policy").exists()


def test_the_rerun_resumes_from_the_last_checkpoint(terminated, uninterrupted, tmp_path):
    exp_dir = copy_of(terminated, tmp_path)
    last = terminated[3][-1]
    rerun = cli("run-one", str(exp_dir), RUN)
    assert f"resuming {RUN} from its checkpoint at step {last}" in rerun.stderr
    metrics = json.loads((exp_dir / RUN / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == last
    assert json.loads((exp_dir / RUN / "status.json").read_text())["status"] == "done"
    assert not (exp_dir / RUN / "trainer").exists()  # the checkpoints go once the policy is saved
    assert_same_training(exp_dir / RUN, uninterrupted["periodic"])


def test_checkpoints_of_other_settings_are_not_resumed_from(terminated, uninterrupted, tmp_path):
    exp_dir = copy_of(terminated, tmp_path)
    run_yaml = exp_dir / RUN / "run.yaml"
    meta = yaml.safe_load(run_yaml.read_text())
    run_yaml.write_text(yaml.safe_dump({**meta, "config_hash": "another-config"}))  # as if its settings changed
    rerun = cli("run-one", str(exp_dir), RUN)
    assert "resuming" not in rerun.stderr
    assert json.loads((exp_dir / RUN / "metrics.json").read_text())["resumed_from_step"] is None
    assert_same_training(exp_dir / RUN, uninterrupted["periodic"])  # from step 0, to the same result


def test_after_sigkill_the_study_command_resumes_with_checkpoint_choice(prepared, uninterrupted, tmp_path):
    exp_dir = fresh(prepared["with_eval"], tmp_path)
    # checkpoint 8 is one of checkpoint choice (eval_steps), not a periodic one: resumable all the same
    code, output = kill_after_checkpoint(exp_dir, 8, signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert json.loads((exp_dir / RUN / "status.json").read_text())["status"] == "running"  # nothing could mark it
    last = checkpoints(exp_dir / RUN)[-1]  # all of them full: checkpoint_steps keeps the optimizer state
    rerun = cli("sweep-beta", "--out", str(tmp_path), sets=WITH_EVAL)  # the same command again
    assert "prepared inputs reused" in " ".join(rerun.stderr.split())
    assert f"resuming {RUN} from its checkpoint at step {last}" in rerun.stderr
    metrics = json.loads((exp_dir / RUN / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == last >= 8
    assert_same_training(exp_dir / RUN, uninterrupted["with_eval"])
    assert metrics["checkpoint_step"] in {h["step"] for h in metrics["history"] if "eval_loss" in h}
