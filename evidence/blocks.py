"""The docs' generated blocks: a figure quoted in README.md or docs/*.md sits between `<!-- evidence:NAME -->` and
`<!-- /evidence -->`, and `python -m evidence render` rewrites what is between them from the studies' data files.
NAME is `<study>:<view>` (the views below) or `pages:list`; a block's text may depend on the file it sits in (its
links are relative to it)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from .format import cell, fmt, provenance, seconds, setting_name, table
from .studies import STUDIES

OPEN = re.compile(r"^<!-- evidence:(?P<name>[\w:]+) -->$")
CLOSE = "<!-- /evidence -->"
BEST_HEADERS = ["method", "best beta", "test win rate", "LC win rate", "length", "KL to SFT", "validation win rate"]
BEST_COLUMNS = ["method", "best_beta", "win_rate", "lc_win_rate", "length", "kl_sft", "val_win_rate"]


def not_run(key: str) -> str:
    return f"*Not run yet: `make evidence ONLY={key}` (`python -m evidence run {key}`) measures it.*\n"


def _results(data: dict, step: str | None = None) -> dict:
    steps = data["steps"]
    return steps[step or next(iter(steps))]["files"]["results.json"]


def _sft(results: dict) -> dict | None:
    return next((r for r in results["by_setting"] if r["objective"] == "sft"), None)


def _trained(results: dict) -> list[dict]:
    return [r for r in results["by_setting"] if r["beta"] is not None]


def rq1_verdict(row: dict, comparison: dict | None) -> str:
    """A beta's place against the validation's choice (results.json's `indistinguishable_from_best`)."""
    if comparison is None:
        return "-"
    name = setting_name(row)
    if name == comparison["best"]:
        return f"chosen (validation win rate {cell(row, 'val_win_rate')})"
    if name in comparison["indistinguishable"]:
        return "not distinguishable"
    lo, hi = comparison["differences"][name]
    side = "worse" if name in comparison["worse"] else "better"
    return f"{side} (best minus it [{fmt(lo)}, {fmt(hi)}])"


def beta_table(data: dict, _file: Path) -> str:
    """A beta sweep: each beta's test win rate with its interval, and how it compares with the validation's
    choice on the test prompts."""
    results = _results(data)
    comparison = results.get("indistinguishable_from_best")
    chosen = f" ({comparison['best']})" if comparison else ""
    rows = []
    sft = _sft(results)
    if sft is not None:
        rows.append({"beta": "SFT itself (the noise floor)", "win": cell(sft, "win_rate"), "verdict": ""})
    for r in _trained(results):
        rows.append({"beta": fmt(r["beta"], "beta"), "win": cell(r, "win_rate"), "verdict": rq1_verdict(r, comparison)})
    headers = ["beta", "win rate vs the SFT baseline [95%]", f"against the validation's choice{chosen}"]
    return provenance(data) + "\n\n" + table(rows, ["beta", "win", "verdict"], headers)


def drift(data: dict, _file: Path) -> str:
    """KL, length and the judge's reward at the ends of the beta grid, against the SFT model's."""
    results = _results(data)
    rows, sft = sorted(_trained(results), key=lambda r: -r["beta"]), _sft(results) or {}
    high, low = rows[0], rows[-1]
    top = max(rows, key=lambda r: r["reward"] if r["reward"] is not None else float("-inf"))
    b = lambda r: fmt(r["beta"], "beta")  # noqa: E731
    return (
        f"KL to the reference {fmt(high['kl'], 'kl')} at beta {b(high)}, {fmt(low['kl'], 'kl')} at beta {b(low)}; "
        f"mean length {fmt(high['length'], 'length')} and {fmt(low['length'], 'length')} tokens (SFT "
        f"{fmt(sft.get('length'), 'length')}); the judge's mean reward is highest at beta {b(top)} "
        f"({fmt(top['reward'])}; SFT {fmt(sft.get('reward'))}).\n"
    )


def best(data: dict, _file: Path) -> str:
    """Each method at its best beta (chosen on validation prompts), with the best by validation's comparison."""
    results = _results(data)
    text = provenance(data) + "\n\n"
    if "best" not in results:
        return runs(data, _file)
    text += table(results["best"]["rows"], BEST_COLUMNS, BEST_HEADERS)
    comparison = results.get("indistinguishable_from_best")
    if comparison:
        same = ", ".join(comparison["indistinguishable"]) or "none"
        text += (
            f"\nBest by validation: {comparison['best']}; not distinguishable from it on the test prompts "
            f"(simultaneous 95% intervals over {comparison['comparisons']} comparisons): {same}.\n"
        )
    return text


def similarity(data: dict, _file: Path) -> str:
    """swap-reference: how alike each reference is to the SFT policy, how strong it is, and its best beta's win rate."""
    rows = [r | {"ref": r["reference"]} for r in _results(data).get("best", {}).get("rows", []) if r["reference"]]
    columns = ["ref", "sft_ref_kl", "token_logp_corr", "strength", "best_beta", "win_rate"]
    headers = ["reference", "KL(SFT \\|\\| ref), k1", "per-token log-prob corr.", "strength", "best beta"]
    return provenance(data) + "\n\n" + table(rows, columns, headers + ["best win rate"])


def runs(data: dict, _file: Path) -> str:
    """Every run's headline numbers (a study without a best-per-method table)."""
    columns = ["run_id", "win_rate", "lc_win_rate", "length", "eos_rate", "kl"]
    headers = ["run", "win rate", "LC win rate", "length (tokens)", "EOS rate", "KL"]
    return provenance(data) + "\n\n" + table(_results(data)["rows"], columns, headers)


def tune_comparison(data: dict) -> str:
    """tune-beta's choice and cost against the 9-point grid's best by validation."""
    grid, tune = _results(data, "grid"), data["steps"]["tune"]["files"]["tune.json"]
    wall = {s: sum(i["seconds"] or 0 for i in data["invocations"] if i["step"] == s) for s in ("grid", "tune")}
    comparison = grid.get("indistinguishable_from_best") or {}
    chosen = next((r for r in _trained(grid) if setting_name(r) == comparison.get("best")), None)
    runs_ = [r for r in grid["rows"] if r["beta"] is not None]
    steps, train = sum(r["steps"] or 0 for r in runs_), sum(r["train_seconds"] or 0 for r in runs_)
    text = ""
    if chosen is not None:
        text += (
            f"The grid's best by validation is beta {fmt(chosen['beta'], 'beta')}, test win rate "
            f"{cell(chosen, 'win_rate')}, for {len(runs_)} runs, {steps} optimizer steps, {train:.0f} s of training, "
            f"{seconds(wall['grid'])} wall. "
        )
    tried = ", ".join(fmt(t["beta"], "beta") + (" (pruned)" if t["state"] == "pruned" else "") for t in tune["trials"])
    pick = tune["best"]
    text += f"`dporef tune-beta --budget {tune['budget']}` tried beta {tried}"
    if pick is not None:
        text += (
            f" and chose beta {fmt(pick['beta'], 'beta')} (validation {fmt(pick['val_win_rate'])}): test win rate "
            f"{cell(pick, 'win_rate')}"
        )
    return text + (
        f", for {tune['runs']} runs ({tune['steps']} steps, {tune['train_seconds']:.0f} s of training, "
        f"{seconds(wall['tune'])} wall).\n"
    )


def tune_summary(data: dict, _file: Path) -> str:
    return provenance(data) + "\n\n" + tune_comparison(data)


def pages_list(_data: None, file: Path) -> str:
    """Links to every generated page, relative to the file the block sits in."""
    results = Path(__file__).resolve().parent.parent / "docs" / "results"
    link = lambda name: os.path.relpath(results / name, file.resolve().parent)  # noqa: E731
    lines = [f"- [The paper's tables beside dporef's]({link('paper.md')})"]
    lines += [f"- [{s.title}]({link(s.key + '.md')}) (`{s.key}`)" for s in STUDIES.values()]
    return "\n".join(lines) + "\n"


VIEWS: dict[str, Callable[[dict, Path], str]] = {
    "table": beta_table,
    "drift": drift,
    "best": best,
    "runs": runs,
    "similarity": similarity,
    "tune": tune_summary,
    "provenance": lambda data, _file: provenance(data) + "\n",
}


def render_block(name: str, file: Path, load: Callable[[str], dict | None]) -> str:
    """The text of block `name` in `file`, from the data files `load` reads (None for a study not run yet)."""
    key, _, view = name.partition(":")
    if key == "pages" and view == "list":
        return pages_list(None, file)
    if key not in STUDIES or view not in VIEWS:
        raise ValueError(f"unknown generated block {name!r}: <study>:<{'|'.join(VIEWS)}> or pages:list")
    data = load(key)
    return not_run(key) if data is None else VIEWS[view](data, file)


def blocks(text: str) -> list[tuple[str, int, int]]:
    """(name, first line, last line) of each generated block in `text` (0-based line numbers of the markers);
    a block opened and not closed raises ValueError."""
    lines, found = text.split("\n"), []
    i = 0
    while i < len(lines):
        match = OPEN.match(lines[i])
        if match:
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == CLOSE), None)
            if end is None:
                raise ValueError(f"line {i + 1}: {lines[i]} is never closed by {CLOSE}")
            found.append((match["name"], i, end))
            i = end
        i += 1
    return found


def rewrite(text: str, file: Path, load: Callable[[str], dict | None]) -> str:
    """`text` with every generated block's content replaced by its rendering."""
    lines = text.split("\n")
    for name, start, end in reversed(blocks(text)):
        body = render_block(name, file, load).strip("\n").split("\n")
        lines[start + 1 : end] = ["", *body, ""]  # blank lines: markdown reads the block apart from the markers
    return "\n".join(lines)
