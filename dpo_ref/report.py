"""Results tables and plots, rebuilt from the run directories on disk (so `dporef report` and resumes agree)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rich.table import Table

from .alpaca import ANNOTATED
from .store import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

COLUMNS = [
    "run_id",
    "objective",
    "reference",
    "beta",
    "seed",
    "status",
    "win_rate",
    "win_rate_se",
    "lc_win_rate",
    "val_win_rate",
    "reward",
    "length",
    "eos_rate",
    "kl",
    "kl_se",
    "kl_k3",
    "kl_k3_se",
    "rank_acc_reward",
    "rank_acc_policy",
    "ae_win_rate",  # from an imported AlpacaEval annotation file (alpaca.py), when there is one
    "ae_lc_win_rate",
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
    "lc_win_rate",
    "reward",
    "length",
    "eos_rate",
    "kl",
    "rank_acc_reward",
    "rank_acc_policy",
]
IMPORTED = ["ae_win_rate", "ae_lc_win_rate"]


def shown_columns(rows: list[dict]) -> list[str]:
    """The terminal/markdown columns: SHOWN, plus the AlpacaEval ones once annotations were imported."""
    return SHOWN + [c for c in IMPORTED if any(r.get(c) is not None for r in rows)]


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
        if (run_dir / ANNOTATED).is_file():
            ae = read_json(run_dir / ANNOTATED)
            row.update(ae_win_rate=ae.get("win_rate"), ae_lc_win_rate=ae.get("lc_win_rate"))
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
        table.add_column(c, justify="left" if c in ("run_id", "status", "method") else "right")
    for r in rows:
        style = {"done": None, "degenerate": "yellow"}.get(r.get("status", "done"), "dim")
        table.add_row(*[_fmt(r[c], "beta" if c == "best_beta" else c) for c in columns], style=style)
    return table


AGGREGATED = [
    "win_rate",
    "lc_win_rate",
    "val_win_rate",
    "reward",
    "length",
    "eos_rate",
    "kl",
    "rank_acc_reward",
    "rank_acc_policy",
]


def aggregate(rows: list[dict]) -> list[dict]:
    """Finished runs grouped by (objective, reference, beta) across seeds: mean and sample s.d. of each metric.
    The s.d. over seeds is the noise a difference between betas has to beat."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] in ("done", "degenerate"):  # degenerate runs keep their numbers, marked as such
            groups.setdefault((r["objective"], r["reference"], r["beta"]), []).append(r)
    out = []
    for (objective, reference, beta), grp in groups.items():
        status = "degenerate" if any(r["status"] == "degenerate" for r in grp) else "done"
        row = {"objective": objective, "reference": reference, "beta": beta, "seeds": len(grp), "status": status}
        for key in AGGREGATED:
            values = [r[key] for r in grp]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
            row[key], row[f"{key}_sd"] = mean, sd
        out.append(row)
    return out


def _label(row: dict) -> str:
    return row["objective"] + (f" <- {row['reference']}" if row["reference"] else "")


def plot_beta(rows: list[dict], path: Path, title: str) -> None:
    """Win rate, length and KL against beta (log axis), one line per (objective, reference), mean over seeds with
    s.d. bars when there are several; the SFT model as a dashed line."""
    plt = pyplot()
    agg = aggregate(rows)
    sft = next((r for r in agg if r["objective"] == "sft"), None)
    lines: dict[str, list[dict]] = {}
    for r in agg:
        if r["beta"] is not None:
            lines.setdefault(_label(r), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("win_rate", "win rate vs SFT"), ("length", "mean length (tokens)"), ("kl", "KL(policy || ref), k1")]
    for ax, (key, label) in zip(axes, panels):
        for name, grp in lines.items():
            grp = sorted(grp, key=lambda r: r["beta"])
            errors = [r[f"{key}_sd"] or 0.0 for r in grp]
            ax.errorbar([r["beta"] for r in grp], [r[key] for r in grp], yerr=errors, marker="o", capsize=3, label=name)
            bad = [r for r in grp if r["status"] == "degenerate"]
            marked = "degenerate" if bad and key == "win_rate" else None
            ax.scatter([r["beta"] for r in bad], [r[key] for r in bad], marker="x", s=90, color="red", label=marked)
        if sft is not None and key != "kl":
            ax.axhline(sft[key], color="gray", linestyle="--", label="SFT")
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a figure atomically, like every other result file, and free it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def seed_table(rows: list[dict]) -> str:
    """Markdown table of means over seeds (± s.d.), shown when some setting has more than one seed."""
    agg = aggregate(rows)
    if all(r["seeds"] < 2 for r in agg):
        return ""
    cols = ["objective", "reference", "beta", "seeds"] + AGGREGATED
    lines = [
        "\nMean over seeds (± sample s.d. across seeds):\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in agg:
        cells = [
            _fmt(r[c], c)
            if c not in AGGREGATED
            else _fmt(r[c], c) + (f" ± {_fmt(r[c + '_sd'], c)}" if r[c + "_sd"] is not None else "")
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def beta_grid_table(rows: list[dict], metric: str = "win_rate") -> str:
    """Markdown pivot: one row per (objective, reference), one column per beta, mean `metric` over seeds
    (PAPER.md's RQ1 and Table 4 shape)."""
    agg = [r for r in aggregate(rows) if r["beta"] is not None]
    betas = sorted({r["beta"] for r in agg}, reverse=True)
    labels = list(dict.fromkeys(_label(r) for r in agg))
    cell = {(_label(r), r["beta"]): r for r in agg}
    lines = [
        f"\n{metric} by beta (mean over seeds; * = degenerate):\n",
        "| | " + " | ".join(f"{b:g}" for b in betas) + " |",
    ]
    lines.append("|---|" + "---|" * len(betas))
    for label in labels:
        values = [
            _fmt(cell[(label, b)][metric], metric) + ("*" if cell[(label, b)]["status"] == "degenerate" else "")
            if (label, b) in cell
            else ""
            for b in betas
        ]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


BEST_COLUMNS = [
    "method",
    "best_beta",
    "win_rate",
    "lc_win_rate",
    "rank_acc_policy",
    "length",
    "kl",
    "val_win_rate",
    "seeds",
]
BEST_RULE = (
    "best beta = the highest mean win rate on the validation prompts (the validation pairs' prompts, judged like the "
    "test prompts); the held-out test prompts never take part in the choice"
)


SIMILARITY_COLUMNS = ["log_ratio", "logp_corr", "ref_pref_acc"]
SIMILARITY_NOTE = (
    "Similarity of each reference to the SFT policy, on the training pairs before training: log_ratio = mean "
    "log p_sft(y|x) - log p_ref(y|x) over the responses (the sequence-level KL(SFT || ref), the responses being SFT "
    "samples), logp_corr = correlation of the two models' sequence log-probs, ref_pref_acc = pairs where the "
    "reference alone prefers the chosen response."
)


def best_per_method(rows: list[dict], similarity: dict | None = None) -> list[dict]:
    """One row per (objective, reference) at its best beta by BEST_RULE, after the SFT row (PAPER.md Tables 3, 5);
    with `similarity` ({reference: measures}), each row that trains against a reference carries its measures."""
    best: dict[str, dict] = {}
    for r in aggregate(rows):
        label = "SFT" if r["objective"] == "sft" else _label(r)
        if r["status"] == "degenerate":  # as in the paper, a degenerate run is never a method's best
            continue
        if label not in best or r["val_win_rate"] > best[label]["val_win_rate"]:
            best[label] = r
    out = []
    for label, r in best.items():
        row = {"method": label, "best_beta": r["beta"], "seeds": r["seeds"], **{k: r[k] for k in AGGREGATED}}
        if similarity is not None:
            sim = similarity.get(r["reference"] or "", {})
            row.update({k: sim.get(k) for k in SIMILARITY_COLUMNS})
        out.append(row)
    return out


def best_table(rows: list[dict], similarity: dict | None = None) -> str:
    best = best_per_method(rows, similarity)
    columns = BEST_COLUMNS + (SIMILARITY_COLUMNS if similarity is not None else [])
    lines = [f"\nBest beta per method ({BEST_RULE}):\n", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_fmt(r[c], "beta" if c == "best_beta" else c) for c in columns) + " |" for r in best]
    if similarity is not None:
        lines.append(f"\n{SIMILARITY_NOTE}")
    return "\n".join(lines) + "\n"


def write_report(
    exp_dir: Path,
    rows: list[dict],
    title: str,
    tables: tuple[str, ...] = (),
    extra: dict | None = None,
    similarity: dict | None = None,
    judge: str = "the gold reward",
) -> list[Path]:
    """results.csv / results.md / results.json / results.png under `exp_dir`; returns the paths written.
    `tables` adds study-specific views to results.md: "grid" (metric by beta) and "best" (best beta per method)."""
    caption = (
        f"{title}. Win rate: preference of {judge} for the policy's sample over the SFT baseline's sample on each "
        "held-out prompt. KL: sequence-level k1 estimate from policy samples. Rank acc.: validation pairs."
        + (" ae_*: AlpacaEval annotations (`dporef import-annotations`)." if shown_columns(rows) != SHOWN else "")
    )
    paths = [
        exp_dir / "results.csv",
        exp_dir / "results.md",
        exp_dir / "results.json",
        exp_dir / "results.png",
    ]
    atomic_write_text(paths[0], to_csv(rows))
    views = {"grid": lambda: beta_grid_table(rows), "best": lambda: best_table(rows, similarity)}
    markdown = to_markdown(rows, shown_columns(rows), caption) + seed_table(rows) + "".join(views[t]() for t in tables)
    atomic_write_text(paths[1], markdown)
    summary = {"title": title, "rows": rows, "by_setting": aggregate(rows), **(extra or {})}
    if "best" in tables:
        summary["best"] = {"rule": BEST_RULE, "rows": best_per_method(rows, similarity)}
    if similarity is not None:
        summary["similarity"] = {"note": SIMILARITY_NOTE, "references": similarity}
    atomic_write_json(paths[2], summary)
    plot_beta(rows, paths[3], title)
    return paths
