"""A finished run is done only while every file it wrote is there, readable and as it wrote it (the checksums of
status.json): a damaged one is shown as damaged in the report (never a crash, never its numbers) and runs again on the
next study command."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import RunSpec
from dpo_ref.expdir import RunDir, read_run
from dpo_ref.store import seal

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world

SETS = ["objectives.0.betas=[0.1]", "train.max_steps=2", "eval.max_new_tokens=12"]
RUN = "dpo-sft-b0.1-s0"


@pytest.fixture(scope="module")
def finished(run_study, tmp_path_factory):
    """A finished two-run sweep (the SFT row and one DPO run) and its results.json."""
    out = tmp_path_factory.mktemp("finished")
    summary, _ = run_study("sweep-beta", out, *SETS, experiment="rq1_sweep_beta")
    return out / "rq1_sweep_beta", summary


def said(result) -> str:
    """What the command printed on stderr, with the console's line wrapping undone."""
    return " ".join(result.stderr.split())


def copy_of(finished, tmp_path):
    exp_dir = tmp_path / "rq1_sweep_beta"
    shutil.copytree(finished[0], exp_dir)
    return exp_dir


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def flip_last_byte(path):
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


DAMAGES = {  # what is done to the run's directory -> the reason the report must give
    "metrics truncated": (lambda d: truncate(d / "metrics.json"), "metrics.json unreadable (JSONDecodeError)"),
    "metrics deleted": (lambda d: (d / "metrics.json").unlink(), "metrics.json missing"),
    "metrics without eval": (
        lambda d: (d / "metrics.json").write_text('{"history": []}'),
        "metrics.json does not hold what a finished run writes",
    ),
    "generations truncated": (
        lambda d: truncate(d / "generations.jsonl"),
        "generations.jsonl unreadable (JSONDecodeError)",
    ),
    "generations lose their last line": (
        lambda d: (d / "generations.jsonl").write_text(
            "".join((d / "generations.jsonl").read_text().splitlines(keepends=True)[:-1])
        ),
        "generations.jsonl does not match its checksum in status.json",
    ),
    "model outputs deleted": (lambda d: (d / "model_outputs.json").unlink(), "model_outputs.json missing"),
    "policy weights changed": (
        lambda d: flip_last_byte(next((d / "policy").glob("*.safetensors"))),
        "policy/: model.safetensors changed",
    ),
    "policy config deleted": (lambda d: (d / "policy" / "config.json").unlink(), "policy/: config.json missing"),
    "status garbled": (lambda d: (d / "status.json").write_text("{"), "status.json unreadable (JSONDecodeError)"),
    "status edited": (  # a run made degenerate by hand: status.json holds the checksum of itself too
        lambda d: (d / "status.json").write_text((d / "status.json").read_text().replace('"done"', '"degenerate"')),
        "status.json does not match the checksum it records of itself",
    ),
    "metrics edited": (  # valid JSON of the same shape: only the checksum status.json recorded tells
        lambda d: (d / "metrics.json").write_text(
            (d / "metrics.json").read_text().replace('"win_rate": 0.', '"win_rate": 1.')
        ),
        "metrics.json does not match its checksum in status.json",
    ),
    "policy manifest sealed again": (  # a policy changed and its manifest rewritten to match: status.json still tells
        lambda d: (flip_last_byte(next((d / "policy").glob("*.safetensors"))), seal(d / "policy")),
        "policy/: .dporef-manifest.json does not match its checksum in status.json",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_the_report_shows_a_damaged_run_as_damaged(finished, tmp_path, damage):
    exp_dir = copy_of(finished, tmp_path)
    change, reason = DAMAGES[damage]
    change(exp_dir / RUN)
    spec = RunSpec.model_validate({"run_id": RUN, "objective": "dpo", "reference": "sft", "beta": 0.1, "seed": 0})
    assert read_run(RunDir(exp_dir / RUN), spec).state.reason == reason

    result = CliRunner().invoke(app, ["report", str(exp_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = {r["run_id"]: r for r in json.loads((exp_dir / "results.json").read_text())["rows"]}
    assert rows[RUN]["status"] == "damaged" and rows[RUN]["damage"] == reason
    assert rows[RUN]["win_rate"] is None and rows[RUN]["kl"] is None  # no numbers from a damaged run
    assert rows[RUN]["beta"] == 0.1  # its setting is still shown (from the experiment)
    want = {r["run_id"]: r for r in finished[1]["rows"]}
    assert rows["sft"] == want["sft"]  # the intact run is reported as before
    csv_row = next(line for line in (exp_dir / "results.csv").read_text().splitlines() if line.startswith(RUN))
    assert ",damaged," in csv_row and reason.split(" (")[0] in csv_row
    assert f"| {RUN} | 0.1 | damaged |" in (exp_dir / "results.md").read_text()


def test_a_damaged_run_runs_again_and_gives_the_same_result(finished, run_study, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    truncate(exp_dir / RUN / "metrics.json")
    summary, result = run_study("sweep-beta", tmp_path, *SETS, experiment="rq1_sweep_beta")
    assert f"damaged: {RUN}: metrics.json unreadable (JSONDecodeError); running it again" in said(result)
    assert "already done: sft" in said(result) and f"finished {RUN}: done" in said(result)
    assert [r["status"] for r in summary["rows"]] == ["done", "done"]
    original = json.loads((finished[0] / RUN / "metrics.json").read_text())
    again = json.loads((exp_dir / RUN / "metrics.json").read_text())
    assert again["eval"] == original["eval"]  # same seeds, same machine: the same floats as the first time
    assert (exp_dir / RUN / "generations.jsonl").read_text() == (finished[0] / RUN / "generations.jsonl").read_text()


def test_a_deleted_policy_makes_the_run_run_again(finished, run_study, tmp_path):
    exp_dir = copy_of(finished, tmp_path)
    shutil.rmtree(exp_dir / RUN / "policy")
    _, result = run_study("sweep-beta", tmp_path, *SETS, experiment="rq1_sweep_beta")
    assert f"damaged: {RUN}: policy/: no readable manifest; running it again" in said(result)
    assert (exp_dir / RUN / "policy" / "config.json").is_file()
