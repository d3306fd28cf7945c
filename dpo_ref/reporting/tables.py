"""Results tables, rebuilt from the run directories on disk (so `dporef report` and resumes agree)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from ..evaluation.lc_minimal import LC_INTERVAL_NOTE
from ..expdir import REPORT_FILES, ExperimentDir, RunFiles
from ..store import atomic_write_json, atomic_write_text, check_file
from . import similarity as sim_fit
from .curves import plot_curves
from .format import to_markdown
from .html import write_html
from .plots import plot_beta, plot_frontier
from .settings import aggregate, best_per_method, best_table, beta_grid_table, seed_table
from .uncertainty import BEST_RULE, INTERVAL_COLUMNS, METRICS, describe

IMPORTED_BOUNDS = [f"ae_{m}_{end}" for m in ("win_rate", "lc_win_rate") for end in ("lo", "hi")]
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
    "kl_sft",  # KL(policy || SFT policy): the frontier's one anchor for every run
    "kl_sft_se",
    "rank_acc_reward",
    "rank_acc_policy",
    "ae_win_rate",  # from an imported AlpacaEval annotation file (alpaca.py), when there is one
    "ae_lc_win_rate",
    "ae_lc_method",  # v1 (AlpacaEval's leaderboard LC) or minimal (without df_gamed.csv), see alpaca_eval.py
    "train_loss",
    "steps",
    "train_seconds",
    "eval_seconds",
    *INTERVAL_COLUMNS,  # 95% intervals (reporting/uncertainty.py), shown in brackets beside their metric
    *IMPORTED_BOUNDS,
]
SHOWN = ["run_id", "beta", "status", *(m for m in METRICS if m != "val_win_rate")]  # validation: in results.csv
IMPORTED = ["ae_win_rate", "ae_lc_win_rate", "ae_lc_method"]


def _imported(rows: list[dict]) -> bool:
    return any(r.get(c) is not None for r in rows for c in IMPORTED)


def shown_columns(rows: list[dict]) -> list[str]:
    """The terminal/markdown columns: SHOWN, plus the AlpacaEval ones once annotations were imported, and why a run
    is damaged when one is."""
    return SHOWN + [c for c in IMPORTED + ["damage"] if any(r.get(c) is not None for r in rows)]


def _numbers(m: dict) -> dict:
    numbers = {k: v for k, v in m["eval"].items() if k in COLUMNS}
    numbers |= {"flags": ", ".join(m.get("flags") or []) or None}
    return numbers | {k: m.get(k) for k in ("train_loss", "steps", "train_seconds", "eval_seconds")}


def _annotations(ae: dict) -> dict:
    return {c: ae.get(c.removeprefix("ae_")) for c in IMPORTED + IMPORTED_BOUNDS}


def collect(runs: dict[str, RunFiles]) -> list[dict]:
    """One row per run (run id -> what expdir.read_run found), in grid order: its spec and status, plus its metrics
    when it finished. A damaged run (a file missing, unreadable, or not as its checksum says it was written) is shown
    as `damaged`, with the reason and its setting but no numbers, never a crash: the report of the other runs still
    gets written (read_run checks every value it passes on, so none makes a table or a plot fail)."""
    rows = []
    for run_id, files in runs.items():
        spec = (files.spec or {}).get("run") or {}
        row = dict.fromkeys(COLUMNS) | spec | {"run_id": run_id, "status": files.state.status}
        if files.state.status == "damaged":
            row["damage"] = files.state.reason
        elif files.metrics is not None:
            row |= _numbers(files.metrics) | (_annotations(files.annotations) if files.annotations else {})
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


RULE_JUDGE_LC = (
    " The judge is a rule with no length bias, so lc_win_rate (AlpacaEval's length-controlled GLM) removes real "
    "signal here: the win rate is the headline."
)
AE_LC = {
    "v1": "AlpacaEval's leaderboard LC (length_controlled_v1, with its df_gamed.csv)",
    "minimal": "AlpacaEval's minimal GLM, df_gamed.csv and the eval set not being in the local Hugging Face cache "
    "(or a row's instruction not in the eval set: lc_note in alpaca_eval.json); it can overstate LC by several points "
    "for a model much shorter than the baseline",
}


def _lc_caveats(rows: list[dict], unconverged: list[str]) -> str:
    """What the LC column cannot be trusted for here: runs that won or lost every prompt (AlpacaEval's GLM then gives
    its own degenerate values, lc_minimal.py), and runs whose GLM fit stopped at its iteration limit."""
    unanimous = [r["run_id"] for r in rows if r.get("win_rate") in (0.0, 1.0) and r.get("lc_win_rate") is not None]
    out = ""
    if unanimous:
        out += (
            f" LC of a run that lost or won every prompt ({', '.join(unanimous)}) is AlpacaEval's degenerate value "
            "(0.5 for all losses from 5 prompts on): read its win rate instead."
        )
    if unconverged:
        out += f" The LC fit of {', '.join(unconverged)} stopped at its iteration limit: its LC is approximate."
    return out


def results_caption(
    exp_dir: ExperimentDir, rows: list[dict], title: str, judge: str, lc_unconverged: list[str] = ()
) -> str:
    """The caption of results.md: who judges, what the LC columns mean for that judge (and where they cannot be
    trusted), how ae_lc_win_rate was fitted."""
    exp, _ = check_file(exp_dir.spec, yaml.safe_load)  # read and checked by the report's caller; None if unreadable
    judge_cfg = exp.get("judge") if isinstance(exp, dict) else None
    kind = judge_cfg.get("kind") if isinstance(judge_cfg, dict) else None
    methods = sorted({r["ae_lc_method"] for r in rows if r.get("ae_lc_method")})
    return (
        f"{title}. Win rate: preference of {judge} for the policy's sample over the SFT baseline's sample on each "
        "held-out prompt. KL: sequence-level k1 estimate from policy samples, to the run's reference (kl) and to "
        "the SFT policy (kl_sft). Rank acc.: validation pairs. Brackets: 95% intervals over the prompts (pairs for "
        "rank acc.); over seeds, prompts and seeds as two levels."
        + (RULE_JUDGE_LC if kind in ("builtin", "instructions") else "")
        + f" {LC_INTERVAL_NOTE}"
        + _lc_caveats(rows, list(lc_unconverged))
        + (" ae_*: AlpacaEval annotations (`dporef import-annotations`)." if _imported(rows) else "")
        + "".join(f" ae_lc_win_rate ({m}): {AE_LC[m]}." for m in methods if m in AE_LC)
    )


def write_report(
    exp_dir: ExperimentDir,
    rows: list[dict],
    title: str,
    tables: tuple[str, ...] = (),
    extra: dict | None = None,
    similarity: dict | None = None,
    judge: str = "the gold reward",
    comparison: dict | None = None,
    bounds: dict[tuple, dict] | None = None,
    lc_unconverged: list[str] = (),
    histories: dict[str, list] | None = None,
) -> list[Path]:
    """results.csv / .md / .json / .png, frontier.png, similarity.png (a fit of the best win rate on similarity and
    strength, with 5 references or more) and report.html under `exp_dir`; returns the paths written.
    `tables` adds study-specific views to results.md: "grid" (metric by beta) and "best" (best beta per method);
    `comparison` (reporting.uncertainty.indistinguishable) the settings not distinguishable from the best one;
    `bounds` (reporting.uncertainty.setting_intervals) each setting's intervals over its seeds; `histories` (run id
    -> its log history) the training curves (curves.png)."""
    caption = results_caption(exp_dir, rows, title, judge, lc_unconverged)
    paths = [exp_dir.result(name) for name in REPORT_FILES[:5]]  # results.csv .md .json .png, frontier.png
    atomic_write_text(paths[0], to_csv(rows))
    agg = aggregate(rows, bounds)
    views = {"grid": lambda: beta_grid_table(agg), "best": lambda: best_table(agg, similarity)}
    markdown = to_markdown(rows, shown_columns(rows), caption) + seed_table(agg) + "".join(views[t]() for t in tables)
    fitted = sim_fit.fit(best_per_method(agg, similarity), similarity) if similarity and "best" in tables else None
    markdown += describe(comparison) + (sim_fit.markdown(fitted) if fitted else "")
    atomic_write_text(paths[1], markdown)
    summary = {"title": title, "rows": rows, "by_setting": agg, **(extra or {})}
    if comparison is not None:
        summary["indistinguishable_from_best"] = comparison
    if "best" in tables:
        summary["best"] = {"rule": BEST_RULE, "rows": best_per_method(agg, similarity)}
    if similarity is not None:
        summary["similarity"] = {"note": sim_fit.NOTE, "references": similarity, "fit": fitted}
    atomic_write_json(paths[2], summary)
    plot_beta(agg, paths[3], title, comparison)
    plot_frontier(agg, paths[4], title)
    if fitted and sim_fit.plot(fitted, exp_dir.result("similarity.png"), title):
        paths.append(exp_dir.result("similarity.png"))
    if plot_curves(histories or {}, exp_dir.result("curves.png"), title):
        paths.append(exp_dir.result("curves.png"))
    paths.append(write_html(exp_dir, title, markdown, rows, extra or {}, paths[3:]))
    return paths
