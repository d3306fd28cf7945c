"""A run's hash holds the resolved models' fingerprints: a model whose weights change under the same spec makes every
run that reads it run again, instead of mixing rows computed against two different models in one table."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dpo_ref.config import expand
from dpo_ref.expdir import run_hash
from dpo_ref.runner import read_experiment

DEFAULT = "experiments/rq1_sweep_beta/default.yaml"


def models(policy="p1", reference="r1", judge=None, location="/somewhere"):
    entry = lambda fp: {"spec": "world:sft", "location": location, "fingerprint": fp}  # noqa: E731
    return {"policy": entry(policy), "references": {"sft": entry(reference)}, "judge": judge and entry(judge)}


def test_the_hash_follows_every_fingerprint_and_nothing_else():
    exp = read_experiment(DEFAULT, [])
    sft, dpo = expand(exp)[:2]
    assert (sft.reference, dpo.reference) == (None, "sft")
    base = run_hash(exp, dpo, models())
    assert run_hash(exp, dpo, models(location="/elsewhere")) == base  # where a model lies is not what it is
    assert run_hash(exp, dpo, models(policy="p2")) != base
    assert run_hash(exp, dpo, models(reference="r2")) != base
    assert run_hash(exp, dpo, models(judge="j1")) != base
    # the SFT row reads no reference: another reference's weights leave it as it is, the policy's do not
    assert run_hash(exp, sft, models(reference="r2")) == run_hash(exp, sft, models())
    assert run_hash(exp, sft, models(policy="p2")) != run_hash(exp, sft, models())


def hashes(exp_dir):
    return {r: yaml.safe_load((exp_dir / r / "run.yaml").read_text())["config_hash"] for r in ("sft", RUN)}


RUN = "dpo-sft-b0.1-s0"


@pytest.mark.slow  # end to end: trains on the embedded world
def test_a_run_whose_policy_weights_changed_runs_again(tiny_world, run_study, tmp_path):
    model_dir = tmp_path / "my-sft"
    shutil.copytree(tiny_world.models["sft"], model_dir)
    sets = ["objectives.0.betas=[0.1]", "train.max_steps=2", "eval.max_new_tokens=12"]
    sets += [f"policy={model_dir}", f"references.0.model={model_dir}"]
    out = tmp_path / "runs"
    exp_dir = out / "rq1_sweep_beta"
    run_study("sweep-beta", out, *sets, experiment="rq1_sweep_beta")
    before = hashes(exp_dir)
    again = run_study("sweep-beta", out, *sets, experiment="rq1_sweep_beta")[1]
    assert again.stderr.count("already done: ") == 2 and hashes(exp_dir) == before  # nothing changed: nothing runs

    (weights,) = model_dir.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(n for n in tensors if n.endswith("embed_tokens.weight"))
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])  # other weights, same spec, same shape
    save_file(tensors, weights, metadata={"format": "pt"})
    summary, result = run_study("sweep-beta", out, *sets, experiment="rq1_sweep_beta")
    said = " ".join(result.stderr.split())
    for run_id in ("sft", RUN):
        assert f"changed: {run_id}: its settings or models changed since it ran; running it again" in said
    assert "already done: " not in said
    after = hashes(exp_dir)
    assert all(after[r] != before[r] for r in before)
    plan = json.loads((exp_dir / "prepared" / "plan.json").read_text())
    assert plan["models"]["policy"]["location"] == str(model_dir)
    assert [r["status"] for r in summary["rows"]] == ["done", "done"]
