"""Results tables, rebuilt from the run directories on disk (so `dporef report` and resumes agree)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml
from rich.table import Table

from ..evaluation.alpaca_eval import ANNOTATED
from ..evaluation.intervals import Z, normal_interval
from ..store import atomic_write_json, atomic_write_text
from . import similarity as sim_fit
from .html import write_html
from .intervals import INTERVAL_COLUMNS, METRICS, describe
from .plots import plot_beta, plot_frontier, setting_label

COLUMNS = [
    "run_id",
    "objective",
    "reference",
    "beta",
    "seed",
    "status",
    "damage",  # why a run is shown as damaged (a file it wrote missing or unreadable); the next command reruns it
    "flags",  # a finished run's health flags (training_guards.run_flags), e.g. grad-collapse, shown with its status
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
    "ae_lc_method",  # v1 (AlpacaEval's leaderboard LC) or minimal (without df_gamed.csv), see alpaca_eval.py
    "train_loss",
    "steps",
    "train_seconds",
    "eval_seconds",
    *INTERVAL_COLUMNS,  # 95% intervals (reporting/intervals.py), shown in brackets beside their metric
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
IMPORTED = ["ae_win_rate", "ae_lc_win_rate", "ae_lc_method"]


def _imported(rows: list[dict]) -> bool:
    return any(r.get(c) is not None for r in rows for c in IMPORTED)


def shown_columns(rows: list[dict]) -> list[str]:
    """The terminal/markdown columns: SHOWN, plus the AlpacaEval ones once annotations were imported, and why a run
    is damaged when one is."""
    return SHOWN + [c for c in IMPORTED + ["damage"] if any(r.get(c) is not None for r in rows)]


def _load(path: Path, parse):
    """(parse(text of `path`), None); (None, None) without such a file; (None, why) when it cannot be read."""
    if not path.is_file():
        return None, None
    try:
        return parse(path.read_text()), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__})"


def _numbers(text: str) -> dict:
    m = json.loads(text)
    numbers = {k: v for k, v in m["eval"].items() if k in COLUMNS}
    numbers |= {"flags": ", ".join(m.get("flags") or []) or None}
    return numbers | {k: m.get(k) for k in ("train_loss", "steps", "train_seconds", "eval_seconds")}


def _annotations(text: str) -> dict:
    ae = json.loads(text)
    return {c: ae.get(c.removeprefix("ae_")) for c in IMPORTED}


def collect(exp_dir: Path, run_ids: list[str], damaged: dict[str, str] | None = None) -> list[dict]:
    """One row per run, in grid order: its spec and status, plus its metrics when it finished. A run named in
    `damaged` (run id -> why; see plan.run_status) or with a file that cannot be read is shown as `damaged`, with the
    reason and no numbers, never a crash: the report of the other runs still gets written."""
    rows = []
    for run_id in run_ids:
        run_dir = exp_dir / run_id
        spec, bad_spec = _load(run_dir / "run.yaml", lambda t: dict(yaml.safe_load(t)["run"]))
        status, bad_status = _load(run_dir / "status.json", lambda t: str(json.loads(t)["status"]))
        numbers, bad_numbers = _load(run_dir / "metrics.json", _numbers)
        ae, bad_ae = _load(run_dir / ANNOTATED, _annotations)
        row = dict.fromkeys(COLUMNS) | (spec or {}) | {"run_id": run_id, "status": status or "pending"}
        why = (damaged or {}).get(run_id) or bad_spec or bad_status or bad_numbers or bad_ae
        if why:
            row |= {"status": "damaged", "damage": why}
        else:
            row |= (numbers or {}) | (ae or {})
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


def _cell(r: dict, c: str) -> str:
    """A run table's cell; the status of a flagged run names its flags, e.g. `done (grad-collapse)`; a metric with
    an interval shows it in brackets, e.g. `0.550 [0.521, 0.579]`."""
    if c == "status" and r.get("flags"):
        return f"{r['status']} ({r['flags']})"
    if c in METRICS and r.get(f"{c}_lo") is not None:
        return f"{_fmt(r[c], c)} [{_fmt(r[c + '_lo'], c)}, {_fmt(r[c + '_hi'], c)}]"
    return _fmt(r[c], "beta" if c == "best_beta" else c)


def to_markdown(rows: list[dict], columns: list[str], caption: str) -> str:
    lines = [f"{caption}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict], columns: list[str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("run_id", "status", "method") else "right")
    for r in rows:
        style = {"done": None, "degenerate": "yellow", "damaged": "red"}.get(r.get("status", "done"), "dim")
        table.add_row(*[_cell(r, c) for c in columns], style=style)
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
        row |= _seeds_interval(grp)
        out.append(row)
    return out


def _seeds_interval(grp: list[dict]) -> dict:
    """95% interval of each metric's mean over a setting's seeds: one seed, its run's interval; several, mean +- z se
    with se the larger of the runs' own noise (their intervals' half-widths, combined) and the spread of their values
    across seeds (s.d. / sqrt(seeds)), so it carries both sources."""
    out = {}
    for m in METRICS:
        lows, highs = [r.get(f"{m}_lo") for r in grp], [r.get(f"{m}_hi") for r in grp]
        if any(v is None for v in lows + highs):
            continue
        if len(grp) == 1:
            out[f"{m}_lo"], out[f"{m}_hi"] = lows[0], highs[0]
            continue
        k, values = len(grp), [r[m] for r in grp]
        within = math.sqrt(sum(((h - lo) / (2 * Z)) ** 2 for lo, h in zip(lows, highs))) / k
        mean = sum(values) / k
        between = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1) / k)
        out[f"{m}_lo"], out[f"{m}_hi"] = normal_interval(mean, max(within, between))
    return out


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
    (the shape of the paper's Tables 1 and 4, arXiv 2407.13709)."""
    agg = [r for r in aggregate(rows) if r["beta"] is not None]
    betas = sorted({r["beta"] for r in agg}, reverse=True)
    labels = list(dict.fromkeys(setting_label(r) for r in agg))
    cell = {(setting_label(r), r["beta"]): r for r in agg}
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


def best_per_method(rows: list[dict], similarity: dict | None = None) -> list[dict]:
    """One row per (objective, reference) at its best beta by BEST_RULE, after the SFT row (the paper's Tables 3 and 5);
    with `similarity` ({reference: measures}), each row that trains against a reference carries its measures."""
    best: dict[str, dict] = {}
    for r in aggregate(rows):
        label = "SFT" if r["objective"] == "sft" else setting_label(r)
        if r["status"] == "degenerate":  # as in the paper, a degenerate run is never a method's best
            continue
        if label not in best or r["val_win_rate"] > best[label]["val_win_rate"]:
            best[label] = r
    out = []
    for label, r in best.items():
        row = {"method": label, "objective": r["objective"], "reference": r["reference"], "best_beta": r["beta"]}
        row |= {"seeds": r["seeds"], **{k: r.get(k) for k in AGGREGATED + ["win_rate_lo", "win_rate_hi"]}}
        if similarity is not None:
            sim = similarity.get(r["reference"] or "", {})
            row.update({k: sim.get(k) for k in sim_fit.COLUMNS})
        out.append(row)
    return out


def best_table(rows: list[dict], similarity: dict | None = None) -> str:
    best = best_per_method(rows, similarity)
    columns = BEST_COLUMNS + (sim_fit.COLUMNS if similarity is not None else [])
    lines = [f"\nBest beta per method ({BEST_RULE}):\n", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_fmt(r[c], "beta" if c == "best_beta" else c) for c in columns) + " |" for r in best]
    if similarity is not None:
        lines.append(f"\n{sim_fit.NOTE}")
    return "\n".join(lines) + "\n"


RULE_JUDGE_LC = (
    " The judge is a rule with no length bias, so lc_win_rate (AlpacaEval's length-controlled GLM) removes real "
    "signal here: the win rate is the headline."
)
AE_LC = {
    "v1": "AlpacaEval's leaderboard LC (length_controlled_v1, with its df_gamed.csv)",
    "minimal": "AlpacaEval's minimal GLM, df_gamed.csv not being in the local Hugging Face cache; it can overstate "
    "LC by several points for a model much shorter than the baseline",
}


def results_caption(exp_dir: Path, rows: list[dict], title: str, judge: str) -> str:
    """The caption of results.md: who judges, what the LC columns mean for that judge, how ae_lc_win_rate was fitted."""
    spec = exp_dir / "experiment.yaml"
    kind = (yaml.safe_load(spec.read_text()) or {}).get("judge", {}).get("kind") if spec.is_file() else None
    methods = sorted({r["ae_lc_method"] for r in rows if r.get("ae_lc_method")})
    return (
        f"{title}. Win rate: preference of {judge} for the policy's sample over the SFT baseline's sample on each "
        "held-out prompt. KL: sequence-level k1 estimate from policy samples. Rank acc.: validation pairs."
        + (RULE_JUDGE_LC if kind in ("builtin", "instructions") else "")
        + (" ae_*: AlpacaEval annotations (`dporef import-annotations`)." if _imported(rows) else "")
        + "".join(f" ae_lc_win_rate ({m}): {AE_LC[m]}." for m in methods if m in AE_LC)
    )


def write_report(
    exp_dir: Path,
    rows: list[dict],
    title: str,
    tables: tuple[str, ...] = (),
    extra: dict | None = None,
    similarity: dict | None = None,
    judge: str = "the gold reward",
    comparison: dict | None = None,
) -> list[Path]:
    """results.csv / .md / .json / .png, frontier.png, similarity.png (a fit of the best win rate on similarity, with
    4 references or more) and report.html under `exp_dir`; returns the paths written.
    `tables` adds study-specific views to results.md: "grid" (metric by beta) and "best" (best beta per method);
    `comparison` (reporting.intervals.indistinguishable) the settings not distinguishable from the best one."""
    caption = results_caption(exp_dir, rows, title, judge)
    paths = [
        exp_dir / "results.csv",
        exp_dir / "results.md",
        exp_dir / "results.json",
        exp_dir / "results.png",
        exp_dir / "frontier.png",
    ]
    atomic_write_text(paths[0], to_csv(rows))
    views = {"grid": lambda: beta_grid_table(rows), "best": lambda: best_table(rows, similarity)}
    markdown = to_markdown(rows, shown_columns(rows), caption) + seed_table(rows) + "".join(views[t]() for t in tables)
    fitted = sim_fit.fit(best_per_method(rows, similarity), similarity) if similarity and "best" in tables else None
    markdown += describe(comparison) + (sim_fit.markdown(fitted) if fitted else "")
    atomic_write_text(paths[1], markdown)
    summary = {"title": title, "rows": rows, "by_setting": aggregate(rows), **(extra or {})}
    if comparison is not None:
        summary["indistinguishable_from_best"] = comparison
    if "best" in tables:
        summary["best"] = {"rule": BEST_RULE, "rows": best_per_method(rows, similarity)}
    if similarity is not None:
        summary["similarity"] = {"note": sim_fit.NOTE, "references": similarity, "fit": fitted}
    atomic_write_json(paths[2], summary)
    plot_beta(aggregate(rows), paths[3], title, comparison)
    plot_frontier(aggregate(rows), paths[4], title)
    if fitted and sim_fit.plot(fitted, exp_dir / "similarity.png", title):
        paths.append(exp_dir / "similarity.png")
    paths.append(write_html(exp_dir, title, markdown, rows, extra or {}, paths[3:]))
    return paths
