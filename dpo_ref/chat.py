"""Chats to tokens: the one place a prompt and a response become the ids a model is trained on, scored or sampled from.

Every model sees text through its own tokenizer and chat template, so one pair can be scored by models of other
families. The completion is everything the template adds after the generation prompt: the response and its
end-of-turn/EOS tokens (Liu, Liu and Cohan, arXiv 2407.13709, Sec. 3: EOS is part of the scored response).

One rule for responses that never ended (sampled until the token budget ran out): they are rendered without the
end-of-turn tokens, everywhere (training, reference scoring, ranking accuracy, KL), since the model never produced
them; `ended=None` means every response ended (human or API-written data).
"""

from __future__ import annotations

from collections.abc import Sequence

Ids = list[int]


def messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string is one user turn; a list of messages is the conversation so far."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def conversation(prompt, response: str) -> list[dict]:
    """The prompt's messages followed by the assistant's response."""
    return messages(prompt) + [{"role": "assistant", "content": response}]


def same_rendering(tokenizer, other) -> bool:
    """Whether two tokenizers turn every chat into the same ids (same vocabulary, template and special tokens), so
    that one's token ids can be scored by the other's model as they are."""
    specials = lambda t: (t.chat_template, t.bos_token_id, t.eos_token_id)  # noqa: E731
    return specials(tokenizer) == specials(other) and tokenizer.get_vocab() == other.get_vocab()


def unconditional_head(tokenizer) -> Ids:
    """What precedes a response scored as p_LM(y), with no instruction: the template's framing of an empty user turn,
    or without a template BOS (EOS where there is none), so that the first response token is scored too."""
    if tokenizer.chat_template:
        return _heads_and_fulls(tokenizer, [""], [""])[0][0]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [start]


def _heads_and_fulls(tokenizer, prompts: Sequence, responses: Sequence[str]) -> tuple[list[Ids], list[Ids]]:
    """Per (prompt, response): the ids of the prompt ready for generation and of the whole exchange. With a chat
    template both come from one batched template call; without one, prompt and response are tokenized apart and EOS
    appended (so the prompt is always a prefix)."""
    if not len(prompts):
        return [], []
    if not tokenizer.chat_template:
        heads = [list(p) for p in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
        bodies = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return heads, [h + list(b) + [tokenizer.eos_token_id] for h, b in zip(heads, bodies)]
    head_text = tokenizer.apply_chat_template(
        [messages(p) for p in prompts], add_generation_prompt=True, tokenize=False
    )
    full_text = tokenizer.apply_chat_template([conversation(p, r) for p, r in zip(prompts, responses)], tokenize=False)
    heads = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    fulls = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    return [list(h) for h in heads], [list(f) for f in fulls]


def _common_prefix(a: Ids, b: Ids) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def end_of_turn_length(tokenizer) -> int:
    """How many tokens the template adds after a response (end-of-turn, EOS, trailing newline)."""
    heads, fulls = _heads_and_fulls(tokenizer, ["x"], [""])
    return len(fulls[0]) - _common_prefix(heads[0], fulls[0])


def _close(completion: Ids, ended: bool, end_of_turn: int) -> Ids:
    return completion if ended else completion[: max(len(completion) - end_of_turn, 0)]


def render_many(
    tokenizer, prompts: Sequence, responses: Sequence[str], unconditional: bool = False, ended: Sequence[bool] = None
) -> list[tuple[Ids, Ids]]:
    """(prompt_ids, completion_ids) of each (prompt, response). The prompt is the longest common prefix of the rendered
    prompt (with generation prompt) and the rendered exchange; a response whose `ended` is False loses its end-of-turn
    tokens. `unconditional` puts each response after `unconditional_head` instead: the model scores p_LM(y)."""
    if unconditional:
        head = unconditional_head(tokenizer)
        heads, fulls = _heads_and_fulls(tokenizer, [""] * len(responses), responses)
        if not tokenizer.chat_template:  # no framing to share: the response follows BOS directly
            fulls = [head + f[len(h) :] for h, f in zip(heads, fulls)]
            heads = [head] * len(fulls)
    else:
        heads, fulls = _heads_and_fulls(tokenizer, prompts, responses)
    eot = end_of_turn_length(tokenizer) if ended is not None else 0
    out = []
    for i, (head, full) in enumerate(zip(heads, fulls)):
        n = _common_prefix(head, full)
        out.append((full[:n], _close(full[n:], True if ended is None else bool(ended[i]), eot)))
    return out


def render_pairs(
    tokenizer, prompts: Sequence, chosen: Sequence[str], rejected: Sequence[str], chosen_ended=None, rejected_ended=None
) -> list[tuple[Ids, Ids, Ids]]:
    """(prompt_ids, chosen_ids, rejected_ids) per pair, split as TRL 1.16's DPOTrainer splits a pair: each response is
    rendered on its own and the prompt ends where the rendered prompt stops being a prefix of either render, so both
    completions follow the same prompt ids. Unfinished responses lose their end-of-turn tokens (module docstring)."""
    if not len(prompts):
        return []
    heads, chosen_full = _heads_and_fulls(tokenizer, prompts, chosen)
    _, rejected_full = _heads_and_fulls(tokenizer, prompts, rejected)
    eot = end_of_turn_length(tokenizer)
    out = []
    for i, (head, c, r) in enumerate(zip(heads, chosen_full, rejected_full)):
        n = min(_common_prefix(head, c), _common_prefix(head, r))
        c_end = True if chosen_ended is None else bool(chosen_ended[i])
        r_end = True if rejected_ended is None else bool(rejected_ended[i])
        out.append((head[:n], _close(c[n:], c_end, eot), _close(r[n:], r_end, eot)))
    return out


def render(tokenizer, prompt, response: str, unconditional: bool = False, ended: bool = True) -> tuple[Ids, Ids]:
    """(prompt_ids, completion_ids) of one response (see `render_many`)."""
    return render_many(tokenizer, [prompt], [response], unconditional, [ended])[0]


def prompt_ids(tokenizer, prompt) -> Ids:
    """Token ids of a prompt ready for generation (chat template with generation prompt)."""
    return _heads_and_fulls(tokenizer, [prompt], [""])[0][0]
