"""AlpacaEval's leaderboard LC win rate, `length_controlled_v1` (Dubois et al. 2024, arXiv 2404.04475), on the fit of
lc_minimal.py, computed as AlpacaEval 0.6.6 computes it (alpaca_eval/metrics/glm_winrate.py: `_get_featurized_data`,
`fit_LogisticRegressionCV`).

The minimal GLM of lc_minimal.py fits one model against one baseline, so its length slope is whatever that
model's lengths allow: for a model much shorter than the baseline nearly every tanh term is near 1, the slope and the
intercept trade off, and LC is barely determined (several points too high in tests/test_lc.py). v1 pins the slope
with AlpacaEval's annotations of the baseline itself prompted to be verbose and concise, and adds each instruction's
difficulty; both come from `df_gamed.csv` of the Hugging Face dataset tatsu-lab/alpaca_eval (columns index,
preference in [0, 1], std_delta_len, instruction_difficulty, not_gamed_baseline; read from the local cache only).
The GLM is

    logit q_i = phi * tanh(std_delta_len_i) + psi * instruction_difficulty_i + theta * not_gamed_baseline_i

(the model's rows: std_delta_len = (len(output_1) - len(output_2)) / its sample s.d., in characters, a zero s.d. as
lc_minimal.tanh_std_delta says; not_gamed 1), fitted by lc_minimal.glm_fit on the model's judged rows (weight 1) and
the gamed baselines' rows (weight 0.2 / 2 each: AlpacaEval's regularize_to_baseline_lambda, split over its two gamed
baselines). LC is the mean over the model's rows (judged or not) of sigmoid(psi * difficulty_i + theta). LcFitV1
says how degenerate samples (every prompt lost or won, fewer than 5, identical lengths) come out.

df_gamed.csv knows instructions by `index` only, their place in AlpacaEval's eval set. AlpacaEval takes a row's place
in the annotations for that index (`df_annotations.reset_index()`), right only for a complete file in eval-set order.
dporef finds each row's index by its instruction's text in the eval set itself (EVAL_SET_FILE, from the same local
cache) and fits the rows in eval-set order, so a reordered, deduplicated or partial file gets the v1 LC that AlpacaEval
gives the same rows indexed by their instructions.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .lc_minimal import glm_fit, logit_interval, sandwich, sigmoid, tanh_std_delta

REPO = "tatsu-lab/alpaca_eval"
GAMED_FILE = "df_gamed.csv"
GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
EVAL_SET_FILE = "alpaca_eval_gpt4_baseline.json"  # AlpacaEval 2's eval set: instruction i is df_gamed's index i
REGULARIZE_TO_BASELINE = 0.2  # AlpacaEval's regularize_to_baseline_lambda for length_controlled_v1
DOWNLOAD = f"hf download --repo-type dataset {REPO} {GAMED_FILE} {EVAL_SET_FILE}"


def _cached(filename: str) -> Path | None:
    """A file of AlpacaEval's dataset in the local Hugging Face cache, or None (dporef never downloads)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=REPO, filename=filename, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def find_gamed() -> Path | None:
    return _cached(GAMED_FILE)


def find_eval_set() -> Path | None:
    return _cached(EVAL_SET_FILE)


@dataclass(frozen=True)
class Gamed:
    """The gamed baselines' rows as GLM design rows, and the difficulty of each instruction index."""

    path: Path
    x: np.ndarray  # (n, 3): tanh(std_delta_len), instruction_difficulty, not_gamed_baseline
    q: np.ndarray
    difficulty: dict[int, float]


@dataclass(frozen=True)
class EvalSet:
    """AlpacaEval's instructions in its order: the one at place i is df_gamed.csv's index i."""

    path: Path
    instructions: tuple[str, ...]

    def indices(self, instructions: list[str | None]) -> list[int | None]:
        """Each row's index, found by its instruction's text: the k-th row with a text takes the k-th place the eval
        set has it in (the first, bar a text the eval set repeats), None when there is none left."""
        places: dict[str, list[int]] = {}
        for i, text in enumerate(self.instructions):
            places.setdefault(text, []).append(i)
        taken: Counter = Counter()
        found = []
        for text in instructions:
            spots = places.get(text, []) if text is not None else []
            found.append(spots[taken[text]] if taken[text] < len(spots) else None)
            taken[text] += 1
        return found


def read_gamed(path: Path) -> Gamed:
    """df_gamed.csv's rows as AlpacaEval uses them (rows without a preference take no part in the fit)."""
    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(str(path), f"cannot read: {e.strerror}") from None
    missing = [c for c in GAMED_COLUMNS if not table or c not in table[0]]
    if missing:
        raise UserError(str(path), f"missing columns {', '.join(missing)}; AlpacaEval's {GAMED_FILE} has them")
    difficulty: dict[int, float] = {}
    try:
        cols = {c: np.array([_number(r[c]) for r in table]) for c in GAMED_COLUMNS}
        for i, d in zip(cols["index"], cols["instruction_difficulty"]):
            difficulty.setdefault(int(i), float(d))  # AlpacaEval: drop_duplicates("index") keeps the first
    except ValueError as e:
        raise UserError(str(path), f"not AlpacaEval's {GAMED_FILE}: {e}") from None
    used = ~np.isnan(cols["preference"])
    x = np.column_stack([np.tanh(cols["std_delta_len"]), cols["instruction_difficulty"], cols["not_gamed_baseline"]])
    return Gamed(Path(path), x[used], cols["preference"][used], difficulty)


def read_json_file(path: Path, what: str):
    """The JSON in `path`; a file that cannot be read or parsed is one line naming it and `what` it should be."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(str(path), f"cannot read {what}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(str(path), f"not valid JSON: {e}") from None


def read_eval_set(path: Path) -> EvalSet:
    """AlpacaEval's eval set file: a list of objects, each with its `instruction`."""
    rows = read_json_file(path, "AlpacaEval's eval set")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("instruction"), str) for r in rows
    ):
        raise UserError(str(path), f"not AlpacaEval's {EVAL_SET_FILE}: expected a list of objects with an instruction")
    return EvalSet(Path(path), tuple(r["instruction"] for r in rows))


def _number(text: str) -> float:
    """A csv cell as pandas reads it: True/False, a number, or empty (NaN)."""
    low = (text or "").strip().lower()
    if low in ("true", "false"):
        return float(low == "true")
    return math.nan if low == "" else float(low)


@dataclass(frozen=True)
class LcFitV1:
    """One fit of AlpacaEval's v1 GLM: the gamed rows then the model's judged rows (`rows`, `prefs`, `weights`), its
    coefficients (phi, psi, theta) and the difficulty of each of the model's rows (judged or not). `estimate` is
    `length_controlled_v1`, `interval()` its 95% interval, `converged` False when liblinear's final fit stopped at its
    iteration limit (lc_minimal.GlmFit). The gamed baselines keep the fit finite where the minimal GLM's is not
    (every preference a loss or a win: AlpacaEval's near-0 and near-1 values, which dporef matches) and let it run
    below 5 judged rows. Where AlpacaEval raises, dporef defines the value as lc_minimal.py's docstring says for the
    length term: 0 for identical lengths or a single row, so the fit reads the other terms."""

    rows: np.ndarray
    prefs: np.ndarray
    weights: np.ndarray
    w: np.ndarray
    difficulty: np.ndarray
    converged: bool

    @classmethod
    def of(cls, preference, policy_lengths, baseline_lengths, gamed: Gamed, difficulty) -> LcFitV1:
        q = np.asarray(preference, dtype=np.float64)
        difficulty = np.asarray(difficulty, dtype=np.float64)
        x = np.column_stack([tanh_std_delta(baseline_lengths, policy_lengths), difficulty, np.ones_like(q)])
        judged = ~np.isnan(q)
        rows, prefs = np.vstack([gamed.x, x[judged]]), np.concatenate([gamed.q, q[judged]])
        weights = np.concatenate([np.full(len(gamed.q), REGULARIZE_TO_BASELINE / 2), np.ones(int(judged.sum()))])
        fit = glm_fit(rows, prefs, weights)
        return cls(rows, prefs, weights, fit.w, difficulty, fit.converged)

    @property
    def estimate(self) -> float:
        return float(np.mean(sigmoid(self.w[1] * self.difficulty + self.w[2])))

    def interval(self) -> tuple[float, float]:
        """95% interval of the estimate by the delta method: its gradient in (phi, psi, theta) times the sandwich of
        every fitted row (gamed rows with their weights), on the logit scale of the LC, with the small-sample handling
        of lc_minimal.lc_interval (one-step correction of the L1 shrinkage, HC3, t). An LC saturated to 0 or 1 in
        floating point has no spread left to estimate: the point itself."""
        fitted = sigmoid(self.w[1] * self.difficulty + self.w[2])
        lc, slope = fitted.mean(), fitted * (1 - fitted)
        if not 0 < lc < 1:
            return float(lc), float(lc)
        gradient = np.array([0.0, np.mean(slope * self.difficulty), np.mean(slope)]) / (lc * (1 - lc))  # of logit(LC)
        spread = sandwich(self.rows, self.prefs, self.weights, self.w)
        return logit_interval(
            math.log(lc / (1 - lc)), spread.shift @ gradient, spread.se(spread.terms @ gradient), spread.dof
        )


def lc_win_rate_v1(preference, policy_lengths, baseline_lengths, gamed: Gamed, difficulty) -> float:
    """`length_controlled_v1` in [0, 1]: preference in [0, 1] per row (NaN: unjudged), lengths in characters,
    `difficulty` each row's instruction difficulty (df_gamed's, by the row's eval-set index)."""
    return LcFitV1.of(preference, policy_lengths, baseline_lengths, gamed, difficulty).estimate


def lc_interval_v1(preference, policy_lengths, baseline_lengths, gamed: Gamed, difficulty) -> tuple[float, float]:
    """95% interval of `lc_win_rate_v1` (LcFitV1.interval)."""
    return LcFitV1.of(preference, policy_lengths, baseline_lengths, gamed, difficulty).interval()
