"""Token-level analysis of a trained policy (Liu, Liu and Cohan, arXiv 2407.13709, Figs. 1 and 2): which vocabulary
items DPO moved, and how far.

For every token of the validation responses (chosen and rejected), the log-ratio
log p_theta(y_i | x, y_<i) - log p_ref(y_i | x, y_<i) is averaged per vocabulary item. The histogram of those
per-item means (log-scale counts) shows that most items move a little and a few a lot; the table lists the most up-
and down-weighted items seen at least `min_count` times, with EOS singled out.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..expdir import RunDir
from ..logprobs import sequence_logps
from ..store import atomic_write_text
from .plots import pyplot, save_png


def token_log_ratios(policy, reference, sequences, batch_size: int, max_length: int | None = None):
    """(token ids, per-token log-ratios) over every completion token of `sequences` [(prompt_ids, completion_ids)]."""
    _, pol = sequence_logps(policy, sequences, batch_size, max_length, desc="policy per-token", per_token=True)
    _, ref = sequence_logps(reference, sequences, batch_size, max_length, desc="reference per-token", per_token=True)
    ids = np.concatenate([np.asarray(c[: len(p_tok)]) for (_, c), p_tok in zip(sequences, pol)])
    return ids, np.concatenate(pol) - np.concatenate(ref)


def per_item(ids: np.ndarray, ratios: np.ndarray) -> dict[int, tuple[float, int]]:
    """{token id: (mean log-ratio, count)}."""
    sums = np.bincount(ids, weights=ratios)
    counts = np.bincount(ids)
    return {int(t): (float(sums[t] / counts[t]), int(counts[t])) for t in np.flatnonzero(counts)}


def write_analysis(run_dir: RunDir, items: dict, tokenizer, min_count: int, top: int, title: str) -> dict:
    rows = sorted(
        (
            {"id": t, "token": tokenizer.convert_ids_to_tokens(t), "mean_log_ratio": m, "count": n}
            for t, (m, n) in items.items()
        ),
        key=lambda r: r["mean_log_ratio"],
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "token", "mean_log_ratio", "count"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir.analysis_file("tokens.csv"), buf.getvalue())
    frequent = [r for r in rows if r["count"] >= min_count]
    eos = next((r for r in rows if r["id"] == tokenizer.eos_token_id), None)
    rank = next((i + 1 for i, r in enumerate(frequent) if r["id"] == tokenizer.eos_token_id), None)

    def table(selection):
        lines = ["| token | mean log-ratio | count |", "|---|---|---|"]
        return lines + [f"| `{r['token']}` | {r['mean_log_ratio']:+.3f} | {r['count']} |" for r in selection]

    eos_line = (
        f"EOS `{eos['token']}`: mean log-ratio {eos['mean_log_ratio']:+.3f} over {eos['count']} tokens; "
        f"rank {rank} of {len(frequent)} most down-weighted"
        if eos
        else "EOS does not occur"
    )
    md = [
        f"# Token-level log-ratios of {title} (validation responses)\n",
        eos_line + "\n",
        f"Most down-weighted (seen >= {min_count} times):\n",
        *table(frequent[:top]),
        f"\nMost up-weighted (seen >= {min_count} times):\n",
        *table(frequent[::-1][:top]),
    ]
    atomic_write_text(run_dir.analysis_file("tokens.md"), "\n".join(md) + "\n")
    _histogram(run_dir.analysis_file("histogram.png"), [r["mean_log_ratio"] for r in rows], eos, title)
    return {
        "items": len(rows),
        "frequent": len(frequent),
        "eos": eos,
        "eos_rank": rank,
        "down": frequent[:top],
        "up": frequent[::-1][:top],
    }


def _histogram(path: Path, values: list[float], eos: dict | None, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    ax.hist(values, bins=40, log=True, color="tab:blue")
    if eos is not None:
        ax.axvline(eos["mean_log_ratio"], color="red", linestyle="--", label="EOS")
        ax.legend()
    ax.set_xlabel("mean log p_theta / p_ref per vocabulary item")
    ax.set_ylabel("items (log scale)")
    ax.set_title(title)
    save_png(fig, path)
