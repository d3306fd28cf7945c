"""Numbers computed from a policy's samples and scores: preferences, means, KL estimates, ranking accuracy,
degeneration. Plain NumPy, so every metric is checkable by hand."""

from __future__ import annotations

import numpy as np

from ..generation import Generations

DEGENERATE_SHARE = 0.5  # a run is degenerate when more than this share of its responses is broken


def preference(scores, other_scores) -> np.ndarray:
    """Per item: 1 where `scores` is higher, 0.5 on a tie, 0 where lower (win/tie/loss with ties as half a win)."""
    a, b = np.asarray(scores, dtype=np.float64), np.asarray(other_scores, dtype=np.float64)
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def mean_se(x) -> tuple[float, float]:
    """Mean and its standard error (sample s.d. / sqrt(n); 0 for a single value)."""
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
    return float(np.mean(preference(chosen_rewards, rejected_rewards)))


def _loops(tokens: list[int]) -> bool:
    """One token 8+ times in a row, or a 4-gram occurring 4+ times without overlapping itself (overlapping counts
    would make 7 equal tokens four copies of one 4-gram)."""
    run = 1
    for a, b in zip(tokens, tokens[1:]):
        run = run + 1 if a == b else 1
        if run >= 8:
            return True
    next_free: dict[tuple, int] = {}  # per 4-gram: where a non-overlapping occurrence may start next
    counts: dict[tuple, int] = {}
    for i in range(len(tokens) - 3):
        gram = tuple(tokens[i : i + 4])
        if i >= next_free.get(gram, 0):
            counts[gram] = counts.get(gram, 0) + 1
            next_free[gram] = i + 4
            if counts[gram] >= 4:
                return True
    return False


def degeneration(gens: Generations) -> str | None:
    """Why a policy's outputs count as degenerate (the paper marks such runs in Table 1), or None. A response is broken
    when it hit the length limit without EOS, or loops. The run is degenerate when more than DEGENERATE_SHARE of its
    responses are broken; its numbers are still reported."""
    unended = float(np.mean([not e for e in gens.ended]))
    looping = float(np.mean([_loops(c) for c in gens.completion_ids]))
    broken = float(np.mean([not e or _loops(c) for e, c in zip(gens.ended, gens.completion_ids)]))
    if broken > DEGENERATE_SHARE:
        return f"{broken:.0%} of responses broken ({unended:.0%} without EOS, {looping:.0%} looping)"
    return None
