"""Judges: a tiny locally built reward model scores like a direct forward pass, its preference is
sigmoid(r - r_base), and a whole sweep can be judged by it instead of the world's gold reward."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from dpo_ref.evaluation.judges import RewardModelJudge, RuleJudge
from dpo_ref.models import resolve
from dpo_ref.world import gold_reward


@pytest.fixture(scope="module")
def reward_model_dir(tiny_world, tmp_path_factory):
    """A 2-layer Llama reward model (one output) with the world's tokenizer and chat template, random weights."""
    tok = tiny_world.tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reward-model")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


PROMPTS = ["rev abc", "copy abcd", "sort dcba", "dup ab", "rev abcdef"]
RESPONSES = ["cba", "abcd and more", "abcd", "", "fedcbaaaa"]


def test_reward_model_scores_equal_direct_forward_passes(reward_model_dir, tiny_world):
    judge = RewardModelJudge(resolve(str(reward_model_dir)), batch_size=2)  # batches mix lengths: padding matters
    rewards = judge.rewards(PROMPTS, RESPONSES, [True] * len(PROMPTS))
    tok = tiny_world.tokenizer()
    model = LlamaForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for prompt, response, r in zip(PROMPTS, RESPONSES, rewards):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            direct = model(**ids).logits[0, 0].item()
        assert r == pytest.approx(direct, abs=1e-5)
    assert np.ptp(rewards) > 0  # a random model still tells the responses apart


def test_reward_model_preference_is_the_bradley_terry_probability():
    prefs = RewardModelJudge.preferences([1.0, 0.0, -2.0], [0.0, 0.0, 1.0])
    assert prefs == pytest.approx([1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(3))])


def test_rule_judge_counts_ties_as_half():
    judge = RuleJudge("world", gold_reward)
    rewards = judge.rewards(["rev abc", "rev abc", "rev abc"], ["cba", "cb", "cba"], [True, True, True])
    assert judge.preferences(rewards, [0.5, 1.0, 1.0]).tolist() == [1.0, 0.0, 0.5]


@pytest.mark.slow
def test_sweep_judged_by_a_reward_model(run_study, reward_model_dir, tmp_path):
    results, _ = run_study(
        "sweep-beta",
        tmp_path,
        "objectives.0.betas=[0.1]",
        "train.max_steps=4",
        "judge.kind=reward-model",
        f"judge.model={reward_model_dir}",
        experiment="rq1_sweep_beta",
    )
    exp = tmp_path / "rq1_sweep_beta"
    judge = RewardModelJudge(resolve(str(reward_model_dir)))
    base = [json.loads(x) for x in (exp / "baseline" / "test.jsonl").read_text().splitlines()]
    gens = [json.loads(x) for x in (exp / "dpo-sft-b0.1-s0" / "generations.jsonl").read_text().splitlines()]
    # stored rewards are the reward model's, and the win rate is the mean of sigmoid(r - r_base)
    direct = judge.rewards([g["prompt"] for g in gens], [g["response"] for g in gens], [g["ended"] for g in gens])
    assert [g["reward"] for g in gens] == pytest.approx(direct.tolist(), abs=1e-5)
    expected = judge.preferences(direct, [b["reward"] for b in base]).mean()
    trained = next(r for r in results["rows"] if r["run_id"] == "dpo-sft-b0.1-s0")
    assert trained["win_rate"] == pytest.approx(expected, abs=1e-5)
    assert "reward model" in (exp / "results.md").read_text()
