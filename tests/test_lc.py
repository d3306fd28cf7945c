"""The length-controlled win rate against AlpacaEval's own code (alpaca_eval.metrics.glm_winrate, installed by the dev
extra): `length_controlled_minimal` on the function, the leaderboard's `length_controlled_v1` and the minimal fallback
through `import_annotations`, with df_gamed.csv laid out in a temporary Hugging Face cache that both codes read
offline. Both fit with the same scikit-learn estimator, arguments and folds, so they agree to float rounding."""

import hashlib
import json
import os

import huggingface_hub.constants
import numpy as np
import pytest

from dpo_ref.evaluation.alpaca_eval import import_annotations
from dpo_ref.evaluation.lc_minimal import lc_interval, lc_win_rate
from dpo_ref.evaluation.lc_v1 import DOWNLOAD, EVAL_SET_FILE, GAMED_FILE

TOL = 1e-9  # the same scikit-learn estimator, arguments and folds: equal up to float rounding
N = 805  # AlpacaEval's eval set
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASELINE = "gpt4_1106_preview"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
SCENARIOS = {  # name: (mean length change of the policy vs the baseline, in characters; quality edge in logits)
    "longer": (400, 0.2),
    "much_shorter": (-1200, 0.3),
    "shorter_and_worse": (-300, -0.5),
    "same_length": (0, 0.4),
}

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:pkg_resources is deprecated:UserWarning")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache that dporef and AlpacaEval both read (huggingface_hub reads the env at import)."""
    path = tmp_path / "hf" / "hub"
    path.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(path.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return path


def difficulties(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, N)


def cache_df_gamed(hub, difficulty: np.ndarray, seed: int = 0, eval_set: bool = True):
    """df_gamed.csv as a download leaves it (blob, snapshot link, refs/main): the baseline prompted to be verbose and
    concise, judged against itself (preference in [0, 1], std_delta_len = (len_1 - len_2) / sd per gamed model); with
    it AlpacaEval's eval set, instruction i at place i (what annotations() writes)."""
    rng = np.random.default_rng(seed)
    lines = ["index,model,preference,std_delta_len,instruction_difficulty,not_gamed_baseline"]
    for model, shift in ((f"{BASELINE}_verbose", -700.0), (f"{BASELINE}_concise", 900.0)):
        delta = shift + rng.normal(0.0, 400.0, N)
        std_delta = delta / delta.std(ddof=1)
        pref = np.clip(1 / (1 + np.exp(0.7 * np.tanh(std_delta) - 0.6 * difficulty)) + rng.normal(0, 0.1, N), 0, 1)
        cells = zip(pref.tolist(), std_delta.tolist(), difficulty.tolist())
        lines += [f"{i},{model},{p!r},{s!r},{d!r},False" for i, (p, s, d) in enumerate(cells)]
    files = {GAMED_FILE: "\n".join(lines) + "\n"}
    if eval_set:
        rows = [{"instruction": f"instruction {i}", "output": "b", "generator": BASELINE} for i in range(N)]
        files[EVAL_SET_FILE] = json.dumps(rows)
    root = hub / "datasets--tatsu-lab--alpaca_eval"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        blob = root / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot / GAMED_FILE


def annotations(shift: float, edge: float, difficulty: np.ndarray, seed: int = 1, generator="exp/run") -> list[dict]:
    """An annotations.json of a length-biased weighted judge, in eval-set order, with draws (0) and unjudged rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        len_1 = int(rng.integers(200, 3000))
        len_2 = max(1, int(len_1 + shift + rng.normal(0, 500)))
        logit = edge + 0.9 * np.tanh((len_2 - len_1) / 600) + 0.6 * difficulty[i]
        pref = float(np.clip(1 + 1 / (1 + np.exp(-logit)) + rng.normal(0, 0.15), 1, 2))
        rows.append(
            {
                "instruction": f"instruction {i}",
                "output_1": "b" * len_1,
                "generator_1": BASELINE,
                "dataset": "helpful_base",
                "output_2": "m" * len_2,
                "generator_2": generator,
                "annotator": ANNOTATOR,
                "preference": None if i % 53 == 7 else 0 if i % 61 == 3 else pref,
                "price_per_example": 0.01,
                "time_per_example": 1.2,
            }
        )
    return rows


def alpaca_eval_lc(rows: list[dict], glm: str) -> float:
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    return get_length_controlled_winrate(rows, glm_name=glm, save_weights_dir=None)["length_controlled_winrate"] / 100


def imported(tmp_path, rows: list[dict]) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    summaries, unmatched = import_annotations("exp", [path], {"run": tmp_path / "exp" / "run"})
    assert not unmatched
    return summaries["run"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_minimal_agrees_with_alpaca_eval(hub, scenario):
    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)  # AlpacaEval reads it even for the minimal GLM, which does not use it
    rows = annotations(*SCENARIOS[scenario], difficulty)
    wins = [np.nan if r["preference"] is None else 0.5 if r["preference"] == 0 else r["preference"] - 1 for r in rows]
    ours = lc_win_rate(wins, [len(r["output_2"]) for r in rows], [len(r["output_1"]) for r in rows])
    assert ours == pytest.approx(alpaca_eval_lc(rows, "length_controlled_minimal"), abs=TOL)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_import_computes_alpaca_evals_v1_from_the_cached_df_gamed(hub, tmp_path, scenario):
    difficulty = difficulties()
    path = cache_df_gamed(hub, difficulty)
    rows = annotations(*SCENARIOS[scenario], difficulty)
    summary = imported(tmp_path, rows)
    assert summary["lc_method"] == "v1" and summary["lc_data"] == str(path)
    assert summary["lc_win_rate"] == pytest.approx(alpaca_eval_lc(rows, "length_controlled_v1"), abs=TOL)


def test_import_without_df_gamed_computes_alpaca_evals_minimal_and_says_so(hub, tmp_path):
    difficulty = difficulties()
    rows = annotations(*SCENARIOS["much_shorter"], difficulty)
    summary = imported(tmp_path, rows)
    assert summary["lc_method"] == "minimal" and DOWNLOAD in summary["lc_note"]
    cache_df_gamed(hub, difficulty)  # only now, for AlpacaEval, which cannot run without it
    assert summary["lc_win_rate"] == pytest.approx(alpaca_eval_lc(rows, "length_controlled_minimal"), abs=TOL)
    # the judge's length-free preference, by construction of annotations(): mean sigmoid(edge + 0.6 * difficulty)
    truth = np.mean(1 / (1 + np.exp(-(SCENARIOS["much_shorter"][1] + 0.6 * difficulty))))
    v1 = alpaca_eval_lc(rows, "length_controlled_v1")
    assert summary["lc_win_rate"] > v1 + 0.03 and abs(v1 - truth) < summary["lc_win_rate"] - truth  # minimal overstates


def test_more_rows_than_df_gamed_has_instructions_fall_back_to_minimal(hub, tmp_path):
    cache_df_gamed(hub, difficulties())
    rows = annotations(200, 0.2, np.zeros(N))
    rows += [dict(r, instruction=f"extra {i}") for i, r in enumerate(rows[:5])]
    summary = imported(tmp_path, rows)
    assert summary["lc_method"] == "minimal" and "810 rows" in summary["lc_note"]


def test_lc_is_near_half_when_length_alone_explains_the_raw_win_rate():
    rng = np.random.default_rng(0)
    base = rng.integers(20, 60, size=800)
    policy = base + rng.integers(-10, 40, size=800)  # the policy is longer on most prompts ...
    pref = np.where(policy > base, 1.0, np.where(policy == base, 0.5, 0.0))  # ... and the judge only likes length
    raw = pref.mean()
    assert raw > 0.7
    assert lc_win_rate(pref, policy, base) == pytest.approx(0.5, abs=0.05)


def test_lc_keeps_a_real_advantage_that_length_does_not_explain():
    rng = np.random.default_rng(1)
    base = rng.integers(20, 60, size=2000)
    policy = base + rng.integers(-20, 21, size=2000)  # no systematic length difference
    logit = 1.0 + 0.8 * np.tanh((policy - base) / (policy - base).std())  # quality edge theta = 1 plus length bias
    pref = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(float)
    assert lc_win_rate(pref, policy, base) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.04)


def test_equal_lengths_give_the_raw_win_rate():
    """AlpacaEval divides by a zero s.d. here; dporef drops the length term, leaving the L1-penalised mean."""
    pref = np.random.default_rng(2).choice([0.0, 0.5, 1.0], size=400, p=[0.3, 0.1, 0.6])
    lengths = np.full(400, 10)
    assert lc_win_rate(pref, lengths, lengths) == pytest.approx(pref.mean(), abs=1e-3)


def v1_of(tmp_path, rows: list[dict]) -> dict:
    summary = imported(tmp_path, rows)
    assert summary["lc_method"] == "v1", summary.get("lc_note")
    return summary


def test_v1_finds_each_rows_difficulty_by_its_instruction_whatever_the_files_order(hub, tmp_path):
    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)
    rows = annotations(*SCENARIOS["longer"], difficulty)
    shuffled = [rows[i] for i in np.random.default_rng(5).permutation(N)]
    ordered, reordered = v1_of(tmp_path / "ordered", rows), v1_of(tmp_path / "reordered", shuffled)
    assert reordered["lc_win_rate"] == pytest.approx(alpaca_eval_lc(rows, "length_controlled_v1"), abs=TOL)
    for key in ("lc_win_rate", "lc_win_rate_lo", "lc_win_rate_hi"):
        assert reordered[key] == ordered[key]
    # AlpacaEval reads the shuffled file's row i as instruction i
    assert abs(alpaca_eval_lc(shuffled, "length_controlled_v1") - ordered["lc_win_rate"]) > 1e-3


def test_v1_of_a_partial_file_is_alpaca_evals_for_its_instructions(hub, tmp_path):
    """AlpacaEval itself takes a DataFrame's index as the instruction index: indexed by eval-set place, it is right."""
    import pandas as pd

    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)
    rows = annotations(*SCENARIOS["shorter_and_worse"], difficulty)
    places = np.sort(np.random.default_rng(6).choice(N, size=300, replace=False))
    partial = [rows[i] for i in np.random.default_rng(7).permutation(places)]
    truth = alpaca_eval_lc(pd.DataFrame([rows[i] for i in places], index=places), "length_controlled_v1")
    summary = v1_of(tmp_path, partial)
    assert summary["lc_win_rate"] == pytest.approx(truth, abs=TOL)
    assert summary["lc_win_rate_lo"] < summary["lc_win_rate"] < summary["lc_win_rate_hi"]


def test_without_the_eval_set_there_is_no_v1_and_the_note_says_what_to_download(hub, tmp_path):
    cache_df_gamed(hub, difficulties(), eval_set=False)
    summary = imported(tmp_path, annotations(*SCENARIOS["longer"], difficulties()))
    assert summary["lc_method"] == "minimal" and EVAL_SET_FILE in summary["lc_note"] and DOWNLOAD in summary["lc_note"]
    assert summary["lc_win_rate_lo"] < summary["lc_win_rate"] < summary["lc_win_rate_hi"]


@pytest.mark.parametrize("preference", [1.0, 2.0])
def test_all_losses_or_all_wins(hub, preference):
    """AlpacaEval's minimal GLM has no finite fit here: it returns 0.5 for all losses (liblinear sees no weight on a
    win) and 1 - 2e-7 for all wins; dporef returns the same, with the exact binomial interval of the raw win rate
    widened to hold it (tests/test_lc_degenerate.py has the other degenerate samples)."""
    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)
    rows = [dict(r, preference=preference) for r in annotations(200, 0.2, difficulty)]
    ae = alpaca_eval_lc(rows, "length_controlled_minimal")
    assert ae == (0.5 if preference == 1.0 else pytest.approx(1.0, abs=1e-6))
    wins, len_2, len_1 = [preference - 1] * N, [len(r["output_2"]) for r in rows], [len(r["output_1"]) for r in rows]
    assert lc_win_rate(wins, len_2, len_1) == pytest.approx(ae, abs=TOL)
    tail = 0.025 ** (1 / N)  # Clopper-Pearson: (0, 1 - 0.025^(1/n)) for no wins, (0.025^(1/n), 1) for all
    assert lc_interval(wins, len_2, len_1) == pytest.approx((0.0, 0.5) if preference == 1.0 else (tail, 1.0))


def test_v1_of_all_losses_is_alpaca_evals_and_inside_its_interval(hub, tmp_path):
    """The gamed baselines keep v1 finite: AlpacaEval's near-zero value stands."""
    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)
    rows = [dict(r, preference=1.0) for r in annotations(200, 0.2, difficulty)]
    summary = v1_of(tmp_path, rows)
    assert summary["lc_win_rate"] == pytest.approx(alpaca_eval_lc(rows, "length_controlled_v1"), abs=TOL)
    assert summary["lc_win_rate_lo"] <= summary["lc_win_rate"] <= summary["lc_win_rate_hi"]
    assert summary["lc_win_rate"] < 1e-3


@pytest.mark.parametrize(
    "win, expected, interval", [(0.0, 0.0, (0.0, 0.975)), (1.0, 1.0, (0.025, 1.0)), (0.7, 0.7, (0.0, 1.0))]
)
def test_a_single_prompt(hub, win, expected, interval):
    """AlpacaEval cannot fit one row (the s.d. of one length difference is NaN); dporef returns its preference, and
    an interval that says one prompt tells little: exact binomial for a win or a loss, else (0, 1)."""
    difficulty = difficulties()
    cache_df_gamed(hub, difficulty)
    rows = [dict(annotations(200, 0.2, difficulty)[0], preference=1 + win)]
    with pytest.raises(ValueError):
        alpaca_eval_lc(rows, "length_controlled_minimal")
    assert lc_win_rate([win], [10], [20]) == pytest.approx(expected, abs=1e-3)
    assert lc_interval([win], [10], [20]) == pytest.approx(interval)
