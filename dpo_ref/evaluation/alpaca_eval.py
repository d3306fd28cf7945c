"""AlpacaEval interop, so the paper's headline number (LC win rate from a GPT-4 judge) can come from outside dporef.

Export: every run writes `model_outputs.json`, a list of {instruction, output, generator, dataset}: the file
`alpaca_eval --model_outputs` reads. The generator is `<experiment>/<run-id>`.
Import: AlpacaEval's `annotations.json` rows hold `instruction`, `output_1` (its baseline's response), `output_2`
(the run's), `generator_2` and `preference` in [1, 2] (2 = output_2 preferred; weighted annotators give fractions).
`dporef import-annotations` matches rows to runs by `generator_2`, takes win = preference - 1, and writes
`alpaca_eval.json` into each run: win rate, and the LC win rate of length_controlled.py with lengths in characters,
AlpacaEval's unit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..store import atomic_write_json
from .length_controlled import lc_win_rate

MODEL_OUTPUTS = "model_outputs.json"
ANNOTATED = "alpaca_eval.json"
NEEDED = ("output_1", "output_2", "generator_2", "preference")  # annotation keys the import reads


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


def _read(path: Path) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(str(path), f"cannot read annotations: {e.strerror}") from None
    except ValueError as e:
        raise UserError(str(path), f"not valid JSON: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(str(path), "expected AlpacaEval's annotations.json: a list of objects")
    for i, row in enumerate(rows):
        missing = [k for k in NEEDED if k not in row]
        if missing:
            raise UserError(f"{path}: [{i}]", f"missing {', '.join(missing)}; annotation rows need {', '.join(NEEDED)}")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Win rate (with s.e.) and LC win rate of output_2 over output_1; rows without a preference are counted."""
    judged = [r for r in rows if r["preference"] is not None and not math.isnan(float(r["preference"]))]
    wins = np.array([float(r["preference"]) - 1.0 for r in judged])
    if len(wins) == 0:
        return {"n": 0, "unjudged": len(rows)}
    return {
        "n": len(wins),
        "unjudged": len(rows) - len(wins),
        "win_rate": float(wins.mean()),
        "win_rate_se": float(wins.std(ddof=1) / np.sqrt(len(wins))) if len(wins) > 1 else 0.0,
        "lc_win_rate": lc_win_rate(wins, [len(r["output_2"]) for r in judged], [len(r["output_1"]) for r in judged]),
        "annotators": sorted({str(r.get("annotator", "?")) for r in judged}),
        "baseline": sorted({str(r.get("generator_1", "?")) for r in judged}),
    }


def import_annotations(exp_dir: Path, experiment: str, files: list[Path]) -> tuple[dict[str, dict], dict[str, int]]:
    """Write `alpaca_eval.json` into each run the annotations name; return (per-run summary, rows per generator that
    matched no run of this experiment)."""
    groups: dict[str, list[dict]] = {}
    for path in files:
        for row in _read(path):
            groups.setdefault(str(row["generator_2"]), []).append(row)
    summaries, unmatched = {}, {}
    for generator, rows in groups.items():
        exp_name, _, run_id = generator.partition("/")
        run_dir = exp_dir / run_id
        if exp_name != experiment or not run_id or not (run_dir / "run.yaml").is_file():
            unmatched[generator] = len(rows)
            continue
        summaries[run_id] = {**summarize(rows), "files": [str(f) for f in files]}
        atomic_write_json(run_dir / ANNOTATED, summaries[run_id])
    return summaries, unmatched
