"""Evaluation of one policy: batched sampling on held-out prompts, judging against the SFT baseline, sequence-level
KL to the reference and to the SFT policy from samples, and ranking accuracy on validation pairs (Liu, Liu and Cohan,
arXiv 2407.13709, Table 2). Every number is a mean over prompts or pairs, and the values it is a mean of are kept
(`EvalSamples`), so a report can put an interval on each and combine seeds prompt by prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch

from ..config import EvalConfig
from ..generation import Generations, Sampling, generate
from ..logprobs import sequence_logps
from ..objectives import Objective, PolicyLogps, ReferenceLogps
from .judges import Judge
from .lc_minimal import lc_win_rate
from .metrics import degeneration, kl_estimates, mean_se, ranking_accuracy


def sampling(cfg: EvalConfig, temperature: float | None = None, top_p: float | None = None) -> Sampling:
    """The evaluation's sampling settings, optionally at another temperature / top_p."""
    return Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature if temperature is None else temperature,
        top_p=cfg.top_p if top_p is None else top_p,
        batch_size=cfg.batch_size,
    )


@dataclass(frozen=True)
class PromptSet:
    """Prompts and the judge's rewards of the SFT baseline's samples on them, which every policy is judged against."""

    prompts: list
    baseline_rewards: list[float]
    baseline_lengths: list[int]


@dataclass(frozen=True)
class Benchmark:
    """What every policy of one experiment is judged with: test prompts (reported), validation prompts (for model
    selection only), the judge, and the evaluation settings."""

    test: PromptSet
    val: PromptSet
    judge: Judge
    cfg: EvalConfig


SEED_OFFSETS = {"test": 0, "kl": 1, "validation": 2}  # a policy's samples: eval.seed plus these, one draw each


def win_rate(judge: Judge, gens: Generations, against: PromptSet) -> float:
    """Mean preference of the judge for `gens` over the SFT baseline's samples of the same prompts."""
    rewards = judge.rewards(gens.prompts, gens.responses, gens.ended)
    return float(np.mean(judge.preferences(rewards, against.baseline_rewards)))


def validation_win_rate(model, tokenizer, bench: Benchmark, desc: str) -> float:
    """The policy's win rate on the validation prompts, sampled as `evaluate_policy` samples them (a tune-beta
    trial's checks judge what best-beta selection judges); the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        seed = bench.cfg.seed + SEED_OFFSETS["validation"]
        gens = generate(model, tokenizer, bench.val.prompts, sampling(bench.cfg), seed, desc=desc)
    model.train(was_training)
    return win_rate(bench.judge, gens, bench.val)


class SampleScorer(Protocol):
    """Scores a policy's samples under the run's reference (for the KL estimate)."""

    def logps(self, gens: Generations, policy) -> np.ndarray: ...


@dataclass(frozen=True)
class ImplicitReward:
    """The run's objective and beta: its implicit reward r(x, y) on the validation pairs (0 for the SFT row)."""

    objective: Objective | None
    beta: float | None = None
    gamma: float = 0.0
    params: dict | None = None  # a stateful objective's settings

    def __call__(self, policy: PolicyLogps, ref: ReferenceLogps) -> tuple[np.ndarray, np.ndarray]:
        if self.objective is None:
            return np.zeros(len(policy.chosen)), np.zeros(len(policy.rejected))
        chosen, rejected = self.objective.rewards(policy, ref, self.beta, self.gamma, self.params)
        return chosen.numpy(), rejected.numpy()


@dataclass
class EvalResult:
    win_rate: float
    win_rate_se: float
    lc_win_rate: float  # length-controlled (AlpacaEval 2's GLM, see lc_minimal.py)
    val_win_rate: float  # on the validation prompts: what best-beta selection may look at (never the test prompts)
    reward: float
    length: float
    eos_rate: float
    kl: float  # KL(policy || the run's reference), k1
    kl_se: float
    kl_k3: float
    kl_k3_se: float
    kl_sft: float  # KL(policy || SFT policy), k1: one anchor for every run (a stronger reference starts above 0)
    kl_sft_se: float
    rank_acc_reward: float
    rank_acc_policy: float
    degenerate: str | None  # the reason, when `degeneration` fires

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalSamples:
    """What an evaluation's numbers are means of: the judged test samples with, per prompt, the log-ratios behind
    both KL estimates (of the KL samples, drawn apart when the evaluation's temperature is not 1); the judged
    validation samples; and, per validation pair, the implicit rewards and the policy's log-probs."""

    test: Generations
    test_rewards: list[float]
    kl_log_ratio: list[float]  # log p(y|x) - log p_ref(y|x)
    kl_sft_log_ratio: list[float]  # log p(y|x) - log p_sft(y|x)
    validation: Generations
    validation_rewards: list[float]
    pairs: dict[str, list[float]]  # reward_chosen, reward_rejected, logp_chosen, logp_rejected


def _ranking(model, validation, bench: Benchmark, reward: ImplicitReward) -> dict[str, list[float]]:
    """Per validation pair, the implicit reward and the policy's own log-prob of both responses (their ranking
    accuracy: the paper's Table 2). The pairs hold what the policy trains on (cut to max_length when tokenized), so
    log-probs and lengths describe the same tokens."""
    seqs = [(p, c) for p, c in zip(validation["prompt_ids"], validation["chosen_ids"])]
    seqs += [(p, r) for p, r in zip(validation["prompt_ids"], validation["rejected_ids"])]
    logps = sequence_logps(model, seqs, bench.cfg.batch_size, desc="scoring validation pairs")
    n = len(validation)
    f64 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
    policy = PolicyLogps(
        f64(logps[:n]),
        f64(logps[n:]),
        f64([len(c) for c in validation["chosen_ids"]]),
        f64([len(r) for r in validation["rejected_ids"]]),
    )
    if "ref_chosen_logps" in validation.column_names:
        ref = ReferenceLogps(f64(validation["ref_chosen_logps"]), f64(validation["ref_rejected_logps"]))
    else:
        ref = ReferenceLogps.zeros_like(policy)
    chosen_r, rejected_r = reward(policy, ref)
    return {
        "reward_chosen": chosen_r.tolist(),
        "reward_rejected": rejected_r.tolist(),
        "logp_chosen": np.asarray(logps[:n]).tolist(),
        "logp_rejected": np.asarray(logps[n:]).tolist(),
    }


def _kl_logps(model, gens: Generations, bench: Benchmark, sample, reference: SampleScorer, sft: SampleScorer | None):
    """Sequence log-probs of the policy's own samples (temperature 1, no nucleus: drawn apart when the evaluation's
    sampling differs) under the policy, its reference and the SFT policy (the reference's, when that is the SFT)."""
    cfg, kl_gens = bench.cfg, gens
    if (cfg.temperature, cfg.top_p) != (1.0, 1.0):
        kl_sampling = sampling(cfg, temperature=1.0, top_p=1.0)
        kl_gens = sample(bench.test.prompts, kl_sampling, cfg.seed + SEED_OFFSETS["kl"], desc="sampling for KL")
    policy_logps = sequence_logps(model, kl_gens.sequences(), cfg.batch_size, desc="scoring samples under policy")
    ref_logps = reference.logps(kl_gens, model)
    return policy_logps, ref_logps, ref_logps if sft is None else sft.logps(kl_gens, model)


def evaluate_policy(
    model,
    tokenizer,
    bench: Benchmark,
    validation,
    reward: ImplicitReward,
    reference: SampleScorer,
    sample=None,
    sft: SampleScorer | None = None,
) -> tuple[EvalResult, EvalSamples]:
    """Score one policy on the held-out test prompts (and validation prompts, for model selection); `validation` is
    the tokenized validation pairs with the run's reference columns, `reference` scores samples for the KL, `sft`
    for the KL to the SFT policy when that is another model (None: the reference is the SFT policy).
    `sample(prompts, sampling, seed, desc=...)` draws the policy's samples (default: transformers' generate on
    `model`; `eval.engine: vllm` passes a VllmSampler of the same policy)."""
    cfg = bench.cfg
    sample = sample or partial(generate, model, tokenizer)
    gens = sample(bench.test.prompts, sampling(cfg), cfg.seed + SEED_OFFSETS["test"], desc="sampling policy")
    val_seed = cfg.seed + SEED_OFFSETS["validation"]
    val_gens = sample(bench.val.prompts, sampling(cfg), val_seed, desc="sampling policy (validation)")
    # one judging call for both sets: a reward-model judge is loaded once per policy
    both = bench.judge.rewards(
        gens.prompts + val_gens.prompts, gens.responses + val_gens.responses, gens.ended + val_gens.ended
    )
    rewards, val_rewards = both[: len(gens.prompts)], both[len(gens.prompts) :]
    prefs = bench.judge.preferences(rewards, bench.test.baseline_rewards)
    wr, wr_se = mean_se(prefs)
    val_wr, _ = mean_se(bench.judge.preferences(val_rewards, bench.val.baseline_rewards))

    policy_logps, ref_logps, sft_logps = _kl_logps(model, gens, bench, sample, reference, sft)
    kl, kl_sft = kl_estimates(policy_logps, ref_logps), kl_estimates(policy_logps, sft_logps)
    pairs = _ranking(model, validation, bench, reward)

    result = EvalResult(
        win_rate=wr,
        win_rate_se=wr_se,
        lc_win_rate=lc_win_rate(prefs, gens.lengths, bench.test.baseline_lengths),
        val_win_rate=val_wr,
        reward=float(np.mean(rewards)),
        length=float(np.mean(gens.lengths)),
        eos_rate=float(np.mean(gens.ended)),
        **kl,
        kl_sft=kl_sft["kl"],
        kl_sft_se=kl_sft["kl_se"],
        rank_acc_reward=ranking_accuracy(pairs["reward_chosen"], pairs["reward_rejected"]),
        rank_acc_policy=ranking_accuracy(pairs["logp_chosen"], pairs["logp_rejected"]),
        degenerate=degeneration(gens),
    )
    ratios = np.asarray(policy_logps) - np.asarray(ref_logps), np.asarray(policy_logps) - np.asarray(sft_logps)
    samples = EvalSamples(
        gens, rewards.tolist(), ratios[0].tolist(), ratios[1].tolist(), val_gens, val_rewards.tolist(), pairs
    )
    return result, samples
