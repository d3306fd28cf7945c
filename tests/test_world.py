"""The embedded world: gold reward, tokenizer and chat template, build, cache, determinism, SFT quality."""

import random
import time

import pytest
import torch
from pydantic import ValidationError

from dpo_ref import world as W
from dpo_ref.store import file_hash
from dpo_ref.world import World, WorldConfig, build_world, gold_reward
from dpo_ref.world import build as world_build

# Builds in ~20 s on 2 cores, yet trained enough (250 steps of 48 demonstrations; the default is 300 of 64) for
# the SFT policy to be imperfect but well above chance (greedy exact match ~0.4). The strong references get a few
# steps only (tests/test_world_references.py checks them on a world of their own).
SMALL = WorldConfig(
    n_train_pairs=48,
    n_val_pairs=16,
    n_eval_prompts=128,
    sft_steps=250,
    sft_batch_size=48,
    strong_sft_steps=10,
    other_sft_steps=10,
)
# Untrained but complete: for properties of the build itself (determinism, RNG isolation).
TINY = WorldConfig(
    n_train_pairs=8,
    n_val_pairs=4,
    n_eval_prompts=4,
    sft_steps=3,
    sft_batch_size=8,
    strong_sft_steps=2,
    other_sft_steps=3,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def world(cache) -> World:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("DPOREF_CACHE", str(cache))
        return build_world(SMALL, cache_dir=cache)


# ---- gold reward


def test_gold_reward_hand_cases():
    assert gold_reward("rev abcde", "edcba", True) == 1.0
    assert gold_reward("rev abcde", "edcb", True) == pytest.approx(0.8)  # stopped one early
    assert gold_reward("rev abcde", "edcbaxx", True) == pytest.approx(0.8)  # rambled two on
    assert gold_reward("rev abcde", "edcba", False) == pytest.approx(0.5)  # no EOS
    assert gold_reward("rev abcde", "edcbaxx", False) == pytest.approx(0.3)
    assert gold_reward("rev abcde", "edxba", True) == pytest.approx(0.8)  # one letter wrong
    assert gold_reward("rev abcde", "", True) == 0.0
    assert gold_reward("sort dbca", "abcd", True) == 1.0
    assert gold_reward("copy abc", "abc", True) == 1.0
    assert gold_reward("dup ab", "aabb", True) == 1.0
    assert gold_reward("dup ab", "aab", True) == pytest.approx(0.75)


def test_gold_reward_longer_is_better_up_to_the_target_then_worse():
    target = "hgfedcba"
    prefixes = [gold_reward("rev abcdefgh", target[:k], True) for k in range(len(target) + 1)]
    rambles = [gold_reward("rev abcdefgh", target + "a" * k, True) for k in range(5)]
    assert prefixes == sorted(prefixes) and len(set(prefixes)) == len(prefixes)
    assert rambles == sorted(rambles, reverse=True) and len(set(rambles)) == len(rambles)


def test_solve_rejects_foreign_prompts():
    with pytest.raises(ValueError, match="not a world prompt"):
        W.solve("translate hello")
    with pytest.raises(ValueError):
        W.solve("rev")


# ---- tokenizer


@pytest.mark.slow
def test_chat_template_prefix_and_completion_tokens(world):
    tok = world.tokenizer()
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>" and tok.padding_side == "left"
    assert len(tok) < 100
    for prompt, response in [("rev abc", "cba"), ("dup abcdefgh", "aabbccddeeffgghh"), ("sort ba", "")]:
        user, assistant = {"role": "user", "content": prompt}, {"role": "assistant", "content": response}
        assert tok.apply_chat_template([user], add_generation_prompt=True, tokenize=False) == f"{prompt}="
        assert tok.apply_chat_template([user, assistant], tokenize=False) == f"{prompt}={response}<eos>"
        p = tok.apply_chat_template([user], add_generation_prompt=True, return_dict=True)["input_ids"]
        pc = tok.apply_chat_template([user, assistant], return_dict=True)["input_ids"]
        assert pc[: len(p)] == p
        assert pc[len(p) :] == [tok.convert_tokens_to_ids(c) for c in response] + [tok.eos_token_id]
        assert tok.decode(pc, skip_special_tokens=True) == f"{prompt}={response}"


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = W.make_tokenizer(50)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "sort hgfe=efgh<eos>"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert len(loaded(text)["input_ids"]) == len("sort hgfe=efgh") + 1  # one token per character, no BOS
    assert loaded.chat_template == tok.chat_template == W.CHAT_TEMPLATE
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert loaded.padding_side == "left"


# ---- the built world


@pytest.mark.slow
def test_world_layout(world):
    from transformers import AutoModelForCausalLM

    assert world.models == {name: world.root / "models" / name for name in W.MODEL_NAMES}
    assert set(W.MODEL_NAMES) == {"sft", "strong-same", "strong-other"}
    model = AutoModelForCausalLM.from_pretrained(world.models["sft"])
    tok = world.tokenizer()
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert 1e5 < model.num_parameters() < 1e6

    data = world.preference_data()
    assert set(data) == {"train", "validation"}
    assert len(data["train"]) == SMALL.n_train_pairs and len(data["validation"]) == SMALL.n_val_pairs
    assert data["train"].column_names == list(W.PAIR_COLUMNS)
    for row in data["train"]:
        assert row["chosen"] != row["rejected"]
        assert "<eos>" not in row["chosen"] + row["rejected"]
        assert row["chosen_reward"] == gold_reward(row["prompt"], row["chosen"], row["chosen_ended"])
        assert row["rejected_reward"] == gold_reward(row["prompt"], row["rejected"], row["rejected_ended"])

    meta = world.meta()
    assert meta["config"] == SMALL.model_dump()
    assert meta["counts"]["train_pairs"] == SMALL.n_train_pairs
    assert meta["counts"]["identical_pairs_dropped"] >= 0
    assert len(world.eval_prompts()) == SMALL.n_eval_prompts


@pytest.mark.slow
def test_second_build_is_cached(world, cache, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(cache))
    start = time.perf_counter()
    again = build_world(SMALL)  # cache_dir defaults to $DPOREF_CACHE
    assert time.perf_counter() - start < 1.0
    assert again.root == world.root and again.config == SMALL
    assert World.load(world.root) == again


@pytest.mark.slow
def test_prompts_are_disjoint(world):
    data = world.preference_data()
    train, val, evals = (set(data["train"]["prompt"]), set(data["validation"]["prompt"]), set(world.eval_prompts()))
    assert len(train) == len(data["train"]) and len(evals) == len(world.eval_prompts())
    assert not train & val and not train & evals and not val & evals


@pytest.mark.slow
def test_sft_policy_is_imperfect_but_well_above_chance(world):
    meta = world.meta()
    assert 0.1 < meta["sft_greedy_exact_match"] < 0.9
    assert meta["sft_greedy_mean_reward"] > 0.5
    # its samples vary in length around the target: some stop early, some ramble on
    data = world.preference_data()["train"]
    offsets = {len(r[k]) - len(W.solve(r["prompt"])) for r in data for k in ("chosen", "rejected")}
    assert min(offsets) < 0 < max(offsets)


@pytest.mark.slow
def test_batched_generation_matches_one_prompt_at_a_time(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.models["sft"])
    tok = world.tokenizer()
    prompts = ["rev abc", "dup abcdefgh", "sort hgfedcba", "copy ab"]  # different lengths: left padding
    batched = W.respond(model, tok, prompts, W.response_budget(SMALL))
    alone = [W.respond(model, tok, [p], W.response_budget(SMALL))[0] for p in prompts]
    assert batched == alone


# ---- properties of the build itself


@pytest.mark.slow
def test_same_seed_same_world_and_caller_rng_untouched(tmp_path):
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a = build_world(TINY, cache_dir=tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    b = build_world(TINY, cache_dir=tmp_path / "b")
    assert a.root != b.root
    for split in ("train", "validation"):
        assert a.preference_data()[split].to_dict() == b.preference_data()[split].to_dict()
    assert a.eval_prompts() == b.eval_prompts()
    for name in W.MODEL_NAMES:
        assert file_hash(a.models[name]) == file_hash(b.models[name]), name
    assert a.meta()["model_stats"] == b.meta()["model_stats"]


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(cfg, root):
        (root / "partial").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(world_build, "_build", crash)
    with pytest.raises(KeyboardInterrupt):
        build_world(TINY, cache_dir=tmp_path)
    left = [p.name for p in (tmp_path / "world").iterdir()]
    assert all(name.startswith(".") and name.endswith(".lock") for name in left), left  # only the build's lock file


def test_config_is_validated():
    with pytest.raises(ValidationError):
        WorldConfig(n_train_pairz=3)
    with pytest.raises(ValidationError):
        WorldConfig(label_temperature=0)
    with pytest.raises(ValidationError):
        WorldConfig(demo_truncate=0.6, demo_ramble=0.6)
    with pytest.raises(ValidationError):
        WorldConfig(min_letters=5, max_letters=4)
    with pytest.raises(ValidationError, match="strong_demo_truncate"):
        WorldConfig(strong_demo_truncate=0.5, strong_demo_substitute=0.6)
    with pytest.raises(ValidationError, match="other_hidden_size"):
        WorldConfig(other_hidden_size=66)
    with pytest.raises(ValidationError, match="other_num_kv_heads"):
        WorldConfig(other_num_heads=4, other_num_kv_heads=3)
    with pytest.raises(ValidationError):
        WorldConfig(other_vocab_size=40)  # fewer than the special tokens and single characters
    with pytest.raises(ValidationError):
        WorldConfig(other_sft_steps=0)
    assert all(f.description for f in WorldConfig.model_fields.values())
