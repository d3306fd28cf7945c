"""The reference engine: score each (reference, data) once into a content-addressed cache, and score texts.

Training never holds a reference model: each run reads `ref_chosen_logps` / `ref_rejected_logps` from the prepared
data. Every reference scores exactly the response text the policy trains on: the policy's kept prefix of each
response (data/tokenize.py), closed by end-of-turn only when the policy's copy is. A reference that renders text as
the policy does (same vocabulary and template) scores the policy's own token ids; one of another family renders the
kept text with its own tokenizer and template, in full, so that no reference cuts the text elsewhere than the policy.

A cache entry is keyed by the reference's content fingerprint, its precision regime and a digest of the exact token
sequences it scores, so anything that could change the numbers changes the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from transformers import AutoConfig

from .cache import read_entry, write_entry
from .chat import render_many, same_rendering, unconditional_head
from .logprobs import sequence_logps
from .models import ModelRef, load_tokenizer
from .precision import Regime, regime_for
from .store import cache_root, content_hash, locked
from .ui import console

SCORER_VERSION = "2"  # bump when the scoring maths change, to invalidate old cache entries


def sequences_digest(seqs: Sequence[tuple[list[int], list[int]]]) -> str:
    """Digest of token sequences (prompt and completion ids, in order): the data part of a scoring pass's key."""
    h = hashlib.blake2b(digest_size=16)
    for prompt, completion in seqs:
        h.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|" + np.asarray(completion, dtype=np.int64).tobytes())
        h.update(b";")
    return h.hexdigest()


def pair_sequences(tokenizer, policy_tokenizer, ds, unconditional: bool) -> list[tuple[list[int], list[int]]]:
    """The (prompt_ids, completion_ids) a reference scores for each pair of the policy's tokenized `ds`, chosen then
    rejected per pair: the policy's kept completion ids where the tokenizers render alike, else the kept text."""
    if same_rendering(tokenizer, policy_tokenizer):
        heads = [unconditional_head(tokenizer)] * len(ds) if unconditional else ds["prompt_ids"]
        return [(h, c) for h, pair in zip(heads, zip(ds["chosen_ids"], ds["rejected_ids"])) for c in pair]
    prompts = [p for p in ds["prompt"] for _ in range(2)]
    texts = [t for pair in zip(ds["chosen_kept"], ds["rejected_kept"]) for t in pair]
    closed = [e for pair in zip(ds["chosen_closed"], ds["rejected_closed"]) for e in pair]
    return render_many(tokenizer, prompts, texts, unconditional, closed)


@dataclass
class PassReport:
    """What one scoring pass did to the policy's pairs, per split: printed beside the policy's own counts."""

    beyond_max_length: dict[str, int] = field(default_factory=dict)  # in its tokens; scored whole all the same
    over_context: dict[str, int] = field(default_factory=dict)  # pairs longer than its context window: dropped


@dataclass
class ReferenceEngine:
    """Scores references over the policy's tokenized pairs, once per cache key; counts passes computed vs served from
    cache. Within one command an entry is read at most once (kept in memory), so each count is per distinct pass."""

    cache_dir: Path = field(default_factory=lambda: cache_root() / "refscores")
    computed: int = 0
    cached: int = 0
    memo: dict = field(default_factory=dict, repr=False)
    reports: dict[str, PassReport] = field(default_factory=dict)

    def pair_scores(
        self,
        ref: ModelRef,
        pairs: DatasetDict,
        policy_tokenizer,
        max_length: int,
        batch_size: int,
        unconditional: bool = False,
        precision: str = "auto",
    ) -> dict[str, dict[str, np.ndarray]]:
        """{split: {"chosen": log p_ref(yw), "rejected": log p_ref(yl)}} over every row of the tokenized `pairs`, in
        row order; NaN where the pair does not fit the reference's context (the caller drops it)."""
        tokenizer, regime = load_tokenizer(ref), regime_for(ref, precision)
        seqs = {s: pair_sequences(tokenizer, policy_tokenizer, ds, unconditional) for s, ds in pairs.items()}
        mode = "p_LM(y)" if unconditional else "p_ref(y|x)"
        key = content_hash(
            [SCORER_VERSION, ref.fingerprint, regime.key, {s: sequences_digest(q) for s, q in seqs.items()}]
        )
        context = getattr(AutoConfig.from_pretrained(ref.location), "max_position_embeddings", None)
        self.reports[f"{ref.spec} {mode}"] = _report(seqs, max_length, context)
        if key not in self.memo:
            shape = {split: len(rows) // 2 for split, rows in seqs.items()}  # pairs per split
            # looked up under the entry's lock: a second process waits for the first and reads what it scored
            with locked(self.cache_dir / f"{key}.json", on_wait=console.print):
                cached = self._cached(key, shape)
                self.memo[key] = cached or self._score(ref, regime, seqs, batch_size, context, mode, key, shape)
        return self.memo[key]

    def _cached(self, key: str, shape: dict[str, int]) -> dict | None:
        """The entry of `key` when it is intact and holds one score per response of every split (`shape`)."""
        payload = read_entry(self.cache_dir / f"{key}.json", shape, "reference cache entry")
        if payload is None:
            return None
        scores = {
            s: {k: np.array([np.nan if x is None else x for x in v], dtype=np.float64) for k, v in c.items()}
            for s, c in payload["scores"].items()
        }
        sizes = {s: sorted({len(v) for v in c.values()}) for s, c in scores.items()}
        if sizes != {s: [n] for s, n in shape.items()} or any(
            set(c) != {"chosen", "rejected"} for c in scores.values()
        ):
            console.print(f"[yellow]reference cache entry {key} holds {sizes} scores, expected {shape}; rebuilding it")
            return None
        self.cached += 1
        return scores

    def _score(self, ref: ModelRef, regime: Regime, seqs: dict, batch_size: int, context, mode: str, key: str, shape):
        model = regime.load(ref, spread=True)
        scores = {}
        for split, rows in seqs.items():
            fits = [context is None or len(p) + len(c) <= context for p, c in rows]
            logps = np.full(len(rows), np.nan)
            kept = [i for i, ok in enumerate(fits) if ok]
            with regime.autocast():
                desc = f"scoring {ref.spec} {mode} [{split}]"
                logps[kept] = sequence_logps(model, [rows[i] for i in kept], batch_size, desc=desc)
            scores[split] = {"chosen": logps[0::2], "rejected": logps[1::2]}
        del model
        meta = {"spec": ref.spec, "fingerprint": ref.fingerprint, "regime": regime.key, "mode": mode}
        as_lists = {
            s: {k: [None if np.isnan(x) else float(x) for x in v] for k, v in c.items()} for s, c in scores.items()
        }
        write_entry(self.cache_dir / f"{key}.json", {"meta": meta, "scores": as_lists}, shape)
        self.computed += 1
        return scores


def _report(seqs: dict, max_length: int, context: int | None) -> PassReport:
    report = PassReport()
    for split, rows in seqs.items():
        lengths = np.array([len(p) + len(c) for p, c in rows]).reshape(-1, 2) if rows else np.zeros((0, 2))
        report.beyond_max_length[split] = int((lengths > max_length).sum())
        report.over_context[split] = int((lengths > context).any(axis=1).sum()) if context else 0
    return report


def text_logps(
    ref: ModelRef,
    prompts: Sequence,
    responses: Sequence[str],
    ended: Sequence[bool],
    batch_size: int,
    precision: str = "auto",
) -> np.ndarray:
    """log p_ref(y|x) of arbitrary (prompt, response) texts, rendered with the reference's own template (a response
    that did not end without end-of-turn, as everywhere). Not cached: these are a policy's fresh samples (KL)."""
    tokenizer, regime = load_tokenizer(ref), regime_for(ref, precision)
    model = regime.load(ref, spread=True)
    with regime.autocast():
        seqs = render_many(tokenizer, prompts, responses, ended=ended)
        return sequence_logps(model, seqs, batch_size, desc=f"scoring samples under {ref.spec}")


@dataclass(frozen=True)
class ReferenceScorer:
    """log p_ref(y|x) of a policy's samples, for the KL estimate. A reference that renders as the policy does scores
    the sampled tokens themselves; one of another family re-renders the text (`text_logps`). Loaded only when called,
    after training, and freed right after."""

    ref: ModelRef
    policy_tokenizer: object
    batch_size: int
    precision: str = "auto"
    is_policy: bool = False  # the reference is the policy being evaluated (the untrained SFT row): KL is 0

    def logps(self, gens, policy) -> np.ndarray:
        desc = "scoring samples under reference"
        if self.is_policy:
            return sequence_logps(policy, gens.sequences(), self.batch_size, desc=desc)
        if same_rendering(load_tokenizer(self.ref), self.policy_tokenizer):
            regime = regime_for(self.ref, self.precision)
            model = regime.load(self.ref, spread=True)
            with regime.autocast():
                return sequence_logps(model, gens.sequences(), self.batch_size, desc=desc)
        return text_logps(self.ref, gens.prompts, gens.responses, gens.ended, self.batch_size, self.precision)


@dataclass(frozen=True)
class MixtureScorer:
    """log p_mix(y|x) = sum_k w_k log p_k(y|x) of a policy's samples (a `mixture` reference), from its components'
    scorers, each loaded and freed in turn."""

    parts: list[tuple[ReferenceScorer, float]]

    def logps(self, gens, policy) -> np.ndarray:
        return sum(weight * scorer.logps(gens, policy) for scorer, weight in self.parts)


def similarity(
    policy: dict[str, np.ndarray], ref: dict[str, np.ndarray], tokens: dict[str, np.ndarray]
) -> dict[str, float]:
    """How alike a reference is to the policy's starting point, from their scores of the same training pairs (before
    any training). Every chosen and rejected response counts as one response y; `tokens` holds the policy's token
    count of each. Both models' sequence log-probs are divided by that count: summed over a response, either model's
    log-prob tracks its length, which alone makes two unrelated models' sums correlate near 1. A reference with
    another tokenizer scores the same text, so both are per policy token. A response of no tokens is left out.

    - `token_log_ratio`: mean over the responses of (log p_policy(y|x) - log p_ref(y|x)) / tokens. It is a KL estimate
      only when the responses are the policy's own samples at temperature 1; the KL itself is `sft_ref_kl`
      (stages/prepare.py).
    - `token_logp_corr`: Pearson correlation of the two models' per-token log-probs over the responses.
    - `ref_pref_acc`: share of pairs where the reference alone gives the chosen response the higher log-prob. It
      measures how well the reference ranks the pairs, i.e. its strength, not its likeness to the policy.
    """
    n = np.concatenate([tokens["chosen"], tokens["rejected"]]).astype(np.float64)
    scored = n > 0
    p = np.concatenate([policy["chosen"], policy["rejected"]])[scored] / n[scored]
    r = np.concatenate([ref["chosen"], ref["rejected"]])[scored] / n[scored]
    wins = np.where(ref["chosen"] > ref["rejected"], 1.0, np.where(ref["chosen"] == ref["rejected"], 0.5, 0.0))
    return {
        "token_log_ratio": float(np.mean(p - r)),
        "token_logp_corr": float(np.corrcoef(p, r)[0, 1]),
        "ref_pref_acc": float(wins.mean()),
    }
