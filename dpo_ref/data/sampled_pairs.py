"""`data: instructions`: preference pairs dporef builds from a real chat model with no download.

The policy answers prompts with checkable instructions (instructions.py) `samples_per_prompt` times; the instruction
checks score every sample, the best becomes `chosen` and the worst `rejected` (the UltraFeedback recipe, with a
programmatic judge in GPT-4's place). Prompts whose samples all score the same carry no preference and are counted,
not used. The same checks judge the evaluation (`judge: {kind: builtin}`). The policy samples in its precision regime
(weights and autocast, as it trains and is evaluated), which is part of the cache key: built once per (policy,
regime, settings) into `$DPOREF_CACHE/pairs/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from ..cache import intact_dir
from ..config import InstructionsConfig
from ..generation import Sampling, generate
from ..models import ModelRef, write_errors_named
from ..precision import Regime, regime_for
from ..store import atomic_dir, atomic_write_json, cache_root, content_hash, locked, read_json
from ..ui import console
from . import instructions

VERSION = 3  # bump when the recipe changes: it is part of the cache key (3: sampled under the regime's autocast)


def build_instruction_pairs(
    cfg: InstructionsConfig, policy: ModelRef, tokenizer, batch_size: int, precision: str
) -> tuple[DatasetDict, list[str], dict]:
    """(pairs with splits train/validation, held-out evaluation prompts, statistics), from the cache when built."""
    regime = regime_for(policy, precision)
    key = content_hash([VERSION, policy.fingerprint, regime.key, cfg.model_dump()])
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
            for split in ("train", "validation")
        }
    )
    return pairs, read_json(root / "eval_prompts.json"), read_json(root / "stats.json")


def _build(cfg: InstructionsConfig, policy: ModelRef, tokenizer, batch_size: int, regime: Regime, out: Path) -> None:
    t0 = time.time()
    n_pair_prompts = cfg.n_train_prompts + cfg.n_validation_prompts
    prompts = instructions.make_prompts(n_pair_prompts + cfg.n_eval_prompts, cfg.seed)
    pair_prompts, eval_prompts = prompts[:n_pair_prompts], prompts[n_pair_prompts:]
    model = regime.load(policy)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=batch_size)
    k = cfg.samples_per_prompt
    repeated = [p for p in pair_prompts for _ in range(k)]
    with regime.autocast():
        gens = generate(model, tokenizer, repeated, sampling, cfg.seed, desc="sampling pairs")
    del model
    scores = np.array(
        [instructions.score(p, r, e) for p, r, e in zip(gens.prompts, gens.responses, gens.ended)]
    ).reshape(-1, k)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    ties = {"train": 0, "validation": 0}
    for i, prompt in enumerate(pair_prompts):
        split = "train" if i < cfg.n_train_prompts else "validation"
        row = scores[i]
        best, worst = int(row.argmax()), int(row.argmin())
        if row[best] == row[worst]:
            ties[split] += 1
            continue
        splits[split].append(
            {
                "prompt": prompt,
                "chosen": gens.responses[i * k + best],
                "rejected": gens.responses[i * k + worst],
                "chosen_score": float(row[best]),
                "rejected_score": float(row[worst]),
                "chosen_ended": gens.ended[i * k + best],  # the text is the same either way; the score is not
                "rejected_ended": gens.ended[i * k + worst],
            }
        )
    for split, rows in splits.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {
        "pairs": {s: len(r) for s, r in splits.items()},
        "prompts_all_tied": ties,
        "sample_mean_score": float(scores.mean()),
        "sample_all_passed": float(
            np.mean([instructions.all_passed(p, r, e) for p, r, e in zip(gens.prompts, gens.responses, gens.ended)])
        ),
        "sample_eos_rate": float(np.mean(gens.ended)),
        "build_seconds": time.time() - t0,
    }
    atomic_write_json(out / "eval_prompts.json", eval_prompts)
    atomic_write_json(out / "stats.json", stats)
    console.print(
        f"instruction pairs built in {stats['build_seconds']:.0f}s: {stats['pairs']} pairs, "
        f"{ties} prompts skipped (all samples scored the same), mean sample score {stats['sample_mean_score']:.3f}"
    )
