"""The graded family of references (world:same@N, other@N, distill@N) and the fit of the best win rate on each
similarity measure: members built deterministically from prompts of their own, and Pearson's r with the interval
Fisher's z gives by hand (the fit given strength: tests/test_similarity_stats.py)."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.expdir import ExperimentDir, read_baseline
from dpo_ref.models import resolve
from dpo_ref.reporting.similarity import SIMILARITY_MEASURES, fit
from dpo_ref.world import family


def test_fit_matches_pearson_and_fishers_interval_by_hand():
    x = [0.0, 0.5, 1.1, 2.0, 3.2, 4.0]
    y = [0.60, 0.62, 0.57, 0.55, 0.52, 0.53]
    best = [{"objective": "dpo", "reference": f"r{i}", "win_rate": v} for i, v in enumerate(y)]
    strength = [0.50, 0.55, 0.52, 0.61, 0.58, 0.60]
    similarity = {f"r{i}": {"sft_ref_kl": v, "strength": strength[i], "kind": "fixed"} for i, v in enumerate(x)}
    similarity["r5"]["kind"] = "moving"  # not a fixed point: left out of the fit
    (got,) = fit(best, similarity)["fits"]
    xs, ys = np.array(x[:5]), np.array(y[:5])
    r = float(np.corrcoef(xs, ys)[0, 1])
    half = 1.959963984540054 / math.sqrt(5 - 3)
    assert got["n"] == 5 and got["r"] == pytest.approx(r, abs=1e-12)
    assert (got["r_lo"], got["r_hi"]) == pytest.approx(
        (math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half))
    )
    assert got["slope"] == pytest.approx(r * ys.std() / xs.std())


def test_too_few_references_are_named_instead_of_fitted():
    best = [{"objective": "dpo", "reference": f"r{i}", "win_rate": 0.5 + i / 10} for i in range(4)]
    result = fit(best, {f"r{i}": {"sft_ref_kl": float(i), "strength": i % 2 / 10} for i in range(4)})
    assert result["fits"] == [] and result["too_few_references"] == {"dpo": 4}  # the partial r's interval needs 5


@pytest.mark.slow
def test_members_learn_from_prompts_of_their_own_and_rebuild_identically(tiny_world):
    held_out = set(tiny_world.eval_prompts())
    pairs = {p for split in tiny_world.preference_data().values() for p in split["prompt"]}
    refs = {name: resolve(f"world:{name}", tiny_world) for name in ("same@3", "other@3", "distill@3")}
    for name in refs:
        prompts = json.loads((family.member_dir(tiny_world, name) / "prompts.json").read_text())
        assert len(prompts) == 3 * tiny_world.config.sft_batch_size and not (set(prompts) & (held_out | pairs))
    same = json.loads((family.member_dir(tiny_world, "same@3") / "prompts.json").read_text())
    assert json.loads((family.member_dir(tiny_world, "other@3") / "prompts.json").read_text()) == same  # one stream
    other_vocab = json.loads((tiny_world.models["strong-other"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((family.member_dir(tiny_world, "other@3") / "tokenizer.json").read_text())["model"]["vocab"] == (
        other_vocab
    )
    shutil.rmtree(family.member_dir(tiny_world, "distill@3"))
    assert resolve("world:distill@3", tiny_world).fingerprint == refs["distill@3"].fingerprint  # same weights again


@pytest.mark.slow
def test_an_unknown_member_is_refused_in_one_line(tmp_path, tiny_world):
    sets = [*TINY_WORLD, "references=[{name: x, model: 'world:same@0'}]"]
    result = CliRunner().invoke(
        app, ["swap-reference", "--out", str(tmp_path), *[a for s in sets for a in ("--set", s)]]
    )
    assert result.exit_code == 2
    assert "references.0.model" in result.output and "world:same@N" in result.output
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_swap_reference_over_a_family_fits_the_best_win_rate_on_each_measure(tmp_path, run_study):
    refs = ", ".join(
        f"{{name: {n.replace('@', '-')}, model: 'world:{n}'}}"
        for n in ("sft", "same@3", "same@6", "other@3", "distill@3")
    )
    sets = [f"references=[{refs}]", "objectives.0.betas=[0.1]", "train.max_steps=6", "train.learning_rate=3e-3"]
    summary, _ = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    sims = summary["similarity"]["references"]
    assert all(0 <= s["strength"] <= 1 for s in sims.values())
    best = {r["reference"]: r["win_rate"] for r in summary["best"]["rows"] if r["reference"]}
    fits = {f["measure"]: f for f in summary["similarity"]["fit"]["fits"]}
    assert set(fits) <= set(SIMILARITY_MEASURES) and "sft_ref_kl" in fits, summary["similarity"]["fit"]
    exp_dir = tmp_path / "rq3_swap_reference"
    n_test = len(read_baseline(ExperimentDir(exp_dir), "test").prompts)
    assert all(s["sft_ref_kl_n"] == n_test for s in sims.values())  # one SFT sample per test prompt
    xs = [sims[name]["sft_ref_kl"] for name in best]
    assert fits["sft_ref_kl"]["n"] == 5, summary["similarity"]["fit"]
    assert fits["sft_ref_kl"]["r"] == pytest.approx(float(np.corrcoef(xs, list(best.values()))[0, 1]), abs=1e-9)
    assert (exp_dir / "similarity.png").stat().st_size > 10_000
    assert "Does similarity predict the gain?" in (exp_dir / "results.md").read_text()
