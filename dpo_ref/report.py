"""Results tables and plots, rebuilt from the run directories on disk (so `dporef report` and resumes agree)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from rich.table import Table

from .store import atomic_write_json, atomic_write_text, read_json

COLUMNS = [
    "run_id",
    "objective",
    "reference",
    "beta",
    "seed",
    "status",
    "win_rate",
    "win_rate_se",
    "reward",
    "length",
    "eos_rate",
    "kl",
    "kl_se",
    "kl_k3",
    "kl_k3_se",
    "rank_acc_reward",
    "rank_acc_policy",
    "train_loss",
    "steps",
    "train_seconds",
    "eval_seconds",
]
SHOWN = [
    "run_id",
    "beta",
    "status",
    "win_rate",
    "reward",
    "length",
    "eos_rate",
    "kl",
    "rank_acc_reward",
    "rank_acc_policy",
]


def collect(exp_dir: Path, run_ids: list[str]) -> list[dict]:
    """One row per run, in grid order: its spec and status, plus its metrics when it finished."""
    rows = []
    for run_id in run_ids:
        run_dir = exp_dir / run_id
        row = {c: None for c in COLUMNS}
        if (run_dir / "run.yaml").is_file():
            import yaml

            row.update(yaml.safe_load((run_dir / "run.yaml").read_text())["run"])
        row["run_id"] = run_id
        row["status"] = (
            read_json(run_dir / "status.json")["status"] if (run_dir / "status.json").is_file() else "pending"
        )
        if (run_dir / "metrics.json").is_file():
            m = read_json(run_dir / "metrics.json")
            row.update({k: v for k, v in m["eval"].items() if k in COLUMNS})
            row.update({k: m.get(k) for k in ("train_loss", "steps", "train_seconds", "eval_seconds")})
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def _fmt(v, col: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if col == "beta":
            return f"{v:g}"
        if col in (
            "length",
            "kl",
            "kl_se",
            "kl_k3",
            "kl_k3_se",
            "train_seconds",
            "eval_seconds",
            "train_loss",
        ):
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], columns: list[str], caption: str) -> str:
    lines = [f"{caption}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c], c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict], columns: list[str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("run_id", "status") else "right")
    for r in rows:
        style = None if r["status"] == "done" else "dim"
        table.add_row(*[_fmt(r[c], c) for c in columns], style=style)
    return table


def plot_beta(rows: list[dict], path: Path, title: str) -> None:
    """Win rate, length and KL against beta (log axis), one line per (objective, reference); SFT as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    sft = next((r for r in done if r["objective"] == "sft"), None)
    groups: dict[str, list[dict]] = {}
    for r in done:
        if r["beta"] is not None:
            label = r["objective"] + (f" <- {r['reference']}" if r["reference"] else "")
            groups.setdefault(label, []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("win_rate", "win rate vs SFT"),
        ("length", "mean length (tokens)"),
        ("kl", "KL(policy || ref), k1"),
    ]
    for ax, (key, label) in zip(axes, panels):
        for name, grp in groups.items():
            by_beta: dict[float, list[float]] = {}
            for r in grp:
                by_beta.setdefault(r["beta"], []).append(r[key])
            betas = sorted(by_beta)
            means = [sum(by_beta[b]) / len(by_beta[b]) for b in betas]
            ax.plot(betas, means, marker="o", label=name)
        if sft is not None and key != "kl":
            ax.axhline(sft[key], color="gray", linestyle="--", label="SFT")
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def write_report(exp_dir: Path, rows: list[dict], title: str, extra: dict | None = None) -> list[Path]:
    """results.csv / results.md / results.json / results.png under `exp_dir`; returns the paths written."""
    caption = (
        f"{title}. Win rate: gold reward of the policy's sample vs the SFT baseline's sample on each held-out "
        "prompt (ties 0.5). KL: sequence-level k1 estimate from policy samples. Rank acc.: validation pairs."
    )
    paths = [
        exp_dir / "results.csv",
        exp_dir / "results.md",
        exp_dir / "results.json",
        exp_dir / "results.png",
    ]
    atomic_write_text(paths[0], to_csv(rows))
    atomic_write_text(paths[1], to_markdown(rows, SHOWN, caption))
    atomic_write_json(paths[2], {"title": title, "rows": rows, **(extra or {})})
    plot_beta(rows, paths[3], title)
    return paths


def load_rows(exp_dir: Path) -> list[dict]:
    return json.loads((exp_dir / "results.json").read_text())["rows"]
