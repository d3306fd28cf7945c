"""The reference engine: scores equal a direct forward pass, are cached by content, and are computed once."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from dpo_ref.data.tokenize import tokenize_pairs
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


def tokenized(world, max_length=64):
    tok = load_tokenizer(resolve("world:sft", world))
    return tokenize_pairs(world.preference_data(), tok, max_length)[0], tok


def test_pair_scores_match_a_direct_forward_pass(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs, tok = tokenized(world)
    scores = ReferenceEngine(cache_dir=tmp_path).pair_scores(ref, pairs, tok, max_length=64, batch_size=7)
    model = load_model(ref, torch.float32)
    for i in (0, 5, 11):
        row = pairs["validation"][i]
        prompt = tok.convert_tokens_to_ids(list(row["prompt"] + "="))  # the world's template, by hand
        for side in ("chosen", "rejected"):
            completion = tok.convert_tokens_to_ids(list(row[side])) + (
                [tok.eos_token_id] if row[f"{side}_ended"] else []
            )
            assert scores["validation"][side][i] == pytest.approx(direct_logp(model, prompt, completion), abs=1e-4)


def test_scores_equal_trl_reference_logps(world, tmp_path):
    """The cached columns equal what TRL 1.16's DPOTrainer computes itself (its own tokenization of the chats, its
    `precompute_ref_log_probs` pass) on the same pairs."""
    from trl import DPOConfig, DPOTrainer

    ref = resolve("world:sft", world)
    pairs, tok = tokenized(world)
    val = pairs["validation"]
    ended = [i for i, row in enumerate(val) if row["chosen_ended"] and row["rejected_ended"]]  # TRL closes every turn
    ours = ReferenceEngine(cache_dir=tmp_path).pair_scores(ref, pairs, tok, 64, 8)["validation"]
    chats = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": val[i]["prompt"]}] for i in ended],
            "chosen": [[{"role": "assistant", "content": val[i]["chosen"]}] for i in ended],
            "rejected": [[{"role": "assistant", "content": val[i]["rejected"]}] for i in ended],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=8,
        max_length=64,
        bf16=False,
        use_cpu=True,
        report_to=[],
        activation_checkpointing=False,
        gradient_checkpointing=None,
    )
    trainer = DPOTrainer(
        load_model(ref, torch.float32),
        ref_model=load_model(ref, torch.float32),
        args=args,
        train_dataset=chats,
        processing_class=tok,
    )
    theirs = trainer.train_dataset
    assert len(ended) > 10
    np.testing.assert_allclose(ours["chosen"][ended], theirs["ref_chosen_logps"], atol=1e-4)
    np.testing.assert_allclose(ours["rejected"][ended], theirs["ref_rejected_logps"], atol=1e-4)


def test_cache_is_keyed_by_content_and_counts_passes(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs, tok = tokenized(world)
    engine = ReferenceEngine(cache_dir=tmp_path)
    first = engine.pair_scores(ref, pairs, tok, 64, 16)
    engine.pair_scores(ref, pairs, tok, 64, 16)  # within one command: served from memory, not counted again
    assert (engine.computed, engine.cached) == (1, 0)
    later = ReferenceEngine(cache_dir=tmp_path)  # the next command reads the entry from disk
    again = later.pair_scores(ref, pairs, tok, 64, 16)
    assert (later.computed, later.cached) == (0, 1)
    np.testing.assert_array_equal(first["train"]["chosen"], again["train"]["chosen"])
    later.pair_scores(ref, pairs, tok, 64, 16, unconditional=True)  # another mode is another entry
    shorter, _ = tokenized(world, max_length=16)  # so are other kept tokens
    later.pair_scores(ref, shorter, tok, 16, 16)
    later.pair_scores(ref, pairs, tok, 64, 16, precision="bf16")  # and another precision regime
    assert (later.computed, later.cached) == (3, 1)
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_corrupt_cache_entry_is_rescored(world, tmp_path):
    ref = resolve("world:sft", world)
    pairs, tok = tokenized(world)
    engine = ReferenceEngine(cache_dir=tmp_path)
    good = engine.pair_scores(ref, pairs, tok, 64, 16)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(entry.read_text()[:100])  # a torn write from some other tool
    later = ReferenceEngine(cache_dir=tmp_path)
    rescored = later.pair_scores(ref, pairs, tok, 64, 16)
    assert (later.computed, later.cached) == (1, 0)
    np.testing.assert_allclose(rescored["train"]["chosen"], good["train"]["chosen"])


def test_cpu_batches_hold_a_token_budget_longest_first():
    from dpo_ref.logprobs import batches

    # longest first: 5000 and 2000 tokens exceed 2048 with a second row, so they go alone; 300, 50, 10 fit four
    assert batches([10, 300, 50, 2000, 5000], batch_size=4, max_tokens=2048) == [[4], [3], [1, 2, 0]]
    assert batches([10, 300, 50, 2000, 5000], batch_size=2, max_tokens=None) == [[4, 3], [1, 2], [0]]


def test_scores_of_long_sequences_under_the_budget_equal_one_at_a_time(world):
    """600-token sequences: at most 3 per batch on a CPU whatever batch_size asks; each score is the sequence's own."""
    from dpo_ref.logprobs import CPU_BATCH_TOKENS, sequence_logps

    model = load_model(resolve("world:sft", world), torch.float32)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    seqs = [(rng.integers(3, vocab, 20).tolist(), rng.integers(3, vocab, 560 + 10 * k).tolist()) for k in range(7)]
    assert CPU_BATCH_TOKENS // 650 < 7  # the budget splits them
    together = sequence_logps(model, seqs, batch_size=64)
    alone = [sequence_logps(model, [s], batch_size=1)[0] for s in seqs]
    assert together == pytest.approx(alone, abs=1e-3)
