"""curves.png from the histories on disk: drawn when a run logged a step, robust to a history that is not what a run
writes, and never left stale."""

import math

from dpo_ref.reporting.curves import plot_curves, points

HISTORY = [
    {"step": 1, "loss": 0.6931, "rewards/margins": 0.0, "grad_norm": 1.5, "learning_rate": 1e-4},
    {"step": 2, "eval_loss": 0.69, "eval_rewards/margins": 0.01},
    {"step": 3, "loss": float("nan"), "rewards/margins": 0.2},
    {"step": 3, "train_loss": 0.65},
]


def test_points_are_the_logged_steps_of_one_key_with_gaps_for_non_finite_values():
    steps, values = points(HISTORY, "loss")
    assert steps == [1.0, 3.0] and values[0] == 0.6931 and math.isnan(values[1])
    assert points(HISTORY, "eval_loss") == ([2.0], [0.69])
    junk = ["x", {"step": "3", "loss": 1.0}, {"step": 4, "loss": True}, {"step": 5, "loss": None}, {"step": 6}]
    assert points(junk, "loss") == ([], []) and points({"not": "a list"}, "loss") == ([], [])


def test_a_png_when_a_run_logged_and_none_left_when_none_did(tmp_path):
    path = tmp_path / "curves.png"
    assert plot_curves({"dpo-sft-b0.1-s0": HISTORY, "sft": [], "broken": "junk"}, path, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_curves({"sft": [], "evaluated only": [{"step": 2, "eval_loss": 0.7}]}, path, "t")
    assert not path.exists()  # a stale figure of runs since rerun is removed, not shown beside new tables
