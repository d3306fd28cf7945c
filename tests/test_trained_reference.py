"""`kind: trained` (Pre-DPO's guiding reference): the policy another run of the experiment trains, scored once that
run is done and used by the runs of a later wave; refused in one line where it cannot be."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_WORLD, one_line_error
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import find_run, load_experiment
from dpo_ref.errors import UserError
from dpo_ref.expdir import run_hash

ROOT = Path(__file__).resolve().parent.parent
RQ3 = ROOT / "experiments/rq3_swap_reference/default.yaml"
SFT = "{name: sft, model: world:sft}"


@pytest.mark.parametrize(
    "guide, says",
    [
        ("{name: guide, kind: trained}", "kind: trained needs `run`"),
        ("{name: guide, kind: trained, run: dpo-sft-b0.1-s0, model: world:sft}", "a trained reference names no"),
        ("{name: guide, kind: trained, run: dpo-sft-b7-s0}", "'dpo-sft-b7-s0' is not a trained run of this grid"),
        ("{name: guide, kind: trained, run: sft}", "'sft' is not a trained run"),  # the untrained SFT row
        ("{name: guide, kind: trained, run: dpo-guide-b0.1-s0}", "itself a trained reference"),
        ("{name: guide, kind: trained, run: dpo-sft-b0.1-s0, sync_steps: 3}", "not read by kind: trained"),
        ("{name: guide, model: world:sft, run: dpo-sft-b0.1-s0}", "`run`: read by kind: trained only"),
    ],
)
def test_a_trained_reference_that_cannot_be_is_refused(guide, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(")) as e:
        load_experiment(RQ3, [f"references=[{SFT}, {guide}]", "objectives=[{name: dpo, betas: [0.1]}]"])
    assert "references.1" in e.value.where


def test_the_dependent_run_is_a_new_run_when_the_run_it_names_changes():
    """The guide's identity is the hash of the run that trains it: a setting of that run alone (not of the runs
    against it) changes the hash of every run against its policy."""
    models = {"policy": {"fingerprint": "p"}, "references": {"sft": {"fingerprint": "s"}}, "judge": None}

    def hashes(smoothing: float) -> tuple[str, str]:
        first = f"{{name: robust, label: first, label_smoothing: {smoothing}, betas: [0.1], references: [sft]}}"
        grids = f"objectives=[{first}, {{name: dpo, betas: [0.1], references: [guide]}}]"
        guide = "{name: guide, kind: trained, run: first-sft-b0.1-s0}"
        exp = load_experiment(RQ3, [f"references=[{SFT}, {guide}]", grids])
        return tuple(
            run_hash(exp, find_run(exp, r, "test"), models) for r in ("first-sft-b0.1-s0", "dpo-guide-b0.1-s0")
        )

    (first_a, dependent_a), (first_b, dependent_b) = hashes(0.1), hashes(0.2)
    assert first_a != first_b and dependent_a != dependent_b
    assert hashes(0.1) == (first_a, dependent_a)  # and nothing else moves it


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_pre_dpo_trains_against_the_named_runs_policy_once_it_is_done(cache_dir, tmp_path):
    sets = [
        *TINY_WORLD,
        f"references=[{SFT}, {{name: guide, kind: trained, run: dpo-sft-b0.1-s0}}]",
        "objectives=[{name: dpo, betas: [0.1, 1]}]",
        'train.lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}',  # the guide is an adapter
        "train.learning_rate=0.01",  # far enough from SFT in 6 steps that the guide's scores differ from it
        "train.max_steps=6",
        "eval.max_new_tokens=8",
    ]
    overrides = [a for s in sets for a in ("--set", s)]
    exp_dir = tmp_path / "rq3_swap_reference"

    dry = _cli("swap-reference", "--out", tmp_path, "--dry-run", *overrides)
    assert dry.exit_code == 0, dry.output
    assert "wave 2 of 2" in dry.output and "guide is the policy run dpo-sft-b0.1-s0 trains" in dry.output

    prepared = _cli("swap-reference", "--out", tmp_path, "--prepare-only", *overrides)
    assert prepared.exit_code == 0, prepared.output
    head, _, tail = prepared.stdout.partition("then, once those are done")
    assert "dpo-sft-b0.1-s0" in head and "dpo-guide-b0.1-s0" in tail and "dpo-guide" not in head
    # run on its own before the run that trains its reference: refused in one line, nothing written
    one_line_error(_cli("run-one", exp_dir, "dpo-guide-b0.1-s0"), "the policy of run dpo-sft-b0.1-s0", "pending")
    assert not (exp_dir / "dpo-guide-b0.1-s0").exists()

    result = _cli("swap-reference", "--out", tmp_path, *overrides)
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = {r["run_id"]: r for r in json.loads((exp_dir / "results.json").read_text())["rows"]}
    assert all(rows[r]["status"] == "done" for r in ("dpo-sft-b0.1-s0", "dpo-guide-b0.1-s0", "dpo-guide-b1-s0"))
    status = {r: json.loads((exp_dir / r / "status.json").read_text()) for r in rows if r != "sft"}
    assert status["dpo-sft-b0.1-s0"]["finished"] <= min(status[r]["started"] for r in status if "guide" in r)
    said = " ".join(result.output.split())
    assert said.count("reference guide, the policy of dpo-sft-b0.1-s0: its scoring pass") == 2
    assert said.count("its scoring pass computed") <= 1  # the second run reads the first one's pass

    # The reference the run trained against is the guide's policy: the reference log-probs implied by its implicit
    # rewards on the validation pairs, log p_ref = log p_theta - r / beta, equal the log-probs the guide's own
    # evaluation measured for its policy on the same pairs (in memory, before it was saved and merged)
    def ranking(run_id):
        rows = [json.loads(line) for line in (exp_dir / run_id / "ranking.jsonl").read_text().splitlines()]
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}

    guide, dependent = ranking("dpo-sft-b0.1-s0"), ranking("dpo-guide-b1-s0")
    sft = ranking("sft")
    for side in ("chosen", "rejected"):
        implied = dependent[f"logp_{side}"] - dependent[f"reward_{side}"] / 1.0
        assert np.allclose(implied, guide[f"logp_{side}"], rtol=1e-4, atol=1e-3)
        assert np.abs(guide[f"logp_{side}"] - sft[f"logp_{side}"]).mean() > 0.05  # not the SFT policy's
