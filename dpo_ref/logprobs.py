"""Log-probabilities of completions under a model, with the per-token kernel TRL's DPOTrainer uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from trl.trainer.utils import add_fused_lm_head

from .ui import progress

# On a CPU a forward pass over more than ~2k tokens gets slower per token (its activations outgrow the caches): a
# 26M-parameter Llama scored 96 sequences of ~200 tokens in 5.7 s at 8 per batch, 8.2 s at 64 (bench/sweep_cost.py's
# model). Batches on a CPU therefore hold at most this many tokens (padding included), however large `batch_size`.
CPU_BATCH_TOKENS = 2048


def batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Indices of `lengths` longest first, in batches of at most `batch_size` rows and (if set) `max_tokens` padded
    tokens: little padding, and a budget a CPU can hold in its caches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, start = [], 0
    while start < len(order):
        rows = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // lengths[order[start]]))
        out.append(order[start : start + rows])
        start += rows
    return out


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
    lengths = [min(len(p) + len(c), max_length or len(p) + len(c)) for p, c in sequences]
    sums = np.zeros(len(sequences), dtype=np.float64)
    tokens: list[np.ndarray | None] = [None] * len(sequences)
    with progress() as bar:
        task = bar.add_task(desc, total=len(sequences))
        for idx in batches(lengths, batch_size, CPU_BATCH_TOKENS if dev.type == "cpu" else None):
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
