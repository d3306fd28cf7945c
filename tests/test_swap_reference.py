"""`dporef swap-reference` and cross-tokenizer scoring on a tiny world with its two stronger references."""

import pytest
import torch
from datasets import load_from_disk

from dpo_ref.chat import render
from dpo_ref.data.tokenize import tokenize_pairs
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
        tok, model = load_tokenizer(ref), load_model(ref, torch.float32)
        p, c = render(tok, prompt, response)
        lengths[spec] = len(c)
        expected = direct_logp(model, p + c, len(p))
        (got,) = text_logps(ref, [prompt], [response], [True], batch_size=1)
        assert got == pytest.approx(expected, abs=1e-4), spec
    assert lengths["world:sft"] != lengths["world:strong-other"]  # really two different tokenizations


def test_reference_of_another_family_scores_the_same_texts(world, tmp_path):
    """Every pair's score under strong-other equals a forward pass over that model's own template, written out as
    text, of the same prompt and response (closed by its end token only when the response ended)."""
    sft_tok = load_tokenizer(resolve("world:sft", world))
    pairs, _ = tokenize_pairs(world.preference_data(), sft_tok, 1024)  # nothing is cut at 1024
    other = resolve("world:strong-other", world)
    tok, model = load_tokenizer(other), load_model(other, torch.float32)
    scores = ReferenceEngine(cache_dir=tmp_path).pair_scores(other, pairs, sft_tok, 1024, 16)["train"]
    val = pairs["train"]
    assert not all(list(val["chosen_ended"]) + list(val["rejected_ended"]))  # unfinished responses are among them
    for i in range(len(val)):
        for side in ("chosen", "rejected"):
            head = f"<|user|>{val[i]['prompt']}<|assistant|>"
            text = head + val[i][side] + ("<|end|>" if val[i][f"{side}_ended"] else "")
            ids = tok(text, add_special_tokens=False)["input_ids"]
            n_head = len(tok(head, add_special_tokens=False)["input_ids"])
            assert scores[side][i] == pytest.approx(direct_logp(model, ids, n_head), abs=1e-4), (i, side)


@pytest.mark.slow
def test_swap_reference_end_to_end(tmp_path, world, run_study):
    sets = ["objectives.0.betas=[1,0.1]", "train.max_steps=4", "eval.max_new_tokens=20"]
    summary, _ = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    # three references, each scored exactly once (the policy's own scores are the `sft` entry)
    assert summary["reference_scoring"]["computed"] + summary["reference_scoring"]["from_cache"] == 3
    assert len(summary["rows"]) == 1 + 3 * 2 and all(r["status"] == "done" for r in summary["rows"])
    sims = summary["similarity"]["references"]
    assert set(sims) == {"sft", "strong-same", "strong-other"}
    # token_log_ratio by hand: plain forward passes of both models over the prepared training pairs, per token
    train = load_from_disk(str(tmp_path / "rq3_swap_reference" / "prepared" / "pairs"))["train"]
    sft, same = (load_model(resolve(f"world:{n}", world), torch.float32) for n in ("sft", "strong-same"))
    seqs = [
        (p, c) for p, pair in zip(train["prompt_ids"], zip(train["chosen_ids"], train["rejected_ids"])) for c in pair
    ]
    ratios = [(direct_logp(sft, p + c, len(p)) - direct_logp(same, p + c, len(p))) / len(c) for p, c in seqs]
    assert sims["strong-same"]["token_log_ratio"] == pytest.approx(sum(ratios) / len(ratios), abs=1e-5)
    # the frontier's one anchor: KL to the SFT policy. Four small steps leave every policy near the SFT model, while
    # KL to another tokenizer's reference is its distance from the SFT model before any training
    runs = {r["run_id"]: r for r in summary["rows"]}
    assert runs["sft"]["kl_sft"] == 0.0
    assert runs["dpo-sft-b1-s0"]["kl_sft"] == runs["dpo-sft-b1-s0"]["kl"]
    other = runs["dpo-strong-other-b1-s0"]
    assert abs(other["kl_sft"]) < 0.5 < other["kl"], (other["kl_sft"], other["kl"])
    best = {r["method"]: r for r in summary["best"]["rows"]}
    assert set(best) == {"SFT", "dpo <- sft", "dpo <- strong-same", "dpo <- strong-other"}
    assert best["dpo <- strong-other"]["token_logp_corr"] == sims["strong-other"]["token_logp_corr"]
    md = (tmp_path / "rq3_swap_reference" / "results.md").read_text()
    assert "token_logp_corr" in md and "Similarity of each reference" in md

    # a second command in a fresh results directory scores nothing: every reference comes from the cache
    summary, _ = run_study("swap-reference", tmp_path / "again", *sets, experiment="rq3_swap_reference")
    assert summary["reference_scoring"] == {"computed": 0, "from_cache": 3}
