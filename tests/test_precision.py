"""References are scored in the regime the policy trains in, so with the reference equal to the initial policy the
step-1 DPO loss is ln 2 and every implicit reward 0 (DESIGN.md's check), under bf16 as under fp32. At beta 10 a
reference scored with bf16 weights against a policy training with fp32 weights under bf16 autocast gave 0.706."""

import json
import math

import pytest
import torch

STEP_ONE = ["objectives.0.betas=[10]", "train.max_steps=1", "train.logging_steps=1", "eval.max_new_tokens=8"]


def step_one(run_study, out, precision: str) -> dict:
    run_study("sweep-beta", out, *STEP_ONE, f"train.precision={precision}", experiment="rq1_sweep_beta")
    metrics = json.loads((out / "rq1_sweep_beta" / "dpo-sft-b10-s0" / "metrics.json").read_text())
    return metrics["history"][0]


@pytest.mark.slow
def test_step_one_loss_is_ln2_under_bf16_autocast_emulated_on_cpu(run_study, tmp_path):
    first = step_one(run_study, tmp_path, "bf16")  # on a CPU: bf16 autocast, as a GPU runs `auto`
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_one_loss_is_ln2_in_bf16_on_a_gpu(run_study, tmp_path):
    assert torch.cuda.is_bf16_supported()
    first = step_one(run_study, tmp_path, "auto")  # auto is bf16 on this GPU
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0
