"""`dporef swap-reference` and cross-tokenizer scoring on a tiny world with its two stronger references."""

import numpy as np
import pytest
import torch

from dpo_ref.chat import render
from dpo_ref.data.tokenize import pairs_fingerprint
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.reference import ReferenceEngine, text_logps


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def direct_logp(model, ids: list[int], n_prompt: int) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(n_prompt, len(ids)))


def test_one_text_under_two_tokenizers_matches_direct_forward_passes(world, tmp_path):
    prompt, response = "dup abc", "aabbcc"  # strong-other's BPE merges doubled letters
    lengths = {}
    for spec in ("world:sft", "world:strong-other"):
        ref = resolve(spec, world)
        tok, model = load_tokenizer(ref), load_model(ref)
        p, c = render(tok, prompt, response)
        lengths[spec] = len(c)
        expected = direct_logp(model, p + c, len(p))
        (got,) = text_logps(ref, [prompt], [response], [True], batch_size=1)
        assert got == pytest.approx(expected, abs=1e-4), spec
    assert lengths["world:sft"] != lengths["world:strong-other"]  # really two different tokenizations


def test_reference_scores_of_same_pairs_align_across_tokenizers(world, tmp_path):
    pairs = world.preference_data()
    engine = ReferenceEngine(cache_dir=tmp_path)
    fp = pairs_fingerprint(pairs)
    same = engine.pair_scores(resolve("world:sft", world), pairs, fp, 64, 16)
    other = engine.pair_scores(resolve("world:strong-other", world), pairs, fp, 64, 16)
    for split in pairs:
        assert len(other[split]["chosen"]) == len(same[split]["chosen"]) == len(pairs[split])
        assert np.all(np.isfinite(other[split]["chosen"])) and np.all(other[split]["chosen"] < 0)


@pytest.mark.slow
def test_swap_reference_end_to_end(tmp_path, world, run_study):
    sets = ["objectives.0.betas=[1,0.1]", "train.max_steps=4", "eval.max_new_tokens=20"]
    summary, _ = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    # three references, each scored exactly once (the policy's own scores are the `sft` entry)
    assert summary["reference_scoring"]["computed"] + summary["reference_scoring"]["from_cache"] == 3
    assert len(summary["rows"]) == 1 + 3 * 2 and all(r["status"] == "done" for r in summary["rows"])
    sims = summary["similarity"]["references"]
    assert set(sims) == {"sft", "strong-same", "strong-other"}
    assert sims["sft"]["log_ratio"] == 0 and sims["sft"]["logp_corr"] == pytest.approx(1.0)
    assert sims["strong-other"]["log_ratio"] != 0
    best = {r["method"]: r for r in summary["best"]["rows"]}
    assert set(best) == {"SFT", "dpo <- sft", "dpo <- strong-same", "dpo <- strong-other"}
    assert best["dpo <- strong-other"]["logp_corr"] == sims["strong-other"]["logp_corr"]
    md = (tmp_path / "rq3_swap_reference" / "results.md").read_text()
    assert "logp_corr" in md and "Similarity of each reference" in md

    # a second command in a fresh results directory scores nothing: every reference comes from the cache
    summary, _ = run_study("swap-reference", tmp_path / "again", *sets, experiment="rq3_swap_reference")
    assert summary["reference_scoring"] == {"computed": 0, "from_cache": 3}
