"""`dporef sweep-beta` end to end on a tiny world: files, resume, one reference pass, loss ln 2 at step 1."""

import json
import math
import shutil

import pytest

from dpo_ref.reporting.tables import COLUMNS

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world

SHORT = ["objectives.0.betas=[0.1,0.01]", "train.max_steps=6", "train.logging_steps=1", "eval.max_new_tokens=20"]


@pytest.fixture(scope="module")
def sweep(run_study):
    def run(out, *extra):
        return run_study("sweep-beta", out, *SHORT, *extra, experiment="rq1_sweep_beta")[1]

    return run


@pytest.fixture(scope="module")
def first(tmp_path_factory, sweep):
    out = tmp_path_factory.mktemp("runs")
    return out, sweep(out)


def results(out):
    return json.loads((out / "rq1_sweep_beta" / "results.json").read_text())


def test_sweep_writes_every_file(first):
    out, result = first
    exp = out / "rq1_sweep_beta"
    for name in ("results.csv", "results.md", "results.json", "results.png", "experiment.yaml"):
        assert (exp / name).is_file(), name
    header = (exp / "results.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS
    rows = results(out)["rows"]
    assert [r["run_id"] for r in rows] == ["sft", "dpo-sft-b0.1-s0", "dpo-sft-b0.01-s0"]
    for row in rows:
        run = exp / row["run_id"]
        assert row["status"] == "done"
        for name in ("run.yaml", "status.json", "metrics.json", "generations.jsonl"):
            assert (run / name).is_file(), (row["run_id"], name)
        assert 0 <= row["win_rate"] <= 1 and 0 <= row["eos_rate"] <= 1 and row["length"] > 0
        assert len((run / "generations.jsonl").read_text().splitlines()) == 24
    assert (exp / "dpo-sft-b0.1-s0" / "policy" / "config.json").is_file()
    sft = rows[0]
    assert sft["kl"] == 0 and sft["rank_acc_reward"] == 0.5  # the SFT row is its own reference: r = 0
    assert "rq1_sweep_beta" in result.stdout and "win_rate" in result.stdout


def test_one_reference_pass_serves_the_whole_sweep(first, sweep, tmp_path):
    out, _ = first
    # two betas, one pass (computed now, or earlier in this test session by another test of the same world)
    scoring = results(out)["reference_scoring"]
    assert scoring["computed"] + scoring["from_cache"] == 1
    # a fresh results directory with the same cache scores nothing again
    sweep(tmp_path, "objectives.0.betas=[0.1]")
    assert results(tmp_path)["reference_scoring"] == {"computed": 0, "from_cache": 1}


def test_step_one_loss_is_ln2_and_rewards_zero(first):
    out, _ = first
    history = json.loads((out / "rq1_sweep_beta" / "dpo-sft-b0.01-s0" / "metrics.json").read_text())["history"]
    step1 = history[0]
    assert step1["step"] == 1
    assert round(step1["loss"], 4) == round(math.log(2), 4) == 0.6931
    assert abs(step1["rewards/chosen"]) < 1e-6 and abs(step1["rewards/rejected"]) < 1e-6
    assert history[-1]["step"] == 6


def test_second_run_skips_finished_runs_and_resumes_interrupted_one(first, sweep):
    out, _ = first
    exp = out / "rq1_sweep_beta"
    again = sweep(out)
    assert again.stderr.count("already done: ") == 3
    assert results(out)["reference_scoring"] == {"computed": 0, "from_cache": 0}

    # simulate a crash mid-run: status left at "running", metrics missing
    victim = exp / "dpo-sft-b0.01-s0"
    (victim / "status.json").write_text(json.dumps({"status": "running"}))
    (victim / "metrics.json").unlink()
    shutil.rmtree(victim / "policy")
    resumed = sweep(out)
    assert resumed.stderr.count("already done: ") == 2
    assert json.loads((victim / "status.json").read_text())["status"] == "done"
    assert (victim / "metrics.json").is_file() and (victim / "policy" / "config.json").is_file()
    # the prepared inputs (tokenized pairs with reference columns) are read back: nothing is scored again
    assert results(out)["prepared"] == "reused"
    assert results(out)["reference_scoring"] == {"computed": 0, "from_cache": 0}


def test_changed_config_reruns_affected_runs(first, sweep):
    out, _ = first
    rerun = sweep(out, "train.learning_rate=1e-3")
    # a training setting invalidates the trained runs, not the untrained SFT row, nor the prepared inputs
    assert rerun.stderr.count("already done: ") == 1 and "already done: sft" in rerun.stderr
    assert results(out)["prepared"] == "reused"


def test_prepared_inputs_are_rebuilt_when_what_they_hold_changes(sweep, tmp_path):
    sweep(tmp_path, "objectives.0.betas=[0.1]")
    assert results(tmp_path)["prepared"] == "built"
    plan = tmp_path / "rq1_sweep_beta" / "prepared" / "plan.json"
    assert json.loads(plan.read_text())["tokenization"]["truncated"] == {"train": 0, "validation": 0}
    # a shorter max_length changes the tokenized pairs and the reference scores: prepared again, runs again
    rerun = sweep(tmp_path, "objectives.0.betas=[0.1]", "train.max_length=16")
    assert results(tmp_path)["prepared"] == "built" and "already done: " not in rerun.stderr
    truncated = json.loads(plan.read_text())["tokenization"]["truncated"]
    assert truncated["train"] > 0 and truncated["validation"] > 0


def test_checkpoint_choice_keeps_the_lowest_validation_loss(sweep, tmp_path):
    sweep(tmp_path, "objectives.0.betas=[0.5]", "train.eval_steps=2", "train.learning_rate=3e-3")
    run = tmp_path / "rq1_sweep_beta" / "dpo-sft-b0.5-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    evals = {h["step"]: h["eval_loss"] for h in metrics["history"] if "eval_loss" in h}
    assert sorted(evals) == [2, 4, 6]
    assert metrics["checkpoint_step"] == min(evals, key=evals.get)
    assert (run / "policy" / "config.json").is_file() and not (run / "trainer").exists()
