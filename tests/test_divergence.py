"""Runs that break: training stops at the first non-finite loss or gradient norm (status `diverged` with the step and
the value), and a run whose gradients vanish or whose KL explodes is flagged in its status, metrics and tables.

The learning rates were measured on the tiny world (fp32, CPU): step 1 trains at learning rate 0 (linear warm-up
from 0), step 2 makes the first update; with 1e12 the weights it leaves make step 3's loss NaN, with 1e8 step 3's
loss is still finite but its gradient is NaN, and with 1e3 the network saturates so that every gradient is exactly 0
from step 4 on while the loss stays finite."""

import json
import math

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from dpo_ref.training_guards import GRAD_COLLAPSE, run_flags

RUN = "dpo-sft-b0.1-s0"
SHORT = ["objectives.0.betas=[0.1]", "train.max_steps=8", "eval.max_new_tokens=12"]


def finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


@pytest.mark.slow
@pytest.mark.parametrize("learning_rate, metric", [(1e12, "loss"), (1e8, "grad_norm")])
def test_a_non_finite_value_stops_training_at_its_step(run_study, tmp_path, learning_rate, metric):
    results, cli = run_study("sweep-beta", tmp_path, *SHORT, f"train.learning_rate={learning_rate}",
                             experiment="rq1_sweep_beta")  # fmt: skip
    run_dir = tmp_path / "rq1_sweep_beta" / RUN
    status = json.loads((run_dir / "status.json").read_text())  # strict JSON: Python's parser reads NaN too
    assert status["status"] == "diverged" and status["metric"] == metric and status["value"] == "nan"
    assert status["step"] == 3 < 8, status  # stopped at once, not after the 8 steps asked for
    # TRL's own log (every 10 steps, and the step where training stopped) shows the value where the guard saw it
    logged = [h for h in status["history"] if "loss" in h]
    assert [h["step"] for h in logged] == [1, 3]
    assert logged[-1][metric] == "nan" and all(finite(v) for v in logged[0].values())
    assert f"diverged: {RUN}: non-finite {metric} (nan) at step 3" in " ".join(cli.stderr.split())
    # a finished result: nothing left to resume from, no policy, reported as diverged
    assert not (run_dir / "trainer").exists() and not (run_dir / "policy").exists()
    assert [r["status"] for r in results["rows"]] == ["done", "diverged"]


def logp_gradient_norm(model, pairs) -> float:
    """Norm of the gradient of the summed completion log-probs of `pairs` (prompt ids, completion ids)."""
    model.zero_grad()
    total = 0.0
    for prompt, completion in pairs:
        ids = torch.tensor([prompt + completion])
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        total = total + torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt) :, None]).sum()
    total.backward()
    return float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))


@pytest.mark.slow
def test_vanishing_gradients_flag_the_run(run_study, tmp_path):
    results, cli = run_study("sweep-beta", tmp_path, *SHORT, "train.learning_rate=1e3", "train.logging_steps=1",
                             experiment="rq1_sweep_beta")  # fmt: skip
    exp_dir = tmp_path / "rq1_sweep_beta"
    metrics = json.loads((exp_dir / RUN / "metrics.json").read_text())
    status = json.loads((exp_dir / RUN / "status.json").read_text())
    norms = [h["grad_norm"] for h in metrics["history"] if "grad_norm" in h]
    assert len(norms) == 8 and norms[0] > 0.1 and all(n < GRAD_COLLAPSE for n in norms[-3:]), norms
    assert all(finite(h["loss"]) for h in metrics["history"] if "loss" in h)  # the loss never says so
    # measured on the saved policy, not read from the log: the log-probs of the training pairs have no gradient
    policy = AutoModelForCausalLM.from_pretrained(exp_dir / RUN / "policy")
    train = load_from_disk(str(exp_dir / "prepared" / "pairs"))["train"]
    pairs = [(train[i]["prompt_ids"], train[i]["chosen_ids"]) for i in range(8)]
    assert logp_gradient_norm(policy, pairs) < GRAD_COLLAPSE
    sft = AutoModelForCausalLM.from_pretrained(json.loads((exp_dir / "prepared" / "plan.json").read_text())
                                               ["models"]["policy"]["location"])  # fmt: skip
    assert logp_gradient_norm(sft, pairs) > 1.0  # the same measure is far from 0 before training

    assert "grad-collapse" in status["flags"] and metrics["flags"] == status["flags"]
    assert "gradient norm below 1e-08 at the last logged steps 6-8" == metrics["flag_reasons"]["grad-collapse"]
    rows = {r["run_id"]: r for r in results["rows"]}
    assert rows["sft"]["flags"] is None and rows[RUN]["flags"].startswith("grad-collapse")
    table = (exp_dir / "results.md").read_text()
    assert f"| {RUN} | 0.1 | {rows[RUN]['status']} (grad-collapse" in table
    assert f"flagged: {RUN}: gradient norm below 1e-08" in " ".join(cli.stderr.split())


def test_flag_rules_by_hand():
    def history(*norms):
        return [{"step": i + 1, "loss": 0.7, "grad_norm": n} for i, n in enumerate(norms)]

    assert run_flags(history(1.0, 0.0, 0.0, 0.0), kl=1.0, length=7) == {
        "grad-collapse": "gradient norm below 1e-08 at the last logged steps 2-4"
    }
    assert run_flags(history(1.0, 0.0, 0.3, 0.0), kl=1.0, length=7) == {}  # it moved again: not collapsed
    assert run_flags(history(1.0, 0.0), kl=1.0, length=7) == {
        "grad-collapse": "gradient norm below 1e-08 at the last logged step 2"
    }
    assert run_flags(history(0.0), kl=0.0, length=7) == {}  # the first logged step alone says nothing
    assert run_flags([], kl=2.0, length=7) == {}  # 0.29 nats per token: the world's healthy runs
    assert run_flags([], kl=14.0, length=7) == {}  # exactly 2 per token is not above the bound
    assert run_flags([], kl=10.0, length=4) == {"kl-explosion": "KL to the reference 10.0 nats, 2.50 per token > 2"}
    assert run_flags([], kl=2.5, length=0) == {"kl-explosion": "KL to the reference 2.5 nats, 2.50 per token > 2"}
