"""Evaluation of one policy: batched sampling on held-out prompts, judging against the SFT baseline (judges.py),
sequence-level KL to the reference from samples, and ranking accuracy on validation pairs (PAPER.md, Table 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .config import EvalConfig
from .data import prompt_ids as render_prompt
from .judges import Judge
from .lc import lc_win_rate
from .reference import sequence_logps
from .ui import progress


@dataclass
class Generations:
    """One sample per prompt. `completion_ids` holds exactly the sampled tokens (EOS included when `ended`)."""

    prompts: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    responses: list[str]
    ended: list[bool]
    lengths: list[int]  # response tokens, EOS excluded

    def rows(self) -> list[dict]:
        return [
            {"prompt": p, "response": r, "ended": e, "length": n}
            for p, r, e, n in zip(self.prompts, self.responses, self.ended, self.lengths)
        ]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        return list(zip(self.prompt_ids, self.completion_ids))


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | {tokenizer.eos_token_id}


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence,
    cfg: EvalConfig,
    seed: int,
    temperature: float | None = None,
    top_p: float | None = None,
    desc: str = "generating",
) -> Generations:
    """Sample one response per prompt in left-padded batches (sorted by length to waste little padding)."""
    temperature = cfg.temperature if temperature is None else temperature
    top_p = cfg.top_p if top_p is None else top_p
    model.eval()
    dev = next(model.parameters()).device
    stops = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    encoded = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    completions: list[list[int]] = [[] for _ in prompts]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with progress() as bar:
        task = bar.add_task(desc, total=len(prompts))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention[row, width - len(encoded[i]) :] = 1
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                if temperature > 0
                else {"do_sample": False}
            )
            out = model.generate(
                input_ids=input_ids.to(dev),
                attention_mask=attention.to(dev),
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=sorted(stops),
                **sampling,
            )
            for row, i in enumerate(idx):
                tokens = out[row, width:].tolist()
                cut = next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))
                completions[i] = tokens[:cut]
            bar.advance(task, len(idx))
    torch.random.set_rng_state(generator_state)
    ended = [bool(c) and c[-1] in stops for c in completions]
    lengths = [len(c) - int(e) for c, e in zip(completions, ended)]
    responses = [tokenizer.decode(c[:n], skip_special_tokens=True) for c, n in zip(completions, lengths)]
    return Generations(list(prompts), encoded, completions, responses, ended, lengths)


DEGENERATE_SHARE = 0.5  # a run is degenerate when more than this share of its responses is broken


def degeneration(gens: Generations) -> str | None:
    """Why a policy's outputs count as degenerate (PAPER.md marks such runs), or None. A response is broken when it
    hit the length limit without EOS, or loops: one token 8+ times in a row, or a 4-gram repeated 4+ times. The run is
    degenerate when more than DEGENERATE_SHARE of its responses are broken; its numbers are still reported."""

    def loops(tokens: list[int]) -> bool:
        run = 1
        for a, b in zip(tokens, tokens[1:]):
            run = run + 1 if a == b else 1
            if run >= 8:
                return True
        grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
        return any(grams.count(g) >= 4 for g in set(grams))

    unended = float(np.mean([not e for e in gens.ended]))
    looping = float(np.mean([loops(c) for c in gens.completion_ids]))
    broken = float(np.mean([not e or loops(c) for e, c in zip(gens.ended, gens.completion_ids)]))
    if broken > DEGENERATE_SHARE:
        return f"{broken:.0%} of responses broken ({unended:.0%} without EOS, {looping:.0%} looping)"
    return None


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def kl_estimates(policy_logps, ref_logps) -> dict[str, float]:
    """Sequence-level KL(policy || reference) from samples y ~ policy, with log-ratio l = log p(y) - log p_ref(y):
    k1 = l (unbiased, high variance, can be negative); k3 = exp(-l) - 1 + l (unbiased, always >= 0; Schulman 2020)."""
    log_ratio = np.asarray(policy_logps, dtype=np.float64) - np.asarray(ref_logps, dtype=np.float64)
    k1, k1_se = mean_se(log_ratio)
    k3, k3_se = mean_se(np.expm1(-log_ratio) + log_ratio)
    return {"kl": k1, "kl_se": k1_se, "kl_k3": k3, "kl_k3_se": k3_se}


def ranking_accuracy(chosen_rewards, rejected_rewards) -> float:
    """Share of validation pairs where the chosen response scores higher (ties count 0.5)."""
    c, r = np.asarray(chosen_rewards), np.asarray(rejected_rewards)
    return float(np.mean(np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))))


@dataclass(frozen=True)
class PromptSet:
    """Prompts and the judge's rewards of the SFT baseline's samples on them, which every policy is judged against."""

    prompts: list
    baseline_rewards: list[float]
    baseline_lengths: list[int]


@dataclass
class EvalResult:
    win_rate: float
    win_rate_se: float
    lc_win_rate: float  # length-controlled (AlpacaEval 2's GLM, see lc.py)
    val_win_rate: float  # on the validation prompts: what best-beta selection may look at (never the test prompts)
    reward: float
    length: float
    eos_rate: float
    kl: float
    kl_se: float
    kl_k3: float
    kl_k3_se: float
    rank_acc_reward: float
    rank_acc_policy: float
    degenerate: str | None  # the reason, when `degeneration` fires

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_policy(
    model,
    tokenizer,
    test: PromptSet,
    val: PromptSet,
    judge: Judge,
    ref_logps_of: Callable[[Generations], np.ndarray],
    implicit_rewards: Callable,
    validation,
    cfg: EvalConfig,
    max_length: int,
) -> tuple[EvalResult, Generations, list[float]]:
    """Score one policy on the held-out `test` prompts (and `val` prompts, for model selection). `ref_logps_of` gives
    the reference's log-probs of samples; `implicit_rewards(chosen, rejected, chosen_len, rejected_len)` the
    objective's rewards on validation pairs (with cached reference columns)."""

    gens = generate(model, tokenizer, test.prompts, cfg, cfg.seed, desc="sampling policy")
    val_gens = generate(model, tokenizer, val.prompts, cfg, cfg.seed + 2, desc="sampling policy (validation)")
    # one judging call for both sets: a reward-model judge is loaded once per policy
    both = judge.rewards(
        gens.prompts + val_gens.prompts, gens.responses + val_gens.responses, gens.ended + val_gens.ended
    )
    rewards, val_rewards = both[: len(gens.prompts)], both[len(gens.prompts) :]
    prefs = judge.preferences(rewards, test.baseline_rewards)
    wr, wr_se = mean_se(prefs)
    val_wr, _ = mean_se(judge.preferences(val_rewards, val.baseline_rewards))

    # KL needs samples from the policy itself (temperature 1, no nucleus); draw them apart when eval samples differ.
    kl_gens = (
        gens
        if (cfg.temperature == 1.0 and cfg.top_p == 1.0)
        else generate(
            model, tokenizer, test.prompts, cfg, cfg.seed + 1, temperature=1.0, top_p=1.0, desc="sampling for KL"
        )
    )
    policy_logps = sequence_logps(model, kl_gens.sequences(), cfg.batch_size, desc="scoring samples under policy")
    kl = kl_estimates(policy_logps, ref_logps_of(kl_gens))

    seqs = [(p, c) for p, c in zip(validation["prompt_ids"], validation["chosen_ids"])]
    seqs += [(p, r) for p, r in zip(validation["prompt_ids"], validation["rejected_ids"])]
    logps = sequence_logps(model, seqs, cfg.batch_size, max_length, desc="scoring validation pairs")
    n = len(validation)
    chosen, rejected = logps[:n], logps[n:]
    chosen_len = np.array([len(c) for c in validation["chosen_ids"]], dtype=np.float64)
    rejected_len = np.array([len(r) for r in validation["rejected_ids"]], dtype=np.float64)
    chosen_r, rejected_r = implicit_rewards(chosen, rejected, chosen_len, rejected_len)

    result = EvalResult(
        win_rate=wr,
        win_rate_se=wr_se,
        lc_win_rate=lc_win_rate(prefs, gens.lengths, test.baseline_lengths),
        val_win_rate=val_wr,
        reward=float(np.mean(rewards)),
        length=float(np.mean(gens.lengths)),
        eos_rate=float(np.mean(gens.ended)),
        **kl,
        rank_acc_reward=ranking_accuracy(chosen_r, rejected_r),
        rank_acc_policy=ranking_accuracy(chosen, rejected),
        degenerate=degeneration(gens),
    )
    return result, gens, rewards.tolist()
