"""`eval.engine: vllm` against transformers: for the tokens vLLM samples, both engines give the same log-probs, and
its records read as transformers' do. Needs a CUDA GPU and vLLM (skipped otherwise, with the reason); the refusals
without them are tested everywhere."""

import pytest
import torch
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.generation_vllm import available

WHY = available()


def test_vllm_where_it_cannot_run_is_refused_in_one_line(tmp_path):
    args = ["sweep-beta", "--out", str(tmp_path), "--set", "eval.engine=vllm"]
    args += [a for s in TINY_WORLD for a in ("--set", s)]
    if WHY is None:  # this machine can run it: the LoRA refusal still holds
        args += ["--set", "train.lora={r: 4}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert ": eval.engine: vllm " in line and "use `transformers`" in line, line
    assert not (tmp_path / "rq1_sweep_beta").exists()


@pytest.mark.gpu
@pytest.mark.skipif(WHY is not None, reason=f"vLLM {WHY}")
def test_both_engines_give_the_same_logprobs_for_vllms_samples(tiny_world):
    from dpo_ref.generation import Sampling
    from dpo_ref.generation_vllm import VllmSampler
    from dpo_ref.logprobs import sequence_logps
    from dpo_ref.models import load_model, load_tokenizer, resolve

    sft = resolve("world:sft", tiny_world)
    tokenizer = load_tokenizer(sft)
    prompts = tiny_world.eval_prompts()[:16]
    sampler = VllmSampler(sft.location, tokenizer, bf16=False)
    try:
        gens = sampler(prompts, Sampling(max_new_tokens=24, temperature=1.0), seed=0)
        vllm_logps = sampler.token_logps
    finally:
        sampler.close()
    assert len(gens.responses) == len(prompts) and any(gens.ended)
    model = load_model(sft, torch.float32)
    _, hf = sequence_logps(model, gens.sequences(), batch_size=16, per_token=True)
    for ours, theirs in zip(hf, vllm_logps):
        n = len(theirs)  # the tokens vLLM returned (the stop token is among them or was added after)
        assert torch.tensor(ours[:n]).double().sum().item() == pytest.approx(sum(theirs), abs=1e-2)
