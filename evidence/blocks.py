"""The docs' generated blocks: a figure quoted in README.md or docs/*.md sits between `<!-- evidence:NAME -->` and
`<!-- /evidence -->`, and `python -m evidence render` rewrites what is between them from the studies' data files.
NAME is `<study>:<view>` (the views below, or a question of a study that has them: `smollm2:rq1`) or `pages:list`; a
block's text may depend on the file it sits in (its links are relative to it)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from .format import cell, fmt, provenance, seconds, setting_name, table
from .studies import STUDIES, Question, step_results

OPEN = re.compile(r"^<!-- evidence:(?P<name>[\w:]+) -->$")
CLOSE = "<!-- /evidence -->"
BEST_HEADERS = ["method", "best beta", "test win rate", "LC win rate", "length", "KL to SFT", "validation win rate"]
BEST_COLUMNS = ["method", "best_beta", "win_rate", "lc_win_rate", "length", "kl_sft", "val_win_rate"]


def not_run(key: str) -> str:
    return f"*Not run yet: `make evidence ONLY={key}` (`python -m evidence run {key}`) measures it.*\n"


def _sft(results: dict) -> dict | None:
    return next((r for r in results["by_setting"] if r["objective"] == "sft"), None)


def _trained(results: dict) -> list[dict]:
    return [r for r in results["by_setting"] if r["beta"] is not None]


def against_best(row: dict, comparison: dict | None) -> str:
    """A setting's place against the validation's choice (results.json's `indistinguishable_from_best`): chosen, not
    distinguishable, worse or better with the interval of the difference; the SFT row is the noise floor."""
    if row["objective"] == "sft":
        return "the SFT model (the noise floor)"
    if comparison is None:
        return "-"
    name = setting_name(row)
    if name == comparison["best"]:
        return f"chosen (validation win rate {cell(row, 'val_win_rate')})"
    if name in comparison["indistinguishable"]:
        return "not distinguishable"
    if name in comparison.get("left_out_degenerate", []):
        return "left out (degenerate)"
    if name not in comparison["differences"]:
        return "-"
    lo, hi = comparison["differences"][name]
    side = "worse" if name in comparison["worse"] else "better"
    return f"{side} (best minus it [{fmt(lo)}, {fmt(hi)}])"


def beta_table(data: dict, _file: Path) -> str:
    """A beta sweep: each beta's test win rate with its interval, and how it compares with the validation's
    choice on the test prompts."""
    results = step_results(data)
    comparison = results.get("indistinguishable_from_best")
    chosen = f" ({comparison['best']})" if comparison else ""
    rows = []
    sft = _sft(results)
    if sft is not None:
        rows.append({"beta": "SFT itself (the noise floor)", "win": cell(sft, "win_rate"), "verdict": ""})
    for r in _trained(results):
        verdict = against_best(r, comparison)
        rows.append({"beta": fmt(r["beta"], "beta"), "win": cell(r, "win_rate"), "verdict": verdict})
    headers = ["beta", "win rate vs the SFT baseline [95%]", f"against the validation's choice{chosen}"]
    return provenance(data) + "\n\n" + table(rows, ["beta", "win", "verdict"], headers)


def drift(data: dict, _file: Path) -> str:
    """KL, length and the judge's reward at the ends of the beta grid, against the SFT model's."""
    results = step_results(data)
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
    results = step_results(data)
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
    rows = [r | {"ref": r["reference"]} for r in step_results(data).get("best", {}).get("rows", []) if r["reference"]]
    columns = ["ref", "sft_ref_kl", "token_logp_corr", "strength", "best_beta", "win_rate"]
    headers = ["reference", "KL(SFT \\|\\| ref), k1", "per-token log-prob corr.", "strength", "best beta"]
    return provenance(data) + "\n\n" + table(rows, columns, headers + ["best win rate"])


def runs(data: dict, _file: Path) -> str:
    """Every run's headline numbers (a study without a best-per-method table)."""
    columns = ["run_id", "win_rate", "lc_win_rate", "length", "eos_rate", "kl"]
    headers = ["run", "win rate", "LC win rate", "length (tokens)", "EOS rate", "KL"]
    return provenance(data) + "\n\n" + table(step_results(data)["rows"], columns, headers)


def tune_comparison(data: dict) -> str:
    """tune-beta's choice and cost against the 9-point grid's best by validation."""
    grid, tune = step_results(data, "grid"), data["steps"]["tune"]["files"]["tune.json"]
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


def fit_section(fit: dict) -> str:
    """The similarity fit (swap-reference with five fixed references or more): per measure, the partial correlation
    of the best win rate with it given the reference's strength, and its Holm-adjusted p."""
    rows = [
        f | {"r_given": f["partial_r"], "r_given_lo": f["partial_r_lo"], "r_given_hi": f["partial_r_hi"]}
        for f in fit.get("fits") or []
    ]
    text = (
        "Best win rate per reference regressed on each similarity measure and the reference's strength together "
        "(dporef's similarity fit; an interval that spans 0 is no evidence either way).\n\n"
    )
    if rows:
        columns = ["objective", "measure", "n", "r_given", "partial_p", "partial_p_holm", "r"]
        headers = ["objective", "measure", "n", "partial r given strength [95%]", "p", "Holm p", "r alone [95%]"]
        text += table(rows, columns, headers)
    too_few = (fit.get("too_few_references") or {}).items()
    few = [f"{objective}: {n} fixed references, the fit needs five or more" for objective, n in too_few]
    if fit.get("not_fitted") or few:
        text += f"\nNot fitted: {'; '.join([*(fit.get('not_fitted') or []), *few])}.\n"
    return text


def fit(data: dict, _file: Path) -> str:
    """swap-reference with five fixed references or more: does similarity predict the gain, given strength?"""
    fitted = (step_results(data).get("similarity") or {}).get("fit")
    return fit_section(fitted) if fitted else "results.json has no similarity fit (fewer than five references).\n"


def _comparison(data: dict) -> tuple[dict, dict | None, dict]:
    results = step_results(data)
    return results, results.get("indistinguishable_from_best"), {setting_name(r): r for r in results["by_setting"]}


def choice(data: dict, _file: Path) -> str:
    """The validation's choice over every setting and what the test prompts say of the others, in one paragraph."""
    _, comparison, by_name = _comparison(data)
    if comparison is None:
        return "results.json has no comparison with the validation's choice.\n"
    best = by_name.get(comparison["best"])
    return (
        f"The validation's choice over every setting is {comparison['best']} (test win rate "
        f"{cell(best, 'win_rate')}); with simultaneous 95% intervals over its {comparison['comparisons']} "
        f"comparisons (critical value {comparison['critical_value']:.2f}), not distinguishable from it: "
        f"{', '.join(comparison['indistinguishable']) or 'none'}; {len(comparison['worse'])} worse, "
        f"{len(comparison['better'])} better.\n"
    )


def _kl_range(names: list[str], by_name: dict) -> str:
    values = [by_name[n]["kl_sft"] for n in names if by_name.get(n, {}).get("kl_sft") is not None]
    if not values:
        return "-"
    low, high = fmt(min(values), "kl"), fmt(max(values), "kl")
    return low if low == high else f"{low} to {high}"


def _listed(names: list[str]) -> str:
    return f"{len(names)}: {', '.join(names)}" if names else "none"


def summary(data: dict, _file: Path) -> str:
    """What the comparison with the validation's choice says, in a few lines computed from results.json: the choice
    with its test win rate, the settings tied with it and those worse, the KL to SFT of each group, and the settings
    whose win rate is below the SFT model's own."""
    results, comparison, by_name = _comparison(data)
    if comparison is None:
        return provenance(data) + "\n\nresults.json has no comparison with the validation's choice.\n"
    best, sft = by_name.get(comparison["best"]), _sft(results)
    tied = [comparison["best"], *comparison["indistinguishable"]]
    lines = [
        f"- **The validation's choice**: {comparison['best']}, test win rate {cell(best, 'win_rate')}, KL to SFT "
        f"{cell(best, 'kl_sft')}.",
        f"- **Not distinguishable from it** on the test prompts (simultaneous 95% intervals over "
        f"{comparison['comparisons']} comparisons): {_listed(comparison['indistinguishable'])}.",
        f"- **Worse than it**: {_listed(comparison['worse'])}. **Better**: {_listed(comparison['better'])}.",
        f"- **KL to SFT** (nats): the choice and the settings tied with it {_kl_range(tied, by_name)}; the worse "
        f"ones {_kl_range(comparison['worse'], by_name)}.",
    ]
    if comparison.get("left_out_degenerate"):
        lines.append(f"- **Left out as degenerate**: {_listed(comparison['left_out_degenerate'])}.")
    if sft is not None and sft.get("win_rate") is not None:
        below = [r for r in _trained(results) if r.get("win_rate") is not None and r["win_rate"] < sft["win_rate"]]
        listed = "; ".join(f"{setting_name(r)} {cell(r, 'win_rate')}, KL {fmt(r.get('kl_sft'), 'kl')}" for r in below)
        lines.append(f"- **Win rate below the SFT model's own** ({cell(sft, 'win_rate')}): {listed or 'none'}.")
    return provenance(data) + "\n\n" + "\n".join(lines) + "\n"


MOVING_KINDS = ("moving", "bema")


def moving(data: dict, _file: Path) -> str:
    """DPO against each moving reference (TR-DPO, BEMA) beside the fixed reference of the model they start from, at
    each beta: test win rate and KL to the SFT model (from results.json's similarity entries' `kind`)."""
    results = step_results(data)
    refs = (results.get("similarity") or {}).get("references") or {}
    moved = [n for n, r in refs.items() if r.get("kind") in MOVING_KINDS]
    models = {refs[n].get("model") for n in moved}
    fixed = [n for n, r in refs.items() if r.get("kind", "fixed") == "fixed" and r.get("model") in models]
    if not moved:
        return provenance(data) + "\n\nNo moving reference in this study.\n"
    names = fixed + moved
    settings = {(r["reference"], r["beta"]): r for r in results["by_setting"] if r["objective"] == "dpo"}
    betas = sorted({b for ref, b in settings if ref in names}, reverse=True)
    rows, columns, headers = [], ["beta"], ["beta"]
    for n in names:
        columns += [f"{n}:win", f"{n}:kl"]
        headers += [f"`{n}` ({refs[n].get('kind', 'fixed')}): win rate", f"`{n}`: KL to SFT"]
    for beta in betas:
        row = {"beta": fmt(beta, "beta")}
        for n in names:
            r = settings.get((n, beta))
            row |= {f"{n}:win": cell(r, "win_rate"), f"{n}:kl": cell(r, "kl_sft")}
        rows.append(row)
    return provenance(data) + "\n\n" + table(rows, columns, headers)


QUESTION_COLUMNS = ["run_id", "beta", "win_rate", "lc_win_rate", "kl", "kl_sft", "length", "eos_rate", "verdict"]
QUESTION_HEADERS = {
    "run_id": "run",
    "win_rate": "win rate",
    "lc_win_rate": "LC win rate",
    "kl": "KL to its reference",
    "kl_sft": "KL to SFT",
    "length": "length (tokens)",
    "eos_rate": "ended (EOS share)",
    "rank_acc_reward": "rank acc. r",
    "rank_acc_policy": "rank acc. p",
    "verdict": "against the validation's choice",
    "method": "method",
    "best_beta": "best beta",
    "val_win_rate": "validation win rate",
}
OPTIONAL = {"lc_win_rate", "eos_rate"}  # shown where results.json has them


def shown(rows: list[dict], columns: list[str]) -> list[str]:
    """`columns` less the optional ones no row has a value of, and less KL to SFT where it equals KL everywhere."""
    keep = [c for c in columns if c not in OPTIONAL or any(r.get(c) is not None for r in rows)]
    if all(r.get("kl_sft") == r.get("kl") for r in rows):
        keep = [c for c in keep if c != "kl_sft"]
    return keep


def question_rows(question: Question, results: dict) -> list[dict]:
    """The runs of results.json that answer `question`, each with its place against the validation's choice."""
    comparison = results.get("indistinguishable_from_best")
    rows = [r for r in results["rows"] if question.keep(r, results["rows"])]
    return [r | {"verdict": against_best(r, comparison)} for r in rows]


def question_table(rows: list[dict], columns: list[str]) -> str:
    columns = shown(rows, columns)
    return table(rows, columns, [QUESTION_HEADERS.get(c, c) for c in columns])


def question_block(question: Question, data: dict) -> str:
    """One question of a study: its runs' headline numbers with their intervals and their place against the
    validation's choice."""
    rows = question_rows(question, step_results(data))
    return provenance(data) + "\n\n" + (question_table(rows, QUESTION_COLUMNS) if rows else "No run answers it.\n")


VIEWS: dict[str, Callable[[dict, Path], str]] = {
    "table": beta_table,
    "drift": drift,
    "best": best,
    "runs": runs,
    "similarity": similarity,
    "tune": tune_summary,
    "fit": fit,
    "choice": choice,
    "summary": summary,
    "moving": moving,
    "provenance": lambda data, _file: provenance(data) + "\n",
}


def render_block(name: str, file: Path, load: Callable[[str], dict | None]) -> str:
    """The text of block `name` in `file`, from the data files `load` reads (None for a study not run yet)."""
    key, _, view = name.partition(":")
    if key == "pages" and view == "list":
        return pages_list(None, file)
    questions = {q.key: q for q in STUDIES[key].questions} if key in STUDIES else {}
    if key not in STUDIES or (view not in VIEWS and view not in questions):
        choices = "|".join([*VIEWS, *questions])
        raise ValueError(f"unknown generated block {name!r}: <study>:<{choices}> or pages:list")
    data = load(key)
    if data is None:
        return not_run(key)
    return question_block(questions[view], data) if view in questions else VIEWS[view](data, file)


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
