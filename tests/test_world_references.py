"""The world's stronger references (RQ3): strong-same (sft's family, trained further on cleaner demonstrations)
and strong-other (its own BPE tokenizer, chat template and architecture): loading, generation, tokenizer, strength."""

import pytest
from conftest import TARGETS, gold

from dpo_ref import world as W
from dpo_ref.world import World, WorldConfig, build_world

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world

# Builds in ~15 s on 2 cores. sft gets 60 steps of 32 noisy demonstrations (greedy exact match ~0.1), strong-same
# 60 more steps on the cleaner ones, which lifts it clearly (and deterministically: the build is) above sft;
# strong-other gets a few steps only, enough for everything but strength.
REFS = WorldConfig(
    n_train_pairs=16,
    n_val_pairs=8,
    n_eval_prompts=96,
    sft_steps=150,
    sft_batch_size=32,
    strong_sft_steps=80,
    other_sft_steps=30,
)
RESPONSES = [("rev abc", "cba"), ("dup abcdefgh", "aabbccddeeffgghh"), ("sort hgfe", "efgh"), ("copy ab", "")]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return build_world(REFS, cache_dir=tmp_path_factory.mktemp("cache"))


def _messages(prompt: str, response: str | None = None) -> list[dict]:
    user = [{"role": "user", "content": prompt}]
    return user if response is None else [*user, {"role": "assistant", "content": response}]


@pytest.mark.parametrize("name", ["strong-same", "strong-other"])
def test_reference_loads_from_its_directory_and_generates_until_its_eos(world, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert world.models[name] == world.root / "models" / name
    model = AutoModelForCausalLM.from_pretrained(world.models[name])
    tok = AutoTokenizer.from_pretrained(world.models[name])
    assert tok.chat_template and tok.eos_token_id is not None
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert world.tokenizer(name).get_vocab() == tok.get_vocab()

    # plain `generate` stops at the EOS of the saved generation config, then pads
    enc = tok.apply_chat_template(
        [_messages(p) for p in ("rev abcd", "dup ab")],
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=W.response_budget(REFS), do_sample=False)
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        if tok.eos_token_id in row:
            assert set(row[row.index(tok.eos_token_id) + 1 :]) <= {tok.pad_token_id}

    responses = W.respond(world.model(name), tok, world.eval_prompts()[:32], W.response_budget(REFS))
    assert sum(ended for _, ended in responses) >= 24  # nearly all end with their EOS
    special = set(tok.all_special_tokens) | set(tok.extra_special_tokens)
    assert not any(s in text for text, _ in responses for s in special)
    assert all(set(text) <= set(W.ALPHABET) for text, _ in responses)


def test_strong_same_shares_sfts_tokenizer_and_architecture(world):
    sft, same = world.model("sft"), world.model("strong-same")
    assert type(sft) is type(same) and sft.num_parameters() == same.num_parameters()
    assert sft.config.to_diff_dict() == same.config.to_diff_dict()
    assert world.tokenizer("strong-same").get_vocab() == world.tokenizer().get_vocab()
    assert world.tokenizer("strong-same").chat_template == W.CHAT_TEMPLATE


def test_strong_other_is_another_family(world):
    sft_tok, tok = world.tokenizer("sft"), world.tokenizer("strong-other")
    assert tok.get_vocab() != sft_tok.get_vocab()
    assert len(tok) == REFS.other_vocab_size
    assert (tok.eos_token, tok.pad_token) == ("<|end|>", "<|pad|>") and tok.padding_side == "left"
    assert tok.chat_template == W.OTHER_CHAT_TEMPLATE != sft_tok.chat_template
    assert type(world.model("strong-other")).__name__ == "MistralForCausalLM" != type(world.model("sft")).__name__

    # not character-level: multi-character tokens, so responses take fewer tokens than characters
    dup = "aabbccddeeffgghh"
    assert len(tok(dup, add_special_tokens=False)["input_ids"]) < len(dup)
    targets = [W.solve(p) for p in world.eval_prompts()]
    assert sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets) < sum(map(len, targets))
    assert any(len(t) > 1 and not t.startswith("<|") for t in tok.get_vocab())


@pytest.mark.parametrize("prompt,response", RESPONSES)
def test_strong_other_template_prompt_is_a_prefix_of_prompt_and_answer(world, prompt, response):
    tok = world.tokenizer("strong-other")
    rendered = tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=False)
    assert rendered == f"<|user|>{prompt}<|assistant|>"
    assert tok.apply_chat_template(_messages(prompt, response), tokenize=False) == f"{rendered}{response}<|end|>"
    p = tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, return_dict=True)["input_ids"]
    pc = tok.apply_chat_template(_messages(prompt, response), return_dict=True)["input_ids"]
    assert pc[: len(p)] == p
    assert pc[len(p) :] == tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(pc[len(p) :], skip_special_tokens=True) == response
    assert tok.decode(pc, skip_special_tokens=True) == f"{prompt}{response}"  # the turn markers are special


def test_batched_generation_matches_one_prompt_at_a_time_for_strong_other(world):
    model, tok = world.model("strong-other"), world.tokenizer("strong-other")
    prompts = ["rev abc", "dup abcdefgh", "sort hgfedcba", "copy ab"]  # different lengths: left padding
    batched = W.respond(model, tok, prompts, W.response_budget(REFS))
    alone = [W.respond(model, tok, [p], W.response_budget(REFS))[0] for p in prompts]
    assert batched == alone


def test_meta_records_each_models_statistics(world):
    meta = world.meta()
    assert meta["models"] == {name: f"models/{name}" for name in W.MODEL_NAMES}
    stats = meta["model_stats"]
    assert set(stats) == set(W.MODEL_NAMES)
    for name, s in stats.items():
        assert s["params"] == world.model(name).num_parameters()
    assert stats["sft"]["greedy_exact_match"] == meta["sft_greedy_exact_match"]
    assert stats["sft"]["greedy_mean_reward"] == pytest.approx(meta["sft_greedy_mean_reward"])
    assert 0.3 < stats["sft"]["win_rate_vs_sft"] < 0.7  # two draws of one policy
    assert meta["strong_demo_exact_frac"] > meta["sft_demo_exact_frac"]


def test_strong_same_beats_sft(world):
    stats = world.meta()["model_stats"]
    sft, same = stats["sft"], stats["strong-same"]
    assert same["greedy_exact_match"] > sft["greedy_exact_match"]
    assert same["sample_mean_reward"] > sft["sample_mean_reward"]
    assert same["win_rate_vs_sft"] > 0.5
    assert same["greedy_exact_match"] < 1  # stronger, not perfect


@pytest.mark.parametrize("name", W.MODEL_NAMES)
def test_meta_greedy_statistics_match_plain_generate(world, name):
    """meta.json's greedy exact match and mean gold reward, recomputed with transformers' own greedy `generate`
    (special tokens other than EOS suppressed, as the world's models respond) and the reward of docs/world.md."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world.models[name]).eval()
    tok = AutoTokenizer.from_pretrained(world.models[name])
    tok.padding_side = "left"
    prompts = world.eval_prompts()
    enc = tok.apply_chat_template(
        [_messages(p) for p in prompts], add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    suppress = [i for i, t in tok.added_tokens_decoder.items() if t.special and i != tok.eos_token_id]
    out = model.generate(
        **enc,
        max_new_tokens=W.response_budget(REFS),
        do_sample=False,
        suppress_tokens=suppress,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    exact, rewards = [], []
    for prompt, row in zip(prompts, out[:, enc["input_ids"].shape[1] :].tolist()):
        ended = tok.eos_token_id in row
        text = tok.decode(row[: row.index(tok.eos_token_id)] if ended else row, skip_special_tokens=True)
        task, letters = prompt.split(" ")
        exact.append(ended and text == TARGETS[task](letters))
        rewards.append(gold(prompt, text, ended))
    stats = world.meta()["model_stats"][name]
    assert stats["greedy_exact_match"] == pytest.approx(sum(exact) / len(prompts), abs=1e-12)
    assert stats["greedy_mean_reward"] == pytest.approx(sum(rewards) / len(prompts), abs=1e-12)
