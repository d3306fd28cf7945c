"""`data: instructions`: preference pairs dporef builds from a real chat model with no download.

The policy answers prompts with checkable instructions (instructions.py) `samples_per_prompt` times; the instruction
checks score every sample (finishing with EOS within `max_new_tokens` being one check) and `pairing` picks a prompt's
chosen and rejected among its samples with `select_pair`, a pure function of the samples' scores, ended flags and
token lengths (the response text in the policy's tokenizer, no special tokens):

    best_worst      chosen = the best sample, rejected = the worst (the UltraFeedback recipe, with a programmatic
                    judge in GPT-4's place). Skipped: `all_tied`, every sample scores the same.
    both_ended      the same among the samples that ended only. Skipped: `fewer_than_2_ended`, then `all_tied` (the
                    ended samples all score the same).
    length_matched  among the pairs of samples with different scores, the same ended status (both ended or both ran
                    out of budget) and token lengths a, b with |a - b| <= length_tolerance * max(a, b) (equality
                    inside), the one with the largest score gap; chosen = its better sample. Ties: the closest
                    lengths, then the lowest indices (the pair (i, j), i < j, first in lexicographic order).
                    Skipped, checked in this order: `all_tied` (no two samples score differently),
                    `no_same_ended_pair` (every pair that differs in score differs in ended status),
                    `lengths_too_far` (some do not, but none within the tolerance).

Why: with `best_worst` on SmolLM2 most rejected samples ran out of budget and few chosen did, so DPO mostly learns
to stop sooner (raw win rate up, length-controlled win rate below 0.5). In both other modes both sides share their
ended status, so the ended check never decides and the instruction checks do. Among equal scores (and gaps) the
lowest index wins; scores equal to SCORE_DIGITS decimals are equal (1 - 1/3 and 2/3 - 0 are one gap). The same
checks judge the evaluation (`judge: {kind: builtin}`). Skipped prompts are counted by split and reason in
stats.json, with the share of chosen and rejected answers that ended and their mean token lengths. The policy samples
in its precision regime (weights and autocast, as it trains and is evaluated), which is part of the cache key: built
once per (policy, regime, settings) into `$DPOREF_CACHE/pairs/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from ..cache import intact_dir
from ..config import InstructionsConfig
from ..generation import Generations, Sampling, generate
from ..models import ModelRef, write_errors_named
from ..precision import Regime, regime_for
from ..store import atomic_dir, atomic_write_json, cache_root, content_hash, locked, read_json
from ..ui import console
from . import instructions

VERSION = 4  # bump when the recipe changes: it is part of the cache key (3: sampled under the regime's autocast;
# 4: `pairing`, and per-split statistics of the pairs kept and the prompts skipped)
SKIP_REASONS = {  # why a prompt gives no pair, per pairing, in the order they are checked
    "best_worst": ("all_tied",),
    "both_ended": ("fewer_than_2_ended", "all_tied"),
    "length_matched": ("all_tied", "no_same_ended_pair", "lengths_too_far"),
}
SCORE_DIGITS = 9  # scores and score gaps equal to this many decimals are equal (k/n floats differ in the last bit)
LENGTH_SLACK = 1e-9  # |a - b| <= tolerance * max(a, b) holds at equality despite rounding (0.29 * 100 < 29 in floats)
SPLITS = ("train", "validation")


def build_instruction_pairs(
    cfg: InstructionsConfig, policy: ModelRef, tokenizer, batch_size: int, precision: str
) -> tuple[DatasetDict, list[str], dict]:
    """(pairs with splits train/validation, held-out evaluation prompts, statistics), from the cache when built."""
    regime = regime_for(policy, precision)
    key = content_hash([VERSION, policy.fingerprint, regime.key, cfg.identity()])
    root = cache_root() / "pairs" / f"instructions-{key}"
    with locked(root, on_wait=console.print):  # a second process waits for the first build, then reads it
        if not intact_dir(root, "instruction pairs"):
            with atomic_dir(root) as tmp, write_errors_named(root):
                _build(cfg, policy, tokenizer, batch_size, regime, Path(tmp))
    # split on "\n" only: str.splitlines also splits on \x1c, \x85, \u2028 ... (json.dumps escapes them all, but
    # one rule for every JSON-lines file dporef reads)
    pairs = DatasetDict(
        {
            split: Dataset.from_list([json.loads(x) for x in (root / f"{split}.jsonl").read_text().split("\n") if x])
            for split in SPLITS
        }
    )
    return pairs, read_json(root / "eval_prompts.json"), read_json(root / "stats.json")


def select_pair(
    pairing: str,
    scores: Sequence[float],
    ended: Sequence[bool],
    lengths: Sequence[int],
    tolerance: float | None = None,
) -> tuple[int, int] | str:
    """(chosen, rejected), indices into one prompt's samples, or the reason the prompt is skipped (one of
    SKIP_REASONS[pairing]); the rules are in the module docstring. `tolerance` is read by length_matched only."""
    if not len(scores) == len(ended) == len(lengths):
        raise ValueError(f"{len(scores)} scores, {len(ended)} ended flags and {len(lengths)} lengths")
    if pairing == "best_worst":
        return _best_and_worst(scores, range(len(scores)))
    if pairing == "both_ended":
        done = [i for i, e in enumerate(ended) if e]
        return _best_and_worst(scores, done) if len(done) >= 2 else "fewer_than_2_ended"
    if pairing == "length_matched":
        if tolerance is None:
            raise ValueError("pairing length_matched needs a tolerance")
        return _length_matched(scores, ended, lengths, tolerance)
    raise ValueError(f"unknown pairing {pairing!r}; allowed: {', '.join(SKIP_REASONS)}")


def _gap(a: float, b: float) -> float:
    return round(abs(a - b), SCORE_DIGITS)


def _best_and_worst(scores: Sequence[float], candidates: Sequence[int]) -> tuple[int, int] | str:
    """The best and the worst candidate, the lowest index among equals (max and min return the first)."""
    best = max(candidates, key=lambda i: scores[i])
    worst = min(candidates, key=lambda i: scores[i])
    return "all_tied" if _gap(scores[best], scores[worst]) == 0 else (best, worst)


def _length_matched(
    scores: Sequence[float], ended: Sequence[bool], lengths: Sequence[int], tolerance: float
) -> tuple[int, int] | str:
    n = len(scores)
    differ = [(i, j) for i in range(n) for j in range(i + 1, n) if _gap(scores[i], scores[j]) > 0]
    if not differ:
        return "all_tied"
    same = [(i, j) for i, j in differ if ended[i] == ended[j]]
    if not same:
        return "no_same_ended_pair"
    close = [(i, j) for i, j in same if _within(lengths[i], lengths[j], tolerance)]
    if not close:
        return "lengths_too_far"
    i, j = min(close, key=lambda p: (-_gap(scores[p[0]], scores[p[1]]), abs(lengths[p[0]] - lengths[p[1]]), p))
    return (i, j) if scores[i] > scores[j] else (j, i)


def _within(a: int, b: int, tolerance: float) -> bool:
    """|a - b| <= tolerance * max(a, b), equality inside."""
    return abs(a - b) <= tolerance * max(a, b) + LENGTH_SLACK


def _sample(
    cfg: InstructionsConfig, policy: ModelRef, tokenizer, batch_size: int, regime: Regime, prompts
) -> Generations:
    """`samples_per_prompt` samples of each prompt, consecutive, under the regime's weights and autocast."""
    model = regime.load(policy)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=batch_size)
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    with regime.autocast():
        gens = generate(model, tokenizer, repeated, sampling, cfg.seed, desc="sampling pairs")
    del model
    return gens


def _token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text in `tokenizer`, special tokens not added: what length_matched compares and stats report."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _prompts(cfg: InstructionsConfig) -> tuple[list[str], list[str]]:
    """(pair prompts, training then validation; evaluation prompts). The seed's prompts in order are the first
    `n_train_prompts` training ones, the validation ones, the evaluation ones, then the `extra_train_prompts`: more
    training prompts leave the held-out ones as they were."""
    n_train, n_held = cfg.n_train_prompts, cfg.n_validation_prompts + cfg.n_eval_prompts
    prompts = instructions.make_prompts(cfg.train_prompts + n_held, cfg.seed)
    train = prompts[:n_train] + prompts[n_train + n_held :]
    validation = prompts[n_train : n_train + cfg.n_validation_prompts]
    return train + validation, prompts[n_train + cfg.n_validation_prompts : n_train + n_held]


def _build(cfg: InstructionsConfig, policy: ModelRef, tokenizer, batch_size: int, regime: Regime, out: Path) -> None:
    t0 = time.time()
    pair_prompts, eval_prompts = _prompts(cfg)
    gens = _sample(cfg, policy, tokenizer, batch_size, regime, pair_prompts)
    scores = [instructions.score(p, r, e) for p, r, e in zip(gens.prompts, gens.responses, gens.ended)]
    lengths = _token_lengths(tokenizer, gens.responses)
    k = cfg.samples_per_prompt
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    picked: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}  # token lengths (chosen, rejected) per row
    skipped = {s: dict.fromkeys(SKIP_REASONS[cfg.pairing], 0) for s in SPLITS}
    for i, prompt in enumerate(pair_prompts):
        split = "train" if i < cfg.train_prompts else "validation"
        at = slice(i * k, (i + 1) * k)
        pick = select_pair(cfg.pairing, scores[at], gens.ended[at], lengths[at], cfg.length_tolerance)
        if isinstance(pick, str):
            skipped[split][pick] += 1
            continue
        c, r = (i * k + j for j in pick)
        rows[split].append(
            {
                "prompt": prompt,
                "chosen": gens.responses[c],
                "rejected": gens.responses[r],
                "chosen_score": scores[c],
                "rejected_score": scores[r],
                "chosen_ended": gens.ended[c],  # the text is the same either way; the score is not
                "rejected_ended": gens.ended[r],
            }
        )
        picked[split].append((lengths[c], lengths[r]))
    for split, split_rows in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    stats = {
        "pairing": cfg.pairing,
        "length_tolerance": cfg.length_tolerance,
        "pairs": {s: len(r) for s, r in rows.items()},
        "prompts_all_tied": {s: skipped[s].get("all_tied", 0) for s in SPLITS},  # as before `pairing` (data's note)
        "splits": {s: _split_stats(rows[s], picked[s], skipped[s]) for s in SPLITS},
        "sample_mean_score": float(np.mean(scores)),
        "sample_all_passed": float(
            np.mean([instructions.all_passed(p, r, e) for p, r, e in zip(gens.prompts, gens.responses, gens.ended)])
        ),
        "sample_eos_rate": float(np.mean(gens.ended)),
        "sample_mean_tokens": float(np.mean(lengths)),
        "build_seconds": time.time() - t0,
    }
    atomic_write_json(out / "eval_prompts.json", eval_prompts)
    atomic_write_json(out / "stats.json", stats)
    console.print(_summary(stats))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _split_stats(rows: list[dict], lengths: list[tuple[int, int]], skipped: dict[str, int]) -> dict:
    """One split's prompts kept and skipped (by reason), and the share that ended and mean tokens of each side."""
    return {
        "prompts": len(rows) + sum(skipped.values()),
        "kept": len(rows),
        "skipped": skipped,
        "chosen_ended": _mean([r["chosen_ended"] for r in rows]),
        "rejected_ended": _mean([r["rejected_ended"] for r in rows]),
        "chosen_tokens": _mean([c for c, _ in lengths]),
        "rejected_tokens": _mean([r for _, r in lengths]),
    }


def _summary(stats: dict) -> str:
    """The one line a build prints: per split, prompts kept, skips by reason, ended shares and mean tokens."""

    def num(x, spec):
        return "-" if x is None else format(x, spec)

    parts = []
    for split, s in stats["splits"].items():
        skips = ", ".join(f"{n} {reason}" for reason, n in s["skipped"].items())
        parts.append(
            f"{split} {s['kept']}/{s['prompts']} prompts kept (skipped: {skips}), ended chosen "
            f"{num(s['chosen_ended'], '.2f')} rejected {num(s['rejected_ended'], '.2f')}, mean tokens chosen "
            f"{num(s['chosen_tokens'], '.1f')} rejected {num(s['rejected_tokens'], '.1f')}"
        )
    return (
        f"instruction pairs ({stats['pairing']}) built in {stats['build_seconds']:.0f}s, mean sample score "
        f"{stats['sample_mean_score']:.3f}: " + "; ".join(parts)
    )
