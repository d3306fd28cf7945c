"""What the policy trains on and what every reference scores are the same text: the kept prefix of each response,
closed by end-of-turn only when the response ended and was not cut. Expected ids are written out by hand from the
world's character tokenizer (one token per character) and the templates' own text, never taken from dporef's
rendering; scores are checked against plain forward passes."""

import copy

import pytest
import torch
from datasets import Dataset, DatasetDict

from dpo_ref.chat import render, render_pairs
from dpo_ref.data.tokenize import tokenize_pairs
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.reference import ReferenceEngine

PROMPT = "rev abcdefgh"  # 12 characters; the world's template adds "=" before the response


@pytest.fixture(scope="module")
def sft(tiny_world):
    ref = resolve("world:sft", tiny_world)
    return ref, load_tokenizer(ref)


def char_ids(tok, text: str) -> list[int]:
    """The world tokenizer's ids of `text`, one character at a time (independent of any template code)."""
    return tok.convert_tokens_to_ids(list(text))


def direct_logp(model, prompt_ids, completion_ids) -> float:
    """log p(completion | prompt) from a plain forward pass and log-softmax: the definition, written out."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(completion_ids))


def pairs(chosen: list[str], rejected: list[str], chosen_ended=None, rejected_ended=None) -> DatasetDict:
    rows = {"prompt": [PROMPT] * len(chosen), "chosen": chosen, "rejected": rejected}
    if chosen_ended is not None:
        rows |= {"chosen_ended": chosen_ended, "rejected_ended": rejected_ended}
    return DatasetDict({"train": Dataset.from_dict(rows)})


def test_policy_keeps_a_prefix_that_fits_and_no_end_of_turn_when_cut(sft):
    _, tok = sft
    prompt_ids = char_ids(tok, PROMPT + "=")
    max_length = len(prompt_ids) + 4  # room for 4 completion tokens
    data = pairs(["hgf", "hgfedcba"], ["hg", "hgfedcbx"])
    out, report = tokenize_pairs(data, tok, max_length)
    short, long = out["train"][0], out["train"][1]
    assert short["prompt_ids"] == prompt_ids
    assert short["chosen_ids"] == char_ids(tok, "hgf") + [tok.eos_token_id] and short["chosen_closed"]
    assert short["rejected_ids"] == char_ids(tok, "hg") + [tok.eos_token_id] and short["chosen_kept"] == "hgf"
    # cut: the first 4 response characters, no EOS the model never reached; the kept text is exactly those
    assert long["chosen_ids"] == char_ids(tok, "hgfe") and not long["chosen_closed"] and long["chosen_kept"] == "hgfe"
    assert long["rejected_ids"] == char_ids(tok, "hgfe") and long["rejected_kept"] == "hgfe"
    assert report.truncated == {"train": 1}  # pairs with a response cut, by hand: only the second


def test_unfinished_responses_are_trained_without_end_of_turn(sft):
    _, tok = sft
    data = pairs(["hgf", "hgf"], ["hgx", "hgx"], chosen_ended=[True, False], rejected_ended=[False, True])
    out, report = tokenize_pairs(data, tok, 1024)
    rows = out["train"]
    assert rows[0]["chosen_ids"] == char_ids(tok, "hgf") + [tok.eos_token_id]
    assert rows[0]["rejected_ids"] == char_ids(tok, "hgx") and not rows[0]["rejected_closed"]
    assert rows[1]["chosen_ids"] == char_ids(tok, "hgf") and rows[1]["rejected_ids"][-1] == tok.eos_token_id
    assert report.unfinished == {"train": 2}
    # the KL path renders samples the same way
    assert render(tok, PROMPT, "hgx", ended=False)[1] == char_ids(tok, "hgx")


def test_both_completions_follow_the_prompt_split_both_renders_share(sft):
    """TRL 1.16's rule: the prompt ends where the rendered prompt stops being a prefix of either render."""
    _, tok = sft
    tok = copy.deepcopy(tok)
    # a template whose generation prompt ("=>") is not what the conversation renders ("=" then the response)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% else %}={{ m['content'] }}"
        "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}=>{% endif %}"
    )
    ((prompt, chosen, rejected),) = render_pairs(tok, [PROMPT], [">ba"], ["xyz"])
    eos = [tok.eos_token_id]
    assert prompt + chosen == char_ids(tok, PROMPT + "=>ba") + eos  # each render is whole
    assert prompt + rejected == char_ids(tok, PROMPT + "=xyz") + eos
    assert prompt == char_ids(tok, PROMPT + "=")


def test_without_a_template_p_lm_starts_at_bos(sft):
    ref, tok = sft
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    prompt, completion = render(tok, PROMPT, "hgf", unconditional=True)
    assert prompt == [tok.bos_token_id] and completion == char_ids(tok, "hgf") + [tok.eos_token_id]
    assert render(tok, PROMPT, "hgf")[0] == char_ids(tok, PROMPT)  # conditional: the prompt itself


def test_likelihood_reference_scores_the_tokens_the_policy_keeps(sft, tmp_path):
    ref, tok = sft
    max_length = len(PROMPT) + 1 + 3
    out, _ = tokenize_pairs(pairs(["hgfedcba"], ["hgfxx"]), tok, max_length)
    scores = ReferenceEngine(cache_dir=tmp_path).pair_scores(ref, out, tok, max_length, 4, unconditional=True)
    model = load_model(ref, torch.float32)
    head = char_ids(tok, "=")  # the template's framing of an empty user turn
    # p_LM(y) of exactly the 3 characters the policy keeps (before: the unconditional render kept 3 + 12 + 1)
    assert scores["train"]["chosen"][0] == pytest.approx(direct_logp(model, head, char_ids(tok, "hgf")), abs=1e-5)
    assert scores["train"]["rejected"][0] == pytest.approx(direct_logp(model, head, char_ids(tok, "hgf")), abs=1e-5)


def test_reference_of_another_tokenizer_scores_the_kept_text(sft, tiny_world, tmp_path):
    ref, tok = sft
    other = resolve("world:strong-other", tiny_world)
    other_tok = load_tokenizer(other)
    max_length = len(PROMPT) + 1 + 4
    out, _ = tokenize_pairs(pairs(["hgfedcba"], ["hgf"]), tok, max_length)
    engine = ReferenceEngine(cache_dir=tmp_path)
    scores = engine.pair_scores(other, out, tok, max_length, 4)["train"]
    model = load_model(other, torch.float32)

    def expected(text: str) -> float:  # the other template's text, written out, tokenized by the other tokenizer
        head = other_tok(f"<|user|>{PROMPT}<|assistant|>", add_special_tokens=False)["input_ids"]
        full = other_tok(f"<|user|>{PROMPT}<|assistant|>{text}", add_special_tokens=False)["input_ids"]
        return direct_logp(model, head, full[len(head) :])

    assert scores["chosen"][0] == pytest.approx(expected("hgfe"), abs=1e-5)  # cut: no <|end|>
    assert scores["rejected"][0] == pytest.approx(expected("hgf<|end|>"), abs=1e-5)  # whole: closed
    (report,) = [r for name, r in engine.reports.items() if name.startswith("world:strong-other")]
    lengths = [len(other_tok(f"<|user|>{PROMPT}<|assistant|>{t}")["input_ids"]) for t in ("hgfe", "hgf<|end|>")]
    assert report.beyond_max_length == {"train": sum(n > max_length for n in lengths)}
