"""AlpacaEval's leaderboard LC win rate, `length_controlled_v1` (Dubois et al. 2024, arXiv 2404.04475), computed as
AlpacaEval 0.6.6 computes it (alpaca_eval/metrics/glm_winrate.py: `_get_featurized_data`, `fit_LogisticRegressionCV`).

The minimal GLM of length_controlled.py fits one model against one baseline, so its length slope is whatever that
model's lengths allow: for a model much shorter than the baseline nearly every tanh term is near 1, the slope and the
intercept trade off, and LC is barely determined (several points too high in tests/test_lc.py). v1 pins the slope
with AlpacaEval's annotations of the baseline itself prompted to be verbose and concise, and adds each instruction's
difficulty; both come from `df_gamed.csv` of the Hugging Face dataset tatsu-lab/alpaca_eval (columns index,
preference in [0, 1], std_delta_len, instruction_difficulty, not_gamed_baseline; read from the local cache only).
The GLM is

    logit q_i = phi * tanh(std_delta_len_i) + psi * instruction_difficulty_i + theta * not_gamed_baseline_i

(the model's rows: std_delta_len = (len(output_1) - len(output_2)) / its sample s.d., in characters; not_gamed 1),
fitted by length_controlled.glm_fit on the model's judged rows (weight 1) and the gamed baselines' rows (weight
0.2 / 2 each: AlpacaEval's regularize_to_baseline_lambda, split over its two gamed baselines). LC is the mean over the
model's rows (judged or not) of sigmoid(psi * difficulty_i + theta). As in AlpacaEval, the model's row i is
instruction `index` i: annotations must come in AlpacaEval's eval-set order, as its annotations.json does.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .length_controlled import glm_fit, tanh_std_delta

REPO = "tatsu-lab/alpaca_eval"
GAMED_FILE = "df_gamed.csv"
GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
REGULARIZE_TO_BASELINE = 0.2  # AlpacaEval's regularize_to_baseline_lambda for length_controlled_v1
DOWNLOAD = f"hf download --repo-type dataset {REPO} {GAMED_FILE}"


def find_gamed() -> Path | None:
    """df_gamed.csv in the local Hugging Face cache, or None (dporef never downloads)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=REPO, filename=GAMED_FILE, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        return None


@dataclass(frozen=True)
class Gamed:
    """The gamed baselines' rows as GLM design rows, and the difficulty of each instruction index."""

    path: Path
    x: np.ndarray  # (n, 3): tanh(std_delta_len), instruction_difficulty, not_gamed_baseline
    q: np.ndarray
    difficulty: dict[int, float]

    def difficulties(self, n: int) -> np.ndarray | None:
        """Difficulty of instructions 0..n-1, or None when the file lacks one of them."""
        if any(i not in self.difficulty for i in range(n)):
            return None
        return np.array([self.difficulty[i] for i in range(n)])


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


def _number(text: str) -> float:
    """A csv cell as pandas reads it: True/False, a number, or empty (NaN)."""
    low = (text or "").strip().lower()
    if low in ("true", "false"):
        return float(low == "true")
    return math.nan if low == "" else float(low)


def lc_win_rate_v1(preference, policy_lengths, baseline_lengths, gamed: Gamed, difficulty: np.ndarray) -> float:
    """`length_controlled_v1` in [0, 1]: preference in [0, 1] per row in eval-set order (NaN: unjudged), lengths in
    characters, `difficulty` = gamed.difficulties(len(preference))."""
    q = np.asarray(preference, dtype=np.float64)
    x = np.column_stack([tanh_std_delta(baseline_lengths, policy_lengths), difficulty, np.ones_like(q)])
    judged = ~np.isnan(q)
    weights = np.concatenate([np.full(len(gamed.q), REGULARIZE_TO_BASELINE / 2), np.ones(int(judged.sum()))])
    w = glm_fit(np.vstack([gamed.x, x[judged]]), np.concatenate([gamed.q, q[judged]]), weights)
    return float(np.mean(1.0 / (1.0 + np.exp(-(w[1] * difficulty + w[2])))))
