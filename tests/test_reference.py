"""The reference engine: scores equal a direct forward pass, are cached by content, and are computed once."""

import numpy as np
import pytest
import torch

from dpo_ref.chat import render
from dpo_ref.data.tokenize import pairs_fingerprint, tokenize_pairs
from dpo_ref.logprobs import sequence_logps
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.reference import ReferenceEngine


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def direct_logp(model, prompt_ids, completion_ids) -> float:
    """log p(completion | prompt) from a plain forward pass and log-softmax: the definition, written out."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(completion_ids))


def test_pair_scores_match_a_direct_forward_pass(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs = world.preference_data()
    engine = ReferenceEngine(cache_dir=tmp_path)
    scores = engine.pair_scores(ref, pairs, pairs_fingerprint(pairs), max_length=64, batch_size=7)
    model, tok = load_model(ref), load_tokenizer(ref)
    for i in (0, 5, 11):
        row = pairs["validation"][i]
        for side in ("chosen", "rejected"):
            p, c = render(tok, row["prompt"], row[side])
            assert scores["validation"][side][i] == pytest.approx(direct_logp(model, p, c), abs=1e-4)


def test_same_tokenizer_scores_equal_the_policy_path(world, tmp_path):
    """Where tokenizers match, the text path (render per model) equals scoring the policy's own token ids."""
    ref = resolve("world:sft", world)
    pairs = world.preference_data()
    tok = load_tokenizer(ref)
    tokenized, _ = tokenize_pairs(pairs, tok, max_length=64)
    model = load_model(ref)
    val = tokenized["validation"]
    ids_path = sequence_logps(model, list(zip(val["prompt_ids"], val["chosen_ids"])), batch_size=5)
    engine = ReferenceEngine(cache_dir=tmp_path)
    text_path = engine.pair_scores(ref, pairs, pairs_fingerprint(pairs), 64, 8)["validation"]["chosen"]
    np.testing.assert_allclose(text_path[np.asarray(list(val["pair_index"]))], ids_path, atol=1e-5)


def test_cache_is_keyed_by_content_and_counts_passes(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs = world.preference_data()
    fp = pairs_fingerprint(pairs)
    engine = ReferenceEngine(cache_dir=tmp_path)
    first = engine.pair_scores(ref, pairs, fp, 64, 16)
    engine.pair_scores(ref, pairs, fp, 64, 16)  # within one command: served from memory, not counted again
    assert (engine.computed, engine.cached) == (1, 0)
    later = ReferenceEngine(cache_dir=tmp_path)  # the next command reads the entry from disk
    again = later.pair_scores(ref, pairs, fp, 64, 16)
    assert (later.computed, later.cached) == (0, 1)
    np.testing.assert_array_equal(first["train"]["chosen"], again["train"]["chosen"])
    later.pair_scores(ref, pairs, fp, 64, 16, unconditional=True)  # another mode is another entry
    later.pair_scores(ref, pairs, fp, 12, 16)  # so is another max_length
    assert (later.computed, later.cached) == (2, 1)
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_corrupt_cache_entry_is_rescored(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs = world.preference_data()
    fp = pairs_fingerprint(pairs)
    engine = ReferenceEngine(cache_dir=tmp_path)
    good = engine.pair_scores(ref, pairs, fp, 64, 16)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(entry.read_text()[:100])  # a torn write from some other tool
    later = ReferenceEngine(cache_dir=tmp_path)
    rescored = later.pair_scores(ref, pairs, fp, 64, 16)
    assert (later.computed, later.cached) == (1, 0)
    np.testing.assert_allclose(rescored["train"]["chosen"], good["train"]["chosen"])
