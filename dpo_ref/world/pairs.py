"""The world's preference pairs: two samples of the SFT policy per prompt, labelled by the gold reward with
Bradley-Terry noise (as GPT-4 labels UltraFeedback)."""

from __future__ import annotations

import math
import random

from ..config import WorldConfig
from .models import respond
from .tasks import gold_reward, prompts, response_budget, solve

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "chosen_ended", "rejected_ended")


def label_pairs(prompts, samples, rows: dict[str, list], n: int, rng: random.Random, temperature: float) -> int:
    """Append to `rows` the pairs (samples[2i], samples[2i+1]) labelled by Bradley-Terry on r*, skipping
    identical responses, until it holds n pairs; return how many prompts that used."""
    for i, prompt in enumerate(prompts):
        if len(rows["prompt"]) == n:
            return i
        (a, a_end), (b, b_end) = samples[2 * i], samples[2 * i + 1]
        if a == b:
            continue
        ra, rb = gold_reward(prompt, a, a_end), gold_reward(prompt, b, b_end)
        if rng.random() >= 1 / (1 + math.exp(-(ra - rb) / temperature)):  # b preferred: swap
            (a, a_end, ra), (b, b_end, rb) = (b, b_end, rb), (a, a_end, ra)
        for key, value in zip(PAIR_COLUMNS, (prompt, a, b, ra, rb, a_end, b_end), strict=True):
            rows[key].append(value)
    return len(prompts)


def sample_pairs(model, tokenizer, cfg: WorldConfig, rng: random.Random, seen: set[str], n: int):
    """n labelled pairs on fresh prompts (more prompts are drawn until n pairs survive the identical-pair
    filter), and statistics of every sample those pairs came from."""
    rows: dict[str, list] = {k: [] for k in PAIR_COLUMNS}
    stats = {"identical_dropped": 0, "prompts_used": 0, "sample_reward_sum": 0.0, "sample_exact": 0, "ended": 0}
    while len(rows["prompt"]) < n:
        kept = len(rows["prompt"])
        batch = prompts(rng, (n - kept) * 3 // 2 + 8, cfg, seen)  # headroom for identical pairs
        samples = respond(
            model,
            tokenizer,
            [p for p in batch for _ in range(2)],
            response_budget(cfg),
            temperature=cfg.sample_temperature,
            seed=rng.getrandbits(63),
        )
        used = label_pairs(batch, samples, rows, n, rng, cfg.label_temperature)
        stats["identical_dropped"] += used - (len(rows["prompt"]) - kept)
        stats["prompts_used"] += used
        for i, prompt in enumerate(batch[:used]):
            for text, ended in samples[2 * i : 2 * i + 2]:
                stats["sample_reward_sum"] += gold_reward(prompt, text, ended)
                stats["sample_exact"] += ended and text == solve(prompt)
                stats["ended"] += ended
    return rows, stats


def pair_stats(rows: dict[str, list]) -> dict:
    n = len(rows["prompt"])
    lengths = [(len(c), len(r)) for c, r in zip(rows["chosen"], rows["rejected"], strict=True)]
    rewards = list(zip(rows["chosen_reward"], rows["rejected_reward"], strict=True))
    return {
        "pairs": n,
        "mean_chosen_len": sum(c for c, _ in lengths) / n,
        "mean_rejected_len": sum(r for _, r in lengths) / n,
        "frac_chosen_longer": sum(c > r for c, r in lengths) / n,
        "frac_chosen_shorter": sum(c < r for c, r in lengths) / n,
        "frac_label_agrees_with_gold": sum(c > r for c, r in rewards) / n,
        "frac_equal_gold": sum(c == r for c, r in rewards) / n,
    }
