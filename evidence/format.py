"""How the generated pages write numbers, as dporef's results.md does: beta as written, lengths and KL to 2 decimals,
shares and rewards to 3, a 95% interval in brackets beside its metric; provenance (commit, machine, date, wall time)
from a study's data file."""

from __future__ import annotations

import math

TWO_DECIMALS = {"length", "kl", "kl_sft", "kl_k3", "sft_ref_kl", "sft_ref_kl_k3", "token_log_ratio"}
TWO_DECIMALS |= {"train_seconds", "eval_seconds", "train_loss", "chosen_tokens", "rejected_tokens"}
BETA = {"beta", "best_beta"}


def fmt(value, column: str = "") -> str:
    """One value as its column shows it: None as `-`, beta with `g`, lengths/KL/seconds to 2 decimals, else 3."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int) and column not in BETA:
        return str(value)
    if isinstance(value, int | float):
        if math.isnan(value):
            return "nan"
        if column in BETA:
            return f"{value:g}"
        return f"{value:.2f}" if column in TWO_DECIMALS else f"{value:.3f}"
    return str(value)


def cell(row: dict | None, column: str) -> str:
    """A table cell: the value, with its 95% interval in brackets where the row has one (`<column>_lo/_hi`); `-`
    for no row."""
    if row is None:
        return "-"
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if row.get(column) is not None and lo is not None and hi is not None:
        return f"{fmt(row[column], column)} [{fmt(lo, column)}, {fmt(hi, column)}]"
    return fmt(row.get(column), column)


def table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    """A markdown table of `rows`, one column per key of `columns` (headed by `headers`, else the keys)."""
    lines = ["| " + " | ".join(headers or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def label(objective: str, reference: str | None, beta: float | None) -> str:
    """A setting as results.json names it in its comparison: `objective <- reference beta B`."""
    text = objective + (f" <- {reference}" if reference else "")
    return text if beta is None else f"{text} beta {beta:g}"


def setting_name(row: dict) -> str:
    return label(row["objective"], row["reference"], row["beta"])


def seconds(value: float) -> str:
    """Wall seconds as `95 s`, or `12 min 5 s` from 10 minutes on."""
    total = round(value)
    return f"{total} s" if total < 600 else f"{total // 60} min {total % 60} s"


def _count(n: int, what: str) -> str:
    return f"{'one' if n == 1 else n} {what}{'' if n == 1 else 's'}"


def wall_time(invocations: list[dict]) -> str:
    """The study's wall time, the sum of its commands' invocations as the ledger timed them, per command when it
    has several, and how many invocations it took (a resumed study adds them up)."""
    steps = list(dict.fromkeys(i["step"] for i in invocations))
    known = [i for i in invocations if isinstance(i.get("seconds"), int | float)]
    text = seconds(sum(i["seconds"] for i in known))
    if len(steps) > 1:
        per = [f"{s} {seconds(sum(i['seconds'] for i in known if i['step'] == s))}" for s in steps]
        text += f" ({', '.join(per)})"
    text += f", {_count(len(invocations), 'invocation')} of {'its commands' if len(steps) > 1 else 'the command'}"
    if len(invocations) > len(steps):
        text += " (resumed: the invocations' times add up; a resumed command skips the runs already finished)"
    pairs = [i["load"] for i in invocations if len(i.get("load") or []) == 2 and None not in i["load"]]
    loads = [f"{a:.1f} -> {b:.1f}" for a, b in pairs]
    if loads:
        text += f"; 1-minute load average at the start and end of each invocation: {', '.join(loads)}"
    unknown = len(invocations) - len(known)
    if unknown:
        text += f"; {_count(unknown, 'invocation')} killed before it could be timed, not counted"
    outside = sum(1 for i in invocations if i.get("timed_by"))
    if outside:
        which = "it was" if outside == len(invocations) == 1 else f"{_count(outside, 'invocation')} of them"
        text += f"; {which} {OUTSIDE}"
    return text


OUTSIDE = "timed outside the evidence runner (`date +%s` before and after the same command, recorded by `adopt`)"


def timed_by(invocations: list[dict]) -> str:
    """How the runner timed the wall time, for a page's header: around each command, or "" where an invocation was
    timed outside it (`wall_time` then says which)."""
    if any(i.get("timed_by") for i in invocations):
        return ""
    return "timed around each command by `python -m evidence`"


RENDERED = ("docs/", "README.md")  # what `python -m evidence render` writes between studies; no study reads them


def changed_code(invocation: dict) -> bool:
    """Whether the tree an invocation ran on differed from its commit outside the documentation (the pages, data,
    figures and blocks of studies that finished before it, which the runner itself writes and no study reads)."""
    dirty, count = invocation.get("dirty"), invocation.get("dirty_count")
    if not count:
        return False
    if dirty is None or count > len(dirty):  # paths not recorded, or only the first 20
        return True
    return any(not path.startswith(RENDERED) for path in dirty)


def commits(invocations: list[dict]) -> str:
    """The commit(s) the study ran at, each with `+ uncommitted changes` when the tree was dirty outside the
    documentation (not recorded for an invocation timed outside the runner)."""
    seen = []
    for i in invocations:
        text = f"`{i.get('commit') or 'unknown'}`" + (" + uncommitted changes" if changed_code(i) else "")
        if "dirty_count" in i and i["dirty_count"] is None:  # adopted: its tree's changes are unknown
            how = "named by hand" if "by hand" in (i.get("commit_rule") or "") else "the last commit before it started"
            text += f" ({how}; uncommitted changes not recorded)"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def machines(invocations: list[dict]) -> str:
    seen = list(dict.fromkeys(f"{i['machine']['cpu']}, {i['machine']['cores']} cores" for i in invocations))
    return "; ".join(seen)


def date(invocations: list[dict]) -> str:
    """The date (UTC) the last invocation started."""
    return invocations[-1]["started"][:10] if invocations else "-"


def provenance(data: dict) -> str:
    """One line: commit, machine, date and wall time of a study, for the docs' generated blocks."""
    runs = data["invocations"]
    return f"Measured at commit {commits(runs)} on {machines(runs)}, {date(runs)} (UTC); wall time {wall_time(runs)}."
