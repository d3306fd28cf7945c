"""`dporef tune-beta` on the tiny world: trials are ordinary runs of `<name>_tune`, spread over the range first, the
best chosen by validation win rate read back from the run directories, a stopped tune resumed, and a trial that
lags the earlier ones at its validation check pruned."""

import json
import math

import optuna
import pytest
import torch
import yaml
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.evaluation.evaluate import validation_win_rate
from dpo_ref.expdir import ExperimentDir, Prepared
from dpo_ref.models import ModelRef, load_model, load_tokenizer
from dpo_ref.tune.study import storage

pytestmark = pytest.mark.slow

SETS = [*TINY_WORLD, "objectives.0.betas=[3,0.01]", "train.max_steps=6", "eval.max_new_tokens=12"]


def tune(out, *args: str, sets=SETS):
    overrides = [a for s in sets for a in ("--set", s)]
    return CliRunner().invoke(app, ["tune-beta", "--out", str(out), *args, *overrides])


def read(path):
    return json.loads(path.read_text())


def test_trials_are_ordinary_runs_and_the_best_is_chosen_on_validation(tmp_path):
    result = tune(tmp_path, "--budget", "4", "--checks", "1")
    assert result.exit_code == 0, result.output + repr(result.exception)
    exp_dir = tmp_path / "rq1_sweep_beta_tune"
    summary = read(exp_dir / "tune.json")
    betas = [t["beta"] for t in summary["trials"]]
    # the first three at 1/6, 1/2 and 5/6 of the log range 0.01 .. 3, to 3 significant digits
    spread = [float(f"{math.exp(math.log(0.01) + k * math.log(300)):.3g}") for k in (1 / 6, 1 / 2, 5 / 6)]
    assert len(betas) == 4 and betas[:3] == spread and 0.01 <= betas[3] <= 3
    grid = yaml.safe_load((exp_dir / "experiment.yaml").read_text())["objectives"][0]["betas"]
    assert sorted(grid) == sorted(set(betas))  # experiment.yaml lists the trials: every trial is a run of the grid
    outcomes = {}
    for t in summary["trials"]:
        status = read(exp_dir / t["run_id"] / "status.json")["status"]
        assert status in ("done", "stopped")  # stopped: by its pruner
        outcomes[t["run_id"]] = (status, read(exp_dir / t["run_id"] / "metrics.json")["eval"]["val_win_rate"])
    finished = {run_id: v for run_id, (status, v) in outcomes.items() if status == "done"}
    assert summary["best"]["run_id"] == max(finished, key=finished.get)
    assert summary["runs"] == len(outcomes) and summary["train_seconds"] > 0

    # the pruner's checks judge what selection judges: the final policy's check equals its val_win_rate
    prepared, best = Prepared.open(ExperimentDir(exp_dir)), summary["best"]["run_id"]
    policy = load_model(ModelRef(str(exp_dir / best / "policy"), str(exp_dir / best / "policy"), ""), torch.float32)
    check = validation_win_rate(policy, load_tokenizer(prepared.model("policy")), prepared.benchmark(), "check")
    assert check == pytest.approx(finished[best], abs=1e-9)

    assert CliRunner().invoke(app, ["report", str(exp_dir)]).exit_code == 0  # an ordinary results directory
    rows = read(exp_dir / "results.json")["rows"]
    assert {r["run_id"] for r in rows} == {"sft", *outcomes}

    again = tune(tmp_path, "--budget", "5", "--checks", "1")  # resumed with a larger budget: one run more
    assert again.exit_code == 0, again.output
    assert again.output.count("finished ") == 1 and "finished dpo-" in again.output  # the SFT row was done too
    assert len(read(exp_dir / "tune.json")["trials"]) == 5

    # a tune killed while trial 5 ran: the trial is left running in the journal, linked to its run, which never ended
    study = optuna.load_study(study_name="tune-beta", storage=storage(ExperimentDir(exp_dir)))
    stopped = study.ask({"beta": optuna.distributions.FloatDistribution(0.01, 3, log=True)})
    beta = float(f"{stopped.params['beta']:.3g}")
    links = read(exp_dir / "tune" / "trials.json")
    link = {"trial": stopped.number, "study": "tune-beta", "beta": beta, "repeats": []}
    links[f"dpo-sft-b{beta:g}-s0"] = link | {"check_steps": [3]}
    (exp_dir / "tune" / "trials.json").write_text(json.dumps(links))
    resumed = tune(tmp_path, "--budget", "6", "--checks", "1")  # the budget is spent once the stopped trial ends
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert resumed.output.count("finished ") == 1 and f"finished dpo-sft-b{beta:g}-s0" in resumed.output
    last = read(exp_dir / "tune.json")["trials"][5]
    assert last["beta"] == beta and last["state"] in ("complete", "pruned")


def test_a_trial_that_lags_at_its_check_is_pruned_and_never_best(tmp_path):
    exp_dir = tmp_path / "rq1_sweep_beta_tune"
    (exp_dir / "tune").mkdir(parents=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.create_study(
        study_name="tune-beta",
        storage=JournalStorage(JournalFileBackend(str(exp_dir / "tune" / "optuna.journal"))),
        direction="maximize",
    )
    beta = optuna.distributions.FloatDistribution(0.01, 3, log=True)
    for b in (0.1, 1.0):  # two earlier trials that won every validation prompt at the check (step 3 of 6)
        study.add_trial(
            optuna.trial.create_trial(
                params={"beta": b}, distributions={"beta": beta}, value=1.0, intermediate_values={3: 1.0}
            )
        )
    result = tune(tmp_path, "--budget", "3", "--checks", "1")
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = read(exp_dir / "tune.json")
    (trial,) = [t for t in summary["trials"] if t["run_id"]]
    assert trial["state"] == "pruned" and summary["best"] is None  # the injected trials have no run to be best
    metrics = read(exp_dir / trial["run_id"] / "metrics.json")
    assert metrics["stopped_at_step"] == 3 and metrics["steps"] == 3
    assert [c["step"] for c in trial["checks"]] == [3] and trial["checks"][0]["val_win_rate"] < 1
    assert read(exp_dir / trial["run_id"] / "status.json")["status"] == "stopped"
    # what the sampler learns from: GPSampler reads complete trials alone, so a pruned trial told as pruned left no
    # trace and its beta was proposed again; it is told at the validation win rate it was stopped at
    told = optuna.load_study(study_name="tune-beta", storage=storage(ExperimentDir(exp_dir))).trials[trial["trial"]]
    assert told.state == optuna.trial.TrialState.COMPLETE and told.value == trial["checks"][0]["val_win_rate"]


def test_a_budget_smaller_than_the_spread_trials_runs_that_many(tmp_path):
    """The three spread trials are queued before any runs: a budget of 2 runs two of them (it ran none before)."""
    result = tune(tmp_path, "--budget", "2")
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = read(tmp_path / "rq1_sweep_beta_tune" / "tune.json")
    spread = [float(f"{math.exp(math.log(0.01) + k * math.log(300)):.3g}") for k in (1 / 6, 1 / 2)]
    assert [t["beta"] for t in summary["trials"] if t["run_id"]] == spread and summary["runs"] == 2


@pytest.mark.parametrize(
    "sets, says",
    [
        (["objectives.0.betas=[0.1]"], "objectives.0.betas: give the range to search as two betas or more"),
        (["seeds=[0,1]"], "seeds: tune-beta tunes on one seed"),
        (["launch.launcher=slurm"], "launch.launcher: tune-beta picks each trial from the earlier ones"),
    ],
)
def test_what_it_cannot_tune_is_refused_in_one_line(tmp_path, sets, says):
    result = tune(tmp_path, "--budget", "2", sets=[*TINY_WORLD, *sets])
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
