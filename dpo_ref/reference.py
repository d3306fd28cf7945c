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
import torch
from datasets import DatasetDict
from trl.trainer.utils import add_fused_lm_head

from .data import render
from .models import ModelRef, load_model, load_tokenizer, use_bf16
from .store import atomic_write_json, cache_root, content_hash, read_json
from .ui import console, progress

SCORER_VERSION = "1"  # bump when the scoring maths change, to invalidate old cache entries


@torch.no_grad()
def sequence_logps(
    model,
    sequences: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    max_length: int | None = None,
    desc: str = "scoring",
    per_token: bool = False,
):
    """Summed log p(completion | prompt) of each (prompt_ids, completion_ids); with `per_token`, also the per-token
    log-probs of each completion. Sequences are truncated to `max_length` keeping the start, as TRL does."""
    if not hasattr(model, "_dporef_fused"):
        add_fused_lm_head(model)  # the same per-token log-prob kernel TRL's DPOTrainer uses
        model._dporef_fused = True
    model.eval()
    dev = next(model.parameters()).device
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]) - len(sequences[i][1]))
    sums = np.zeros(len(sequences), dtype=np.float64)
    tokens: list[np.ndarray | None] = [None] * len(sequences)
    with progress() as bar:
        task = bar.add_task(desc, total=len(sequences))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, masks = [], []
            for i in idx:
                p, c = sequences[i]
                seq, mask = list(p) + list(c), [0] * len(p) + [1] * len(c)
                if max_length is not None:
                    seq, mask = seq[:max_length], mask[:max_length]
                ids.append(seq)
                masks.append(mask)
            width = max(len(s) for s in ids)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            completion = torch.zeros((len(idx), width), dtype=torch.long)
            for row, (s, m) in enumerate(zip(ids, masks)):
                input_ids[row, : len(s)] = torch.tensor(s)
                attention[row, : len(s)] = 1
                completion[row, : len(m)] = torch.tensor(m)
            input_ids, attention, completion = input_ids.to(dev), attention.to(dev), completion.to(dev)
            labels = input_ids.masked_fill(completion == 0, -100)
            out = model(
                input_ids=input_ids,
                attention_mask=attention,
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
            )
            logps = out.log_probs.float() * completion[:, 1:]  # log-prob of token t+1 at position t
            for row, i in enumerate(idx):
                sums[i] = logps[row].sum().item()
                if per_token:
                    tokens[i] = logps[row][completion[row, 1:].bool()].cpu().numpy()
            bar.advance(task, len(idx))
    return (sums, tokens) if per_token else sums


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
            seqs = []
            for prompt, chosen, rejected in zip(ds["prompt"], ds["chosen"], ds["rejected"]):
                seqs.append(render(tokenizer, prompt, chosen, unconditional))
                seqs.append(render(tokenizer, prompt, rejected, unconditional))
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

    def text_scores(
        self,
        ref: ModelRef,
        prompts: Sequence,
        responses: Sequence[str],
        ended: Sequence[bool],
        batch_size: int,
        precision: str = "auto",
    ) -> np.ndarray:
        """log p_ref(y|x) of arbitrary (prompt, response) texts, rendered with the reference's own template; a
        response that did not end (hit the length limit) is scored without the template's end-of-turn tokens.
        Not cached: these are a policy's fresh samples (KL estimates)."""
        tokenizer = load_tokenizer(ref)
        model = load_model(ref, bf16=use_bf16(precision))
        end_of_turn = len(render(tokenizer, prompts[0], "")[1]) if len(prompts) else 0
        seqs = []
        for p, r, done in zip(prompts, responses, ended):
            prompt_ids, completion = render(tokenizer, p, r)
            seqs.append((prompt_ids, completion if done else completion[: len(completion) - end_of_turn]))
        return sequence_logps(model, seqs, batch_size, desc=f"scoring samples under {ref.spec}")


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
