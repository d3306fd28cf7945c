"""AlpacaEval interop, so the paper's headline number (LC win rate from a GPT-4 judge) can come from outside dporef.

Export: every run writes `model_outputs.json`, a list of {instruction, output, generator, dataset}: the file
`alpaca_eval --model_outputs` reads. The generator is `<experiment>/<run-id>`.
Import: AlpacaEval's `annotations.json` rows hold `instruction`, `output_1` (its baseline's response), `output_2`
(the run's), `generator_2`, `annotator` and `preference`: in [1, 2] (2 = output_2 preferred; weighted annotators
give fractions), 0 for a draw (AlpacaEval 1 files; AlpacaEval reads it as 1.5), null/NaN when unjudged.
`dporef import-annotations` matches rows to runs by `generator_2`, drops repeated rows (same instruction, outputs and
annotator: one file imported twice), refuses two annotators for one run, and writes `alpaca_eval.json` into each
run: AlpacaEval's win rate (win = preference - 1) and LC win rate, lengths in characters, both as AlpacaEval computes
them, each with its 95% interval (`win_rate_lo`/`_hi`, `lc_win_rate_lo`/`_hi`). The LC is the leaderboard's
`length_controlled_v1` (lc_v1.py) when df_gamed.csv and AlpacaEval's eval set are in the local Hugging Face cache
and every row's instruction is in that eval set, else `length_controlled_minimal` (lc_minimal.py), which can
overstate LC by several points for a model much shorter than the baseline; `lc_method` says which, `lc_note` why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..store import atomic_write_json
from .estimators import win_rate_interval
from .lc_minimal import LcFit
from .lc_v1 import (
    DOWNLOAD,
    EVAL_SET_FILE,
    GAMED_FILE,
    EvalSet,
    Gamed,
    LcFitV1,
    find_eval_set,
    find_gamed,
    read_eval_set,
    read_gamed,
    read_json_file,
)

NEEDED = ("output_1", "output_2", "generator_2", "preference")  # annotation keys the import reads
ALLOWED = "1..2 (2 = output_2 preferred), 0 (a draw) or null (unjudged)"


def generator_name(experiment: str, run_id: str) -> str:
    return f"{experiment}/{run_id}"


def instruction_text(prompt) -> str:
    """AlpacaEval instructions are single strings: a chat prompt contributes its last user message."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def export_model_outputs(path: Path, gens, generator: str, dataset: str) -> None:
    rows = [
        {"instruction": instruction_text(p), "output": r, "generator": generator, "dataset": dataset}
        for p, r in zip(gens.prompts, gens.responses)
    ]
    atomic_write_json(path, rows)


@dataclass(frozen=True)
class Annotation:
    """One verdict: `win` in [0, 1] for output_2 (a draw 0.5), NaN when unjudged."""

    instruction: str | None
    output_1: str
    output_2: str
    generator_1: str
    generator_2: str
    annotator: str | None
    win: float
    file: Path

    @property
    def key(self) -> tuple:
        return self.instruction, self.output_1, self.output_2, self.annotator


def _win(value, where: str) -> float:
    """AlpacaEval's preference as a win of output_2: 0 is a draw, outside {0} and [1, 2] is an error."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(where, f"preference {value!r} is not a number; allowed: {ALLOWED}")
    if math.isnan(value):
        return math.nan
    if value == 0:
        return 0.5
    if not 1 <= value <= 2:
        raise UserError(where, f"preference {value!r} is out of range; allowed: {ALLOWED}")
    return float(value) - 1.0


# the text fields of an annotation row and whether each may be null (AlpacaEval's annotations.json)
TEXT_FIELDS = {
    "output_1": False,
    "output_2": False,
    "generator_2": False,
    "generator_1": True,
    "instruction": True,
    "annotator": True,
}


def _check_types(row: dict, where: str) -> None:
    """Each text field a string (or absent/null where allowed): a number or a list there is an error in the file."""
    for key, nullable in TEXT_FIELDS.items():
        value = row.get(key)
        if not isinstance(value, str) and not (nullable and value is None):
            allowed = "a string" + (" or null" if nullable else "")
            raise UserError(f"{where}.{key}", f"{type(value).__name__} {value!r:.60} is not text; allowed: {allowed}")


def _read(path: Path) -> list[Annotation]:
    rows = read_json_file(path, "annotations")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(str(path), "expected AlpacaEval's annotations.json: a list of objects")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: [{i}]"
        missing = [k for k in NEEDED if k not in row]
        if missing:
            raise UserError(where, f"missing {', '.join(missing)}; annotation rows need {', '.join(NEEDED)}")
        _check_types(row, where)
        out.append(
            Annotation(
                row.get("instruction"),
                row["output_1"],
                row["output_2"],
                row.get("generator_1") or "?",
                row["generator_2"],
                row.get("annotator"),
                _win(row["preference"], where),
                Path(path).resolve(),
            )
        )
    return out


def _deduplicate(rows: list[Annotation]) -> tuple[list[Annotation], int]:
    """The first of each (instruction, output_1, output_2, annotator), in file order, and how many were dropped."""
    kept: dict[tuple, Annotation] = {}
    for row in rows:
        kept.setdefault(row.key, row)
    return list(kept.values()), len(rows) - len(kept)


def length_controlled(rows: list[Annotation], gamed: Gamed | None, eval_set: EvalSet | None) -> dict:
    """AlpacaEval's LC win rate of one run's rows and its interval: v1 when df_gamed.csv and the eval set place every
    row's instruction (the rows then fitted in eval-set order, whatever the file's), else minimal (rows in file
    order), with a note saying why."""
    if gamed is None:
        note = f"{GAMED_FILE} not in the local Hugging Face cache (`{DOWNLOAD}`)"
    elif eval_set is None:
        note = f"AlpacaEval's eval set {EVAL_SET_FILE}, which places instructions in {GAMED_FILE}, not in the local "
        note += f"Hugging Face cache (`{DOWNLOAD}`)"
    else:
        indices = eval_set.indices([r.instruction for r in rows])
        unplaced = [r for r, i in zip(rows, indices) if i is None or i not in gamed.difficulty]
        if not unplaced:
            order = sorted(range(len(rows)), key=indices.__getitem__)
            wins, len_2, len_1 = _columns([rows[i] for i in order])
            difficulty = [gamed.difficulty[indices[i]] for i in order]
            fit = LcFitV1.of(wins, len_2, len_1, gamed, difficulty)
            lo, hi = fit.interval()
            return {
                "lc_win_rate": fit.estimate,
                "lc_win_rate_lo": lo,
                "lc_win_rate_hi": hi,
                "lc_converged": fit.converged,  # False: liblinear stopped at its iteration limit in the final fit
                "lc_method": "v1",
                "lc_data": str(gamed.path),
            }
        note = (
            f"{len(unplaced)} of {len(rows)} rows have an instruction that AlpacaEval's eval set ({eval_set.path}) "
            f"lacks or {gamed.path} gives no difficulty, e.g. {unplaced[0].instruction!r:.80}"
        )
    wins, len_2, len_1 = _columns(rows)
    fit = LcFit.of(wins, len_2, len_1)
    lo, hi = fit.interval()
    return {
        "lc_win_rate": fit.estimate,
        "lc_win_rate_lo": lo,
        "lc_win_rate_hi": hi,
        "lc_converged": fit.converged,
        "lc_method": "minimal",
        "lc_note": note,
    }


def _columns(rows: list[Annotation]) -> tuple[list[float], list[int], list[int]]:
    """(wins of output_2, len(output_2), len(output_1)) per row."""
    return [r.win for r in rows], [len(r.output_2) for r in rows], [len(r.output_1) for r in rows]


def summarize(rows: list[Annotation], gamed: Gamed | None = None, eval_set: EvalSet | None = None) -> dict:
    """Win rate (with s.e.) and LC win rate of output_2 over output_1, as AlpacaEval computes them, each with its 95%
    interval (the win rate's: exact binomial without draws, else bootstrap); unjudged rows are counted (and take part
    in the LC's length scale and average, as in AlpacaEval)."""
    wins = np.array([r.win for r in rows if not math.isnan(r.win)])
    if len(wins) == 0:
        return {"n": 0, "unjudged": len(rows)}
    win_lo, win_hi = win_rate_interval(wins)
    return {
        "n": len(wins),
        "unjudged": len(rows) - len(wins),
        "win_rate": float(wins.mean()),
        "win_rate_se": float(wins.std(ddof=1) / np.sqrt(len(wins))) if len(wins) > 1 else 0.0,
        "win_rate_lo": win_lo,
        "win_rate_hi": win_hi,
        **length_controlled(rows, gamed, eval_set),
        "annotators": sorted({str(r.annotator) for r in rows}),
        "baseline": sorted({r.generator_1 for r in rows}),
    }


def import_annotations(
    experiment: str, files: list[Path], runs: dict[str, Path]
) -> tuple[dict[str, dict], dict[str, int]]:
    """Each run's summary of the annotations naming it (`runs`: run id -> its directory, for the runs that started),
    and the rows per generator that matched no run of this experiment. Every file is read and checked before the
    caller writes anything."""
    groups: dict[str, list[Annotation]] = {}
    for path in files:
        for row in _read(path):
            groups.setdefault(row.generator_2, []).append(row)
    matched, unmatched = {}, {}
    for generator, rows in groups.items():
        exp_name, _, run_id = generator.partition("/")
        if exp_name != experiment or run_id not in runs:
            unmatched[generator] = len(rows)
            continue
        annotators = sorted({str(r.annotator) for r in rows})
        if len(annotators) > 1:
            raise UserError(
                str(runs[run_id]),
                f"run {run_id} has annotations by {len(annotators)} annotators ({', '.join(annotators)}); "
                "import one annotator's files at a time",
            )
        matched[run_id] = rows
    gamed_path = find_gamed() if matched else None
    gamed = read_gamed(gamed_path) if gamed_path is not None else None
    eval_set_path = find_eval_set() if gamed is not None else None
    eval_set = read_eval_set(eval_set_path) if eval_set_path is not None else None
    summaries = {}
    for run_id, rows in matched.items():
        kept, duplicates = _deduplicate(rows)
        sources = list(dict.fromkeys(str(r.file) for r in rows))
        summaries[run_id] = {**summarize(kept, gamed, eval_set), "duplicates": duplicates, "files": sources}
    return summaries, unmatched
