"""tune-beta's summary: the trials in the order they ran, what each cost and found (the values its pruner saw
included), the best by validation win rate, and the totals (tune.json, tune.md)."""

from __future__ import annotations

import optuna

from ..expdir import ExperimentDir
from ..store import read_json
from .study import SPREAD, TuneSettings, by_number


def summarize(exp_dir: ExperimentDir, study: optuna.Study, links: dict, settings: TuneSettings, span: tuple) -> dict:
    """The trials in order with what each cost and found, the best by validation win rate, and the totals."""
    run_of = by_number(links)
    results = {r["run_id"]: r for r in read_json(exp_dir.result("results.json"))["rows"]}
    trials = []
    for t in sorted(study.trials, key=lambda t: t.number):
        run_id = run_of.get(t.number)
        row = results.get(run_id, {})
        trials.append(
            {
                "trial": t.number,
                "run_id": run_id,
                "beta": row.get("beta"),
                # a stopped run's trial is pruned, though told to the sampler at the value it was stopped at
                "state": "pruned" if row.get("status") == "stopped" else t.state.name.lower(),
                "run_status": row.get("status"),
                "val_win_rate": row.get("val_win_rate"),
                "win_rate": row.get("win_rate"),  # test prompts: reported, never used by the search
                "win_rate_lo": row.get("win_rate_lo"),
                "win_rate_hi": row.get("win_rate_hi"),
                "steps": row.get("steps"),
                "train_seconds": row.get("train_seconds"),
                "eval_seconds": row.get("eval_seconds"),
                # the validation win rates its pruner saw at its checks (Optuna's intermediate values)
                "checks": [{"step": step, "val_win_rate": v} for step, v in sorted(t.intermediate_values.items())],
            }
        )
    complete = [t for t in trials if t["run_status"] == "done" and t["val_win_rate"] is not None]  # ran to the end
    best = max(complete, key=lambda t: t["val_win_rate"], default=None)
    runs = {t["run_id"]: t for t in trials if t["run_id"] in results}  # a repeated beta costs nothing more
    seconds = lambda key: sum(t[key] or 0.0 for t in runs.values())  # noqa: E731
    return {
        "range": list(span),
        "budget": settings.budget,
        "sampler": f"{len(SPREAD)} trials spread over log-beta, then GPSampler (seed {settings.seed})",
        "pruner": f"MedianPruner after 2 trials, {settings.checks} validation checks per trial",
        "selection": "highest validation win rate among the trials that ran to the end; test prompts never used",
        "trials": trials,
        "best": best,
        "runs": len(runs),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "steps": sum(t["steps"] or 0 for t in runs.values()),
        "train_seconds": seconds("train_seconds"),
        "eval_seconds": seconds("eval_seconds"),
    }


def tune_markdown(summary: dict) -> str:
    """tune.md: the trials in the order they ran, the best, and the cost."""
    low, high = summary["range"]
    lines = [
        f"tune-beta over beta {low:g} .. {high:g} (log scale), budget {summary['budget']} runs: {summary['sampler']}; "
        f"{summary['pruner']}. Selection: {summary['selection']}.",
        "",
        "| trial | run | beta | state | val win rate | test win rate [95%] | steps | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for t in summary["trials"]:
        interval = f" [{t['win_rate_lo']:.3f}, {t['win_rate_hi']:.3f}]" if t["win_rate_lo"] is not None else ""
        lines.append(
            f"| {t['trial']} | {t['run_id']} | {fmt(t['beta'], 'g')} | {t['state']} | {fmt(t['val_win_rate'], '.3f')} "
            f"| {fmt(t['win_rate'], '.3f')}{interval} | {fmt(t['steps'], 'd')} | {fmt(t['train_seconds'], '.1f')} |"
        )
    best = summary["best"]
    lines.append("")
    if best is None:
        lines.append("No trial ran to the end: no best beta.")
    else:
        lines.append(
            f"Best: beta {best['beta']:g} ({best['run_id']}), validation win rate {best['val_win_rate']:.3f}, test "
            f"win rate {best['win_rate']:.3f}."
        )
    lines.append(
        f"Cost: {summary['runs']} runs ({summary['pruned']} pruned), {summary['steps']} optimizer steps, "
        f"{summary['train_seconds']:.0f} s training, {summary['eval_seconds']:.0f} s evaluation."
    )
    return "\n".join(lines) + "\n"
