"""The reference engine: score each (reference, data) once into a content-addressed cache, and score texts.

Training never holds a reference model: each run reads `ref_chosen_logps` / `ref_rejected_logps` from the cache.
A cache entry is keyed by the reference's content fingerprint (weights, config, tokenizer, template), the pairs'
content, `max_length` and the mode (conditional p_ref(y|x) or unconditional p_LM(y)), so anything that could change
the numbers changes the key. A reference renders the text with its own tokenizer and chat template, so references of
another family (other tokenizer) score exactly the same responses as the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from .chat import end_of_turn_length, render_many
from .logprobs import sequence_logps
from .models import ModelRef, load_model, load_tokenizer, use_bf16
from .store import atomic_write_json, cache_root, content_hash, read_json
from .ui import console

SCORER_VERSION = "1"  # bump when the scoring maths change, to invalidate old cache entries


@dataclass
class ReferenceEngine:
    """Scores references over preference pairs, once per cache key; counts passes computed vs served from cache.
    Within one command an entry is read at most once (kept in memory), so each count is per distinct reference."""

    cache_dir: Path = field(default_factory=lambda: cache_root() / "refscores")
    computed: int = 0
    cached: int = 0
    memo: dict = field(default_factory=dict, repr=False)

    def key(self, ref: ModelRef, pairs_fp: str, max_length: int, unconditional: bool) -> str:
        mode = "unconditional" if unconditional else "conditional"
        return content_hash([SCORER_VERSION, ref.fingerprint, pairs_fp, max_length, mode])

    def pair_scores(
        self,
        ref: ModelRef,
        pairs: DatasetDict,
        pairs_fp: str,
        max_length: int,
        batch_size: int,
        unconditional: bool = False,
        precision: str = "auto",
    ) -> dict[str, dict[str, np.ndarray]]:
        """{split: {"chosen": log p_ref(yw), "rejected": log p_ref(yl)}} over every row of `pairs`, in row order."""
        key = self.key(ref, pairs_fp, max_length, unconditional)
        if key in self.memo:
            return self.memo[key]
        path = self.cache_dir / f"{key}.json"
        if path.is_file():
            try:
                entry = read_json(path)
                self.memo[key] = {s: {k: np.asarray(v) for k, v in c.items()} for s, c in entry["scores"].items()}
                self.cached += 1
                return self.memo[key]
            except (ValueError, KeyError):
                console.print(f"[yellow]reference cache entry {path} is corrupt; rescoring")
        tokenizer = load_tokenizer(ref)
        model = load_model(ref, bf16=use_bf16(precision))
        scores = {}
        for split, ds in pairs.items():
            prompts = [p for p in ds["prompt"] for _ in range(2)]
            responses = [y for pair in zip(ds["chosen"], ds["rejected"]) for y in pair]
            seqs = render_many(tokenizer, prompts, responses, unconditional)
            mode = "p_LM(y)" if unconditional else "p_ref(y|x)"
            logps = sequence_logps(model, seqs, batch_size, max_length, desc=f"scoring {ref.spec} {mode} [{split}]")
            scores[split] = {"chosen": logps[0::2], "rejected": logps[1::2]}
        del model
        meta = {
            "spec": ref.spec,
            "fingerprint": ref.fingerprint,
            "max_length": max_length,
            "unconditional": unconditional,
            "pairs": pairs_fp,
        }
        self.memo[key] = scores
        atomic_write_json(
            path,
            {"meta": meta, "scores": {s: {k: v.tolist() for k, v in c.items()} for s, c in scores.items()}},
        )
        self.computed += 1
        return scores


def text_logps(
    ref: ModelRef,
    prompts: Sequence,
    responses: Sequence[str],
    ended: Sequence[bool],
    batch_size: int,
    precision: str = "auto",
) -> np.ndarray:
    """log p_ref(y|x) of arbitrary (prompt, response) texts, rendered with the reference's own template; a response
    that did not end (hit the length limit) is scored without the template's end-of-turn tokens. Not cached: these
    are a policy's fresh samples (KL estimates)."""
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, bf16=use_bf16(precision))
    end_of_turn = end_of_turn_length(tokenizer, prompts[0]) if len(prompts) else 0
    seqs = []
    for (prompt_ids, completion), done in zip(render_many(tokenizer, prompts, responses), ended):
        seqs.append((prompt_ids, completion if done else completion[: len(completion) - end_of_turn]))
    return sequence_logps(model, seqs, batch_size, desc=f"scoring samples under {ref.spec}")


@dataclass(frozen=True)
class SampleScorer:
    """log p_ref(y|x) of a policy's samples, for the KL estimate. A reference that shares the policy's tokenizer and
    template scores the sampled tokens themselves; one of another family re-renders the text (`text_logps`). Loaded
    only when called, after training, and freed right after."""

    ref: ModelRef
    policy_tokenizer: object
    batch_size: int
    precision: str = "auto"
    is_policy: bool = False  # the reference is the policy being evaluated (the untrained SFT row): KL is 0

    def logps(self, gens, policy) -> np.ndarray:
        desc = "scoring samples under reference"
        if self.is_policy:
            return sequence_logps(policy, gens.sequences(), self.batch_size, desc=desc)
        tok = load_tokenizer(self.ref)
        same = tok.get_vocab() == self.policy_tokenizer.get_vocab()
        if same and tok.chat_template == self.policy_tokenizer.chat_template:
            model = load_model(self.ref, bf16=use_bf16(self.precision))
            return sequence_logps(model, gens.sequences(), self.batch_size, desc=desc)
        return text_logps(self.ref, gens.prompts, gens.responses, gens.ended, self.batch_size, self.precision)


def similarity(policy: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """How alike a reference is to the policy's starting point, from their cached scores of the same pairs (before
    any training). Every chosen and rejected response counts as one sample y.

    - `log_ratio`: mean of log p_policy(y|x) - log p_ref(y|x); when the responses are samples of the policy (as in
      the embedded world, and in on-policy data) this is the sequence-level KL(policy || ref).
    - `logp_corr`: Pearson correlation of the two models' sequence log-probs over the responses.
    - `ref_pref_acc`: share of pairs where the reference alone gives the chosen response the higher log-prob.
    """
    p = np.concatenate([policy["chosen"], policy["rejected"]])
    r = np.concatenate([ref["chosen"], ref["rejected"]])
    wins = np.where(ref["chosen"] > ref["rejected"], 1.0, np.where(ref["chosen"] == ref["rejected"], 0.5, 0.0))
    return {
        "log_ratio": float(np.mean(p - r)),
        "logp_corr": float(np.corrcoef(p, r)[0, 1]),
        "ref_pref_acc": float(wins.mean()),
    }
