"""The world's tasks: short string puzzles (`rev abcde` -> `edcba`), their gold reward, prompts and noisy
demonstrations."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..config import WorldConfig

ALPHABET = "abcdefgh"  # the letters task inputs are made of
TASKS: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "rev": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "dup": lambda s: "".join(c + c for c in s),  # the longest targets: twice the input
}
RAMBLE_COST = 0.1  # reward lost per character beyond the target's length
NO_EOS_PENALTY = 0.5  # reward lost when the response hit the length limit without EOS


def solve(prompt: str) -> str:
    """The correct response to a task prompt such as `rev abcde`."""
    task, _, letters = prompt.partition(" ")
    if task not in TASKS or not letters:
        raise ValueError(f"not a world prompt: {prompt!r} (expected '<task> <letters>', task in {list(TASKS)})")
    return TASKS[task](letters)


def gold_reward(prompt: str, response: str, ended: bool) -> float:
    """r*(x, y) = hits / len(target) - 0.1 * (characters beyond the target) - (0.5 if not ended else 0).

    hits counts the target positions the response gets right (position-wise), so the first term is at most 1.
    A response that stops early loses the credit of what it left out; one that rambles on pays per extra
    character: longer is better up to the target's length and worse after it, which makes EOS matter as in the
    paper. `ended` is False when the response hit the length limit without EOS. For `rev abcde`:
    `edcba` 1.0, `edcb` 0.8, `edcbaxx` 0.8, `edcba` not ended 0.5.
    """
    target = solve(prompt)
    hits = sum(a == b for a, b in zip(response, target, strict=False))
    extra = max(0, len(response) - len(target))
    return hits / len(target) - RAMBLE_COST * extra - (0.0 if ended else NO_EOS_PENALTY)


def prompts(rng: random.Random, n: int, cfg: WorldConfig, seen: set[str]) -> list[str]:
    """n new prompts, uniform over tasks and input lengths, none of them in `seen` (which they join)."""
    out = []
    while len(out) < n:
        letters = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(cfg.min_letters, cfg.max_letters)))
        prompt = f"{rng.choice(list(TASKS))} {letters}"
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


def demonstration(prompt: str, rng: random.Random, truncate: float, ramble: float, substitute: float) -> str:
    """A noisy SFT demonstration: stopped early (with probability `truncate`), rambling (`ramble`), one letter
    wrong (`substitute`), or correct."""
    target = solve(prompt)
    u = rng.random()
    if u < truncate and len(target) > 1:
        return target[: -rng.randint(1, min(3, len(target) - 1))]
    u -= truncate
    if u < ramble:
        return target + "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4)))
    u -= ramble
    if u < substitute:
        i = rng.randrange(len(target))
        return target[:i] + rng.choice([c for c in ALPHABET if c != target[i]]) + target[i + 1 :]
    return target


def response_budget(cfg: WorldConfig) -> int:
    """Generation budget: twice the longest target (a `dup` of max_letters) plus 4."""
    return 2 * max(len(solve(f"{task} {'a' * cfg.max_letters}")) for task in TASKS) + 4


def max_length(cfg: WorldConfig) -> int:
    """Longest sequence the world's models see: the longest rendered prompt plus the generation budget.

    In characters, which is the length in tokens for the char-level tokenizer; strong-other's template has one
    more special token and its BPE tokens are at least a character long, so it allows one more
    (`tokenizers.other_max_length`)."""
    return max(map(len, TASKS)) + 1 + cfg.max_letters + 1 + response_budget(cfg)
