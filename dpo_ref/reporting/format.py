"""How a report's numbers are written: one format per column, intervals in brackets beside their metric, the same in
markdown and on the terminal."""

from __future__ import annotations

import math

from rich.table import Table

from .uncertainty import METRICS

TWO_DECIMALS = {"length", "kl", "kl_se", "kl_k3", "kl_k3_se", "kl_sft", "kl_sft_se", "train_seconds", "eval_seconds"}
TWO_DECIMALS |= {"train_loss"}


def fmt(v, col: str) -> str:
    """A value as its column shows it: beta as written, lengths, KL, seconds and losses to 2 decimals, shares to 3."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if col in ("beta", "best_beta"):
            return f"{v:g}"
        return f"{v:.2f}" if col in TWO_DECIMALS else f"{v:.3f}"
    return str(v)


def cell(r: dict, c: str) -> str:
    """A table's cell; the status of a flagged run names its flags, e.g. `done (grad-collapse)`; a metric with an
    interval shows it in brackets, e.g. `0.550 [0.521, 0.579]`."""
    if c == "status" and r.get("flags"):
        return f"{r['status']} ({r['flags']})"
    if (c in METRICS or c.startswith("ae_")) and r.get(f"{c}_lo") is not None:
        return f"{fmt(r[c], c)} [{fmt(r[c + '_lo'], c)}, {fmt(r[c + '_hi'], c)}]"
    return fmt(r.get(c), c)


def to_markdown(rows: list[dict], columns: list[str], caption: str) -> str:
    lines = [f"{caption}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict], columns: list[str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("run_id", "status", "method") else "right")
    for r in rows:
        style = {"done": None, "degenerate": "yellow", "damaged": "red"}.get(r.get("status", "done"), "dim")
        table.add_row(*[cell(r, c) for c in columns], style=style)
    return table
