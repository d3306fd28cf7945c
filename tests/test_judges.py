"""Judges: a tiny locally built reward model scores like a direct forward pass, its preference is
sigmoid(r - r_base), and a whole sweep can be judged by it instead of the world's gold reward."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForSequenceClassification

from dpo_ref.evaluation.judges import RewardModelJudge, RuleJudge
from dpo_ref.models import resolve
from dpo_ref.world import gold_reward

PROMPTS = ["rev abc", "copy abcd", "sort dcba", "dup ab", "rev abcdef"]
RESPONSES = ["cba", "abcd and more", "abcd", "", "fedcbaaaa"]


def direct_rewards(model_dir, tok, prompts, responses) -> list[float]:
    """r(x, y) by a plain forward pass of the classifier, one conversation at a time (no padding, no dporef code)."""
    model = LlamaForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    for prompt, response in zip(prompts, responses):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**ids).logits[0, 0].item())
    return out


def test_reward_model_scores_equal_direct_forward_passes(reward_model_dir, tiny_world):
    judge = RewardModelJudge(resolve(str(reward_model_dir)), batch_size=2)  # batches mix lengths: padding matters
    rewards = judge.rewards(PROMPTS, RESPONSES, [True] * len(PROMPTS))
    direct = direct_rewards(reward_model_dir, tiny_world.tokenizer(), PROMPTS, RESPONSES)
    assert rewards.tolist() == pytest.approx(direct, abs=1e-5)
    assert np.ptp(rewards) > 0  # a random model still tells the responses apart


def test_reward_model_scores_in_its_precision_regime(reward_model_dir, tiny_world):
    """Under bf16 the small reward model keeps fp32 weights and scores under bf16 autocast, as every small model does;
    its regime is part of its key, so rewards scored in one regime are never reused for another."""
    from dpo_ref import precision

    ref = resolve(str(reward_model_dir))
    # by hand (conftest's config): embeddings 32 V; per layer attention 4 x 32 x 32 = 4096, MLP 3 x 32 x 64 = 6144,
    # norms 64; 2 layers 20,608; final norm 32; the score head 32 x 1 = 32 (a causal LM's head would be 32 V)
    assert precision.parameter_count(ref) == 32 * len(tiny_world.tokenizer()) + 20_672
    fp32, bf16 = RewardModelJudge(ref, batch_size=2, precision="fp32"), RewardModelJudge(ref, 2, "bf16")
    assert fp32.key.endswith(":fp32-weights") and bf16.key.endswith(":fp32-weights+bf16-autocast")
    exact = fp32.rewards(PROMPTS, RESPONSES, [True] * len(PROMPTS))
    rounded = bf16.rewards(PROMPTS, RESPONSES, [True] * len(PROMPTS))
    assert not np.array_equal(rounded, exact)  # computed under autocast: bf16 rounding
    assert rounded == pytest.approx(exact, abs=0.05)


def test_reward_model_preference_is_the_bradley_terry_probability():
    prefs = RewardModelJudge.preferences([1.0, 0.0, -2.0], [0.0, 0.0, 1.0])
    assert prefs == pytest.approx([1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(3))])


def test_rule_judge_counts_ties_as_half():
    judge = RuleJudge("world", gold_reward)
    rewards = judge.rewards(["rev abc", "rev abc", "rev abc"], ["cba", "cb", "cba"], [True, True, False])
    # by hand (docs/world.md, gold reward): all 3 characters right 1.0; 2 of 3 right 2/3; right but no EOS 1.0 - 0.5
    assert rewards.tolist() == pytest.approx([1.0, 2 / 3, 0.5], abs=1e-12)
    assert judge.preferences(rewards, [0.5, 1.0, 0.5]).tolist() == [1.0, 0.0, 0.5]


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
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    base = [json.loads(x) for x in (exp / "baseline" / "test.jsonl").read_text().splitlines()]
    gens = [json.loads(x) for x in (exp / "dpo-sft-b0.1-s0" / "generations.jsonl").read_text().splitlines()]
    assert [g["prompt"] for g in gens] == [b["prompt"] for b in base]
    # stored rewards (the run's and the baseline's) are the reward model's, by a direct forward pass
    direct = direct_rewards(reward_model_dir, tok, [g["prompt"] for g in gens], [g["response"] for g in gens])
    direct_base = direct_rewards(reward_model_dir, tok, [b["prompt"] for b in base], [b["response"] for b in base])
    assert [g["reward"] for g in gens] == pytest.approx(direct, abs=1e-5)
    assert [b["reward"] for b in base] == pytest.approx(direct_base, abs=1e-5)
    # the win rate is the mean Bradley-Terry probability sigmoid(r - r_base), written out
    prefs = [1 / (1 + math.exp(rb - r)) for r, rb in zip(direct, direct_base)]
    trained = next(r for r in results["rows"] if r["run_id"] == "dpo-sft-b0.1-s0")
    assert trained["win_rate"] == pytest.approx(sum(prefs) / len(prefs), abs=1e-5)
    assert trained["reward"] == pytest.approx(sum(direct) / len(direct), abs=1e-5)
    assert "reward model" in (exp / "results.md").read_text()
