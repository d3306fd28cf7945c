"""References are scored in the regime the policy trains in, so with the reference equal to the initial policy the
step-1 DPO loss is ln 2 and every implicit reward 0 (the check that cached reference columns match the policy), under
bf16 as under fp32. At beta 10 a reference scored with bf16 weights against a policy training with fp32 weights under
bf16 autocast gave 0.706. The rule itself: under bf16 a model below LARGE parameters keeps fp32 weights under
autocast, a larger one bf16 weights; `Regime.load` loads in the regime's dtype; fp32 needs no parameter count."""

import json
import math

import pytest
import torch
from transformers import DebertaV2Config, LlamaConfig, LlamaForCausalLM

from dpo_ref import precision
from dpo_ref.models import ModelRef
from dpo_ref.precision import Regime, regime_for

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


def saved(path, config, weights: bool = False) -> ModelRef:
    """A model directory: the config alone (enough to count parameters), or with seeded fp32 weights to load."""
    if weights:
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    else:
        config.save_pretrained(path)
    return ModelRef(str(path), str(path), "")


def small() -> LlamaConfig:
    # by hand: embeddings 100 x 16 = 1600; per layer q, k, v, o 4 x 16 x 16 = 1024, gate and up 2 x 16 x 32 = 1024,
    # down 32 x 16 = 512, two norms 2 x 16 = 32: 2592; final norm 16; head tied to the embeddings: 4208 in all
    return LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )


def large() -> LlamaConfig:
    # by hand: embeddings and untied head 2 x 32000 x 2048 = 131,072,000; per layer attention 4 x 2048^2 = 16,777,216,
    # MLP 3 x 2048 x 8192 = 50,331,648, norms 2 x 2048 = 4096: 67,112,960, x 16 = 1,073,807,360; final norm 2048
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )


def test_parameter_count_from_the_config_alone(tmp_path):
    assert precision.parameter_count(saved(tmp_path / "small", small())) == 4208
    assert precision.parameter_count(saved(tmp_path / "large", large())) == 1_204_881_408  # on meta: nothing held


def test_bf16_gives_a_small_model_fp32_weights_under_autocast_and_a_large_one_bf16_weights(tmp_path):
    below = regime_for(saved(tmp_path / "small", small()), "bf16")
    above = regime_for(saved(tmp_path / "large", large()), "bf16")  # 1.2e9 parameters >= LARGE (1e9)
    assert below == Regime(autocast_bf16=True, bf16_weights=False) and below.dtype == torch.float32
    assert above == Regime(autocast_bf16=True, bf16_weights=True) and above.dtype == torch.bfloat16
    assert (below.key, above.key) == ("fp32-weights+bf16-autocast", "bf16-weights+bf16-autocast")
    x = torch.ones(2, 2)
    with below.autocast():  # forward passes compute in bf16 (a CPU autocast here, a CUDA one on a GPU)
        assert (x @ x).dtype == torch.bfloat16


def test_regime_load_holds_weights_in_the_regime_dtype(tmp_path, monkeypatch):
    ref = saved(tmp_path / "model", small(), weights=True)
    loaded = regime_for(ref, "bf16").load(ref)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    monkeypatch.setattr(precision, "LARGE", 4208)  # this model is now large: bf16 weights
    regime = regime_for(ref, "bf16")
    assert regime.dtype == torch.bfloat16
    assert {p.dtype for p in regime.load(ref).parameters()} == {torch.bfloat16}


def test_fp32_loads_fp32_without_counting_parameters(tmp_path, monkeypatch):
    ref = saved(tmp_path / "model", small(), weights=True)

    def no_count(ref):
        raise AssertionError("counted the parameters of a model under fp32")

    monkeypatch.setattr(precision, "parameter_count", no_count)
    regime = regime_for(ref, "fp32")
    assert regime == Regime(autocast_bf16=False, bf16_weights=False) and regime.key == "fp32-weights"
    assert {p.dtype for p in regime.load(ref).parameters()} == {torch.float32}
    x = torch.ones(2, 2)
    with regime.autocast():
        assert (x @ x).dtype == torch.float32


def test_a_model_without_a_causal_lm_class_gets_its_regime(tmp_path):
    """A reward model such as DeBERTa-v3 has a sequence-classifier class and no causal-LM one: counted as saved."""
    config = DebertaV2Config(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        architectures=["DebertaV2ForSequenceClassification"],
        num_labels=1,
    )
    assert regime_for(saved(tmp_path / "rm", config), "bf16") == Regime(autocast_bf16=True, bf16_weights=False)
