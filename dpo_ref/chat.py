"""Chats to tokens: the one place a prompt and a response become the ids a model is trained on, scored or sampled from.

Every model sees text through its own tokenizer and chat template, so one pair can be scored by models of other
families. The completion is everything the template adds after the generation prompt: the response and its
end-of-turn/EOS tokens (Liu, Liu and Cohan, arXiv 2407.13709, Sec. 3: EOS is part of the scored response).
"""

from __future__ import annotations

from collections.abc import Sequence


def messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string is one user turn; a list of messages is the conversation so far."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def conversation(prompt, response: str) -> list[dict]:
    """The prompt's messages followed by the assistant's response."""
    return messages(prompt) + [{"role": "assistant", "content": response}]


def render_many(
    tokenizer, prompts: Sequence, responses: Sequence[str], unconditional: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of each (prompt, response), rendered in one batched template call.

    With a chat template the prompt is the longest common prefix of the rendered prompt (with generation prompt)
    and the rendered conversation; without one, prompt and response are tokenized apart and EOS appended.
    `unconditional` renders each response after an empty user turn, so a model scores p_LM(y): the response with its
    chat framing but no instruction."""
    if unconditional:
        prompts = [""] * len(responses)
    if not tokenizer.chat_template:
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if len(prompts) else []
        completions = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if len(responses) else []
        return [(list(p), list(c) + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completions)]
    if not len(prompts):
        return []
    heads = tokenizer.apply_chat_template([messages(p) for p in prompts], add_generation_prompt=True, tokenize=False)
    fulls = tokenizer.apply_chat_template([conversation(p, r) for p, r in zip(prompts, responses)], tokenize=False)
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    out = []
    for head, full in zip(head_ids, full_ids):
        n = 0
        while n < min(len(head), len(full)) and head[n] == full[n]:
            n += 1
        out.append((list(full[:n]), list(full[n:])))
    return out


def render(tokenizer, prompt, response: str, unconditional: bool = False) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) of one response (see `render_many`)."""
    return render_many(tokenizer, [prompt], [response], unconditional)[0]


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt ready for generation (chat template with generation prompt)."""
    return render(tokenizer, prompt, "")[0]


def end_of_turn_length(tokenizer, prompt) -> int:
    """How many tokens the template adds after a response (end-of-turn, EOS, trailing newline)."""
    return len(render(tokenizer, prompt, "")[1])
