"""95% intervals on a report's numbers, and which settings the best one cannot be told apart from.

Read from the files the runs wrote (their judged samples in generations.jsonl, the SFT baseline's in
baseline/test.jsonl, metrics.json), so a report rebuilt from older runs shows them too. Per run: win rate (exact
binomial without ties, else bootstrap), LC win rate (robust GLM interval), reward and length (bootstrap), KL
(normal, from its standard error). The best setting is compared with every other on the same prompts and the same
baseline samples: a paired interval of the difference in per-prompt preference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.intervals import (
    distinguishable,
    mean_interval,
    normal_interval,
    paired_difference_interval,
    win_rate_interval,
)
from ..evaluation.judges import RewardModelJudge, RuleJudge
from ..evaluation.length_controlled import lc_interval
from ..store import read_jsonl
from .plots import setting_label

METRICS = ("win_rate", "lc_win_rate", "reward", "length", "kl")
INTERVAL_COLUMNS = [f"{m}_{end}" for m in METRICS for end in ("lo", "hi")]
FINISHED = ("done", "degenerate")


def per_prompt(exp_dir: Path, run_id: str, judge_kind: str) -> dict | None:
    """A run's per-prompt preference over the baseline, reward and length (and the baseline's lengths), or None when
    its samples and the baseline's are not on the same prompts."""
    try:
        gens, base = read_jsonl(exp_dir / run_id / "generations.jsonl"), read_jsonl(exp_dir / "baseline" / "test.jsonl")
    except (OSError, ValueError):
        return None
    if [g["prompt"] for g in gens] != [b["prompt"] for b in base]:
        return None
    preferences = RewardModelJudge.preferences if judge_kind == "reward-model" else RuleJudge.preferences
    rewards = np.array([g["reward"] for g in gens], dtype=np.float64)
    return {
        "prefs": preferences(rewards, [b["reward"] for b in base]),
        "rewards": rewards,
        "lengths": np.array([g["length"] for g in gens], dtype=np.float64),
        "base_lengths": np.array([b["length"] for b in base], dtype=np.float64),
    }


def add_run_intervals(exp_dir: Path, rows: list[dict], judge_kind: str) -> dict[str, dict]:
    """Fill each finished row's `<metric>_lo` / `<metric>_hi`; returns the per-prompt values by run id."""
    samples = {}
    for row in rows:
        s = per_prompt(exp_dir, row["run_id"], judge_kind) if row["status"] in FINISHED else None
        if s is None:
            continue
        samples[row["run_id"]] = s
        bounds = {
            "win_rate": win_rate_interval(s["prefs"]),
            "lc_win_rate": lc_interval(s["prefs"], s["lengths"], s["base_lengths"]),
            "reward": mean_interval(s["rewards"]),
            "length": mean_interval(s["lengths"]),
            "kl": normal_interval(row["kl"], row["kl_se"]) if row.get("kl_se") is not None else (None, None),
        }
        for metric, (lo, hi) in bounds.items():
            row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
    return samples


def indistinguishable(rows: list[dict], samples: dict[str, dict]) -> dict | None:
    """The trained setting with the highest test win rate (mean over its seeds) and every setting whose per-prompt
    preference does not differ from it at 95% (paired over prompts; seeds averaged per prompt first)."""
    settings: dict[tuple, list[np.ndarray]] = {}
    for r in rows:
        if r["beta"] is not None and r["run_id"] in samples:
            settings.setdefault((r["objective"], r["reference"], r["beta"]), []).append(samples[r["run_id"]]["prefs"])
    if len(settings) < 2:
        return None
    prefs = {key: np.mean(group, axis=0) for key, group in settings.items()}
    best = max(prefs, key=lambda k: prefs[k].mean())

    def name(key):
        return f"{setting_label({'objective': key[0], 'reference': key[1]})} beta {key[2]:g}"

    same, differences = [], {}
    for key, p in prefs.items():
        if key == best:
            continue
        lo, hi = paired_difference_interval(prefs[best], p)
        differences[name(key)] = [lo, hi]
        if not distinguishable((lo, hi)):
            same.append(key)
    return {
        "best": name(best),
        "best_key": list(best),
        "indistinguishable": [name(k) for k in same],
        "indistinguishable_keys": [list(k) for k in same],  # (objective, reference, beta), as in the tables
        "differences": differences,  # best minus each other setting: 95% paired interval of the win-rate difference
    }


def describe(result: dict | None) -> str:
    """The markdown/terminal lines saying which settings are distinguishable from the best."""
    if result is None:
        return ""
    same = ", ".join(result["indistinguishable"]) or "none"
    return (
        f"\nBest setting on the test prompts: {result['best']}. Not distinguishable from it at 95% (paired interval "
        f"of the per-prompt win-rate difference includes 0): {same}.\n"
    )
