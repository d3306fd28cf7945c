"""`kind: mixture`: several fixed references at once, log p_mix = sum_k w_k log p_k (a multi-reference objective),
built from the components' cached columns with no scoring pass of its own; refused in one line where it cannot be."""

import re
from pathlib import Path

import pytest

from dpo_ref.config import load_experiment
from dpo_ref.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
REFS = "references=[{name: sft, model: world:sft}, {name: strong, model: world:strong-same}, "


@pytest.mark.parametrize(
    "mixture, says",
    [
        ("{name: mix, kind: mixture}", "kind: mixture needs `mix`"),
        ("{name: mix, kind: mixture, model: world:sft, mix: {sft: 0.5, strong: 0.5}}", "a mixture names no `model`"),
        ("{name: mix, kind: mixture, mix: {sft: 0.5, strong: 0.6}}", "weights > 0 that sum to 1"),
        ("{name: mix, kind: mixture, mix: {sft: 1.0}}", "two or more fixed references"),
        ("{name: mix, kind: mixture, mix: {sft: 0.5, nope: 0.5}}", "two or more fixed references"),
        ("{name: mix, kind: mixture, mix: {sft: 0.5, strong: 0.5}, alpha: 0.3}", "not read by kind: mixture"),
        ("{name: mix, model: world:sft, mix: {sft: 0.5, strong: 0.5}}", "`mix`: read by kind: mixture only"),
    ],
)
def test_a_mixture_that_cannot_be_is_refused(mixture, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace("`", "`")):
        load_experiment(ROOT / "experiments/rq3_swap_reference/default.yaml", [REFS + mixture + "]"])


@pytest.mark.slow
def test_a_mixture_trains_on_the_weighted_sum_of_its_components_columns(run_study, tmp_path):
    import datasets
    import numpy as np

    from dpo_ref.config import find_run
    from dpo_ref.expdir import ExperimentDir, Prepared

    sets = [
        REFS + "{name: mix, kind: mixture, mix: {sft: 0.25, strong: 0.75}}]",
        "objectives=[{name: dpo, betas: [0.1]}]",
        "train.max_steps=4",
        "eval.max_new_tokens=8",
    ]
    results, result = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    rows = {r["run_id"]: r for r in results["rows"]}
    assert rows["dpo-mix-b0.1-s0"]["status"] == "done" and rows["dpo-mix-b0.1-s0"]["kl"] is not None
    passes = re.search(r"reference scoring passes: (\d+) computed, (\d+) from cache", " ".join(result.output.split()))
    assert sum(map(int, passes.groups())) == 2  # sft and strong (computed, or cached by another test), none for mix
    prepared = Prepared.open(ExperimentDir(tmp_path / "rq3_swap_reference"))
    pairs = datasets.load_from_disk(str(tmp_path / "rq3_swap_reference" / "prepared" / "pairs"))["train"]
    mixed = prepared.split("train", find_run(prepared.exp, "dpo-mix-b0.1-s0", "test"))
    for side in ("chosen", "rejected"):
        want = 0.25 * np.array(pairs[f"ref:sft:{side}"]) + 0.75 * np.array(pairs[f"ref:strong:{side}"])
        assert np.allclose(mixed[f"ref_{side}_logps"], want, rtol=1e-12)
        assert not np.allclose(want, pairs[f"ref:sft:{side}"])  # the components differ: the sum is a real mixture
