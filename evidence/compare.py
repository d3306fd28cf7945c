"""docs/results/paper.md: the paper's Tables 1-5 (evidence/paper.py) beside dporef's numbers on the embedded world
and on SmolLM2-135M-Instruct, row by row, with a "reproduced?" column decided from the data by RULE."""

from __future__ import annotations

from collections.abc import Callable

from .format import cell, fmt, provenance
from .format import label as label_of
from .paper import CITATION, DEGENERATE, SFT, TABLE1, TABLE2, TABLE3, TABLE4, TABLE5
from .studies import SMOLLM2_QUESTIONS, Question, step_results

RULE = """\
Each row of a table compares two settings, named in its "effect" column (e.g. beta 0.1 against the SFT model). The
paper's direction of the effect is the sign of the difference of its two numbers, in every paper column the rule
uses (named under each table); a setting the paper reports as degenerate counts as below any number. When those
columns disagree, the row says "paper mixed" and is not judged. dporef's direction is the sign of the difference of
its two estimates, with their 95% intervals (a degenerate setting, at least half its responses broken, counts as
below any number and as separated). Then:

- **yes**: the same direction, and the two 95% intervals do not overlap;
- **same direction, within noise**: the same direction, the intervals overlap;
- **no (opposite, within noise)**: the other direction, the intervals overlap;
- **no (opposite)**: the other direction, the intervals do not overlap;
- **no difference**: dporef's two estimates are equal.

Non-overlapping intervals are a conservative test of a difference (two intervals can overlap while the difference's
own interval excludes 0), so "within noise" says the data cannot tell, not that there is no effect. dporef's numbers
are win rates against the SFT model's own samples judged by a rule (the embedded world's gold reward; SmolLM2's
instruction checks), not AlpacaEval 2 LC win rates against GPT-4 Turbo: only directions compare, never levels. The
rule uses dporef's win rate, the headline for a rule judge, which has no length bias for LC to remove (LC is shown
beside it). Where the paper picks a best beta, dporef picks it on the validation prompts."""

NOT_RUN = "not run yet"


def measure(row: dict | None, metric: str) -> dict | None:
    """An estimate with its interval and whether its setting is degenerate, from a results.json row."""
    if row is None or row.get(metric) is None:
        return None
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    return {"v": row[metric], "lo": lo, "hi": hi, "degenerate": row.get("status") == "degenerate"}


def _sign(a, b) -> int:
    if a == DEGENERATE or b == DEGENERATE:
        return 0 if a == b else (-1 if a == DEGENERATE else 1)
    return (a > b) - (a < b)


def paper_direction(pairs: list[tuple]) -> int | None:
    """The sign the paper's columns agree on (None: they disagree, or none has both numbers)."""
    signs = {_sign(a, b) for a, b in pairs if a is not None and b is not None}
    return signs.pop() if len(signs) == 1 else None


def ours_direction(a: dict, b: dict) -> tuple[int, bool]:
    """(sign of a - b, whether they are told apart: intervals that do not overlap, or one side degenerate)."""
    if a["degenerate"] or b["degenerate"]:
        return (0 if a["degenerate"] == b["degenerate"] else (-1 if a["degenerate"] else 1)), True
    apart = None not in (a["lo"], a["hi"], b["lo"], b["hi"]) and (a["lo"] > b["hi"] or a["hi"] < b["lo"])
    return (a["v"] > b["v"]) - (a["v"] < b["v"]), apart


def verdict(paper: list[tuple], a: dict | None, b: dict | None) -> str:
    """RULE, for one row: `paper` the (a, b) pairs of the paper's columns used, `a` and `b` dporef's measures."""
    direction = paper_direction(paper)
    if direction is None:
        return "paper mixed" if any(None not in p for p in paper) else "-"
    if a is None or b is None:
        return "-"
    ours, apart = ours_direction(a, b)
    if ours == 0:
        return "no difference"
    if ours == direction:
        return "yes" if apart else "same direction, within noise"
    return "no (opposite)" if apart else "no (opposite, within noise)"


def paper_cell(value, spec: str = ".2f") -> str:
    """A number as the paper prints it (`spec`: its decimals), `degenerate`, or `-` where it has none."""
    if value is None:
        return "-"
    return value if value == DEGENERATE else format(value, spec)


def _by_beta(results: dict) -> dict:
    return {r["beta"]: r for r in results["by_setting"] if r["objective"] in ("dpo", "sft")}


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _beside(key: str, data: dict | None, body: Callable[[dict | None], str], rows: str = "") -> str:
    head = provenance(data) if data is not None else f"**Not run yet**: `make evidence ONLY={key}` runs it."
    return f"Beside [`{key}`]({key}.md){rows}. {head}\n\n" + body(None if data is None else step_results(data))


BEST_RULE = "the highest mean validation win rate; a degenerate setting, or one with no validation win rate, never"


def best_among(by_setting: list[dict]) -> list[dict]:
    """Each method's (objective <- reference) best setting among `by_setting` by dporef's rule for results.json's
    `best` (reporting.settings.best_per_method): BEST_RULE, the first of equals; with `method` and `best_beta`."""
    best: dict[str, dict] = {}
    for r in by_setting:
        label = "SFT" if r["objective"] == "sft" else label_of(r["objective"], r["reference"], None)
        if r.get("status") == "degenerate" or r.get("val_win_rate") is None:
            continue
        if label not in best or r["val_win_rate"] > best[label]["val_win_rate"]:
            best[label] = r
    return [r | {"method": label, "best_beta": r["beta"]} for label, r in best.items()]


def subset(results: dict | None, question: Question) -> dict | None:
    """results.json restricted to the rows that answer `question` (a study of several questions, SmolLM2's), each
    method's best setting re-chosen among them by BEST_RULE (the same as results.json's where the question keeps
    every beta of a method)."""
    if results is None:
        return None
    by_setting = [r for r in results["by_setting"] if question.keep(r, results["by_setting"])]
    rows = [r for r in results["rows"] if question.keep(r, results["rows"])]
    best = {"rule": BEST_RULE, "rows": best_among(by_setting)}
    return results | {"rows": rows, "by_setting": by_setting, "best": best}


def judge(results: dict | None, paper: list[tuple], a: dict | None, b: dict | None) -> str:
    """RULE for one row, or why the row cannot be judged: the study not run, the setting in one grid only."""
    if results is None:
        return NOT_RUN
    if not paper:
        return "not in the paper's grid"
    if a is None or b is None:
        return "no dporef number (not in its grid, or the run failed)"
    return verdict(paper, a, b)


def _ours(results: dict | None, row: dict | None, columns: tuple[str, ...]) -> list[str]:
    return [NOT_RUN if results is None else cell(row, c) for c in columns]


def _beta_label(beta) -> str:
    return "SFT (no DPO)" if beta is None else fmt(beta, "beta")


def _betas(paper: dict, ours: dict) -> list:
    return sorted((set(paper) | set(ours)) - {SFT}, reverse=True)


def table1(results: dict | None) -> str:
    ours = _by_beta(results) if results else {}
    sft, rows = TABLE1["rows"][SFT], []
    for beta in [SFT, *_betas(TABLE1["rows"], ours)]:
        paper, row = TABLE1["rows"].get(beta), ours.get(beta)
        effect = result = ""
        if beta is not SFT:
            pairs = [(paper[i], sft[i]) for i in range(2)] if paper else []
            effect = f"beta {fmt(beta, 'beta')} vs SFT"
            result = judge(results, pairs, measure(row, "win_rate"), measure(ours.get(SFT), "win_rate"))
        cells = [paper_cell(v) for v in paper or (None, None)] + _ours(results, row, ("win_rate", "lc_win_rate"))
        rows.append([_beta_label(beta), *cells, effect, result])
    headers = ["beta", "paper: mistral-7b LC", "paper: tulu-2-7b LC", "dporef: win rate", "dporef: LC win rate"]
    return _markdown(headers + ["effect", "reproduced?"], rows)


def table2(results: dict | None) -> str:
    ours = _by_beta(results) if results else {}
    rows = []
    for beta in [SFT, *_betas(TABLE2["rows"], ours)]:
        paper, row = TABLE2["rows"].get(beta), ours.get(beta)
        pairs = [(paper[0], paper[1]), (paper[2], paper[3])] if paper else []
        result = judge(results, pairs, measure(row, "rank_acc_reward"), measure(row, "rank_acc_policy"))
        if beta is SFT and results is not None:
            result = "not judged: r is 0.5 by construction (policy = reference)"
        cells = [paper_cell(v, ".3f") for v in paper or [None] * 4]
        rows.append([_beta_label(beta), *cells, *_ours(results, row, ("rank_acc_reward", "rank_acc_policy")), result])
    headers = ["beta", *(f"paper: {c}" for c in TABLE2["columns"]), "dporef: r", "dporef: p"]
    return _markdown(headers + ["reproduced? (r vs p)"], rows)


def _best(results: dict | None) -> list[dict]:
    return (results or {}).get("best", {}).get("rows", [])


def table3(results: dict | None) -> str:
    best = {r["objective"]: r for r in _best(results)}
    against = {"dpo": "sft", "posterior": "dpo", "likelihood": "dpo"}
    rows = []
    for objective, paper in TABLE3["rows"].items():
        row, other = best.get(objective), against.get(objective)
        effect = result = ""
        if other:
            effect = f"vs {TABLE3['labels'][other]}"
            pairs = [(paper[0], TABLE3["rows"][other][0])]
            result = judge(results, pairs, measure(row, "win_rate"), measure(best.get(other), "win_rate"))
        cells = [paper_cell(v, spec) for v, spec in zip(paper, (".2f", ".3f", ".1f", "g"))]
        cells += _ours(results, row, ("win_rate", "rank_acc_policy", "length", "beta"))
        rows.append([TABLE3["labels"][objective], *cells, effect, result])
    headers = [*(f"paper: {c}" for c in TABLE3["columns"]), "dporef: win rate", "dporef: policy rank acc."]
    return _markdown(["method", *headers, "dporef: length", "dporef: beta", "effect", "reproduced?"], rows)


def table4(results: dict | None, same: str, other: str | None) -> str:
    """By beta: DPO against the same-family stronger reference against the other-family one."""
    by_setting = (results or {}).get("by_setting", [])
    settings = {(r["reference"], r["beta"]): r for r in by_setting if r["objective"] == "dpo"}
    rows = []
    for beta in _betas(TABLE4["rows"], {b: None for _, b in settings}):
        paper = TABLE4["rows"].get(beta)
        a, b = settings.get((same, beta)), settings.get((other, beta))
        result = judge(results, [(paper[0], paper[1])] if paper else [], measure(a, "win_rate"), measure(b, "win_rate"))
        if results is not None and other is None:
            result = "no other-family reference in this study"
        cells = [paper_cell(v) for v in paper or [None] * 4] + _ours(results, a, ("win_rate",))
        cells += _ours(results, b, ("win_rate",))
        rows.append([fmt(beta, "beta"), *cells, result])
    headers = ["beta", *(f"paper: {c}" for c in TABLE4["columns"])]
    headers += [f"dporef: same family (`{same}`)", f"dporef: other family ({f'`{other}`' if other else 'none'})"]
    return _markdown(headers + ["reproduced? (same vs other family)"], rows)


TABLE5_USES = {"self": (0, 1), "mistral-v0.2": (0,), "llama3-70b": (0,), "dpo-trained": (0,)}  # paper columns


def table5(results: dict | None, roles: dict[str, str | None]) -> str:
    """`roles`: the paper's row -> dporef's reference in that role (None: the study has none)."""
    rows_ = [r for r in _best(results) if r["objective"] in ("dpo", "sft")]  # DPO's references, not other objectives'
    best = {("SFT" if r["objective"] == "sft" else r["reference"]): r for r in rows_}
    roles = roles | {"sft": "SFT"}
    rows = []
    for role, paper in TABLE5["rows"].items():
        ref = roles.get(role)
        row = best.get(ref) if ref else None
        mine = "-" if row is None else cell(row, "win_rate")
        if row is not None and role != "sft":
            mine += f" (`{ref}`, beta {fmt(row['beta'], 'beta')})"
        effect = result = ""
        if role in TABLE5_USES:
            against = "sft" if role == "self" else "self"
            effect = f"vs {'SFT' if against == 'sft' else 'self-reference'}"
            pairs = [(paper[i], TABLE5["rows"][against][i]) for i in TABLE5_USES[role]]
            result = judge(results, pairs, measure(row, "win_rate"), measure(best.get(roles[against]), "win_rate"))
            result = "no such reference in this study" if results is not None and ref is None else result
        mine = NOT_RUN if results is None else mine
        rows.append([TABLE5["labels"][role], *map(paper_cell, paper), mine, effect, result])
    headers = ["reference", *(f"paper: {c}" for c in TABLE5["columns"]), "dporef: best win rate", "effect"]
    return _markdown(headers + ["reproduced?"], rows)


WORLD, SMOLLM2 = "The embedded world", "SmolLM2-135M-Instruct"
WORLD_ROLES = {"self": "sft", "mistral-v0.2": "strong-same", "llama3-70b": "strong-other", "dpo-trained": None}
SMOLLM2_ROLES = {"self": "sft", "mistral-v0.2": "strong", "llama3-70b": None, "dpo-trained": "guide"}
RQ1, RQ2, RQ3 = SMOLLM2_QUESTIONS
RQ1_ROWS = ", its RQ1 rows (DPO against the SFT model)"
RQ2_ROWS = (
    ", its RQ2 rows (DPO against the SFT model, posterior and likelihood at equal beta: each objective at that one "
    "beta, not at a best over several)"
)
RQ3_ROWS = (
    ", its RQ3 rows (DPO against the SFT model, against `strong`, SmolLM2 after DPO on four times the prompts, and "
    "against `guide`, the policy `dpo-sft-b0.1-s0` trained)"
)
SECTIONS = [
    (
        1,
        "RQ1, win rate by beta",
        "LC win rate (%) of DPO against the SFT model, by beta. The rule uses both models' columns.",
        [(WORLD, "rq1_world", table1, ""), (SMOLLM2, "smollm2", lambda r: table1(subset(r, RQ1)), RQ1_ROWS)],
    ),
    (
        2,
        "RQ1, ranking accuracy",
        "Ranking accuracy on validation pairs of the implicit reward r = beta log(p_theta / p_ref) and of the policy "
        "p_theta itself, by beta. The rule uses both models' columns; its effect is r against p at the same beta.",
        [(WORLD, "rq1_world", table2, ""), (SMOLLM2, "smollm2", lambda r: table2(subset(r, RQ1)), RQ1_ROWS)],
    ),
    (
        3,
        "RQ2, is the reference necessary?",
        "mistral-7b, each objective at its best beta: LC win rate (%), the policy's ranking accuracy, length "
        "(tokens), beta. The rule uses the LC column.",
        [(WORLD, "rq2_world", table3, ""), (SMOLLM2, "smollm2", lambda r: table3(subset(r, RQ2)), RQ2_ROWS)],
    ),
    (
        4,
        "RQ3, stronger references by beta",
        "LC win rate (%) of DPO against a stronger reference, by beta. Mistral-7B-Instruct-v0.2 is of mistral-7b's "
        "family; Llama-3-70B-Instruct of another (another tokenizer). The rule compares the same-family reference "
        "with the other-family one at each beta, in the two mistral-7b columns (for tulu-2-7b, a Llama-2 model, "
        "neither reference is of its family as Mistral-7B-Instruct-v0.2 is of mistral-7b's). dporef's world puts "
        "`strong-same` (the SFT model's own tokenizer and architecture) and `strong-other` (another tokenizer) in "
        "those roles; SmolLM2's study puts `strong` (SmolLM2 after DPO on four times its prompts) in the same-family "
        "role and has no other-family reference.",
        [
            (WORLD, "rq3_world", lambda r: table4(r, "strong-same", "strong-other"), ""),
            (SMOLLM2, "smollm2", lambda r: table4(subset(r, RQ3), "strong", None), RQ3_ROWS),
        ],
    ),
    (
        5,
        "RQ3, best over beta",
        "The best LC win rate (%) over beta of each reference; the last row is the paper's appendix. Each row "
        "compares with the self-reference (the self-reference with SFT): the self-reference row uses both models' "
        "columns, the others mistral-7b's, where the paper's roles hold (see Table 4). dporef's roles: "
        "`strong-same` as the same-family reference, `strong-other` as the other-family one (the world); `strong`, "
        "SmolLM2 after DPO on four times the prompts, as the same-family one and `guide`, the policy SmolLM2's "
        "`dpo-sft-b0.1-s0` trained on the study's own pairs, as the DPO-trained reference (SmolLM2).",
        [
            (WORLD, "rq3_world", lambda r: table5(r, WORLD_ROLES), ""),
            (SMOLLM2, "smollm2", lambda r: table5(subset(r, RQ3), SMOLLM2_ROLES), RQ3_ROWS),
        ],
    ),
]


def paper_page(load: Callable[[str], dict | None]) -> str:
    """The whole of docs/results/paper.md, from the studies' data files (`load`: key -> data, None if not run)."""
    parts = [
        "# The paper's tables beside dporef's\n",
        f"The numbers of Tables 1-5 of *Understanding Reference Policies in Direct Preference Optimization* "
        f"({CITATION}), transcribed into `evidence/paper.py`, each beside dporef's corresponding study on the "
        "embedded world and on SmolLM2-135M-Instruct. Generated by `python -m evidence` from the studies' data "
        "files (`docs/results/data/`, see [Generated results](index.md)); do not edit by hand.\n",
        '## How "reproduced?" is decided\n',
        RULE + "\n",
    ]
    for number, title, caption, besides in SECTIONS:
        parts.append(f"## Table {number}: {title}\n")
        parts.append(f"{CITATION}, Table {number}: {caption}\n")
        for scale, key, body, rows in besides:
            parts.append(f"### {scale}\n")
            parts.append(_beside(key, load(key), body, rows))
    return "\n".join(parts)
