"""Batched sampling with the KV cache: one response per prompt, from any causal LM and its own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .chat import prompt_ids as render_prompt
from .ui import progress


@dataclass(frozen=True)
class Sampling:
    """How to sample: `temperature` 0 (or None) is greedy; top_p 1 and no top-k draw from the model's distribution."""

    max_new_tokens: int
    temperature: float | None = 1.0
    top_p: float = 1.0
    batch_size: int = 128


@dataclass
class Generations:
    """One sample per prompt. `completion_ids` holds exactly the sampled tokens (EOS included when `ended`)."""

    prompts: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    responses: list[str]
    ended: list[bool]
    lengths: list[int]  # response tokens, EOS excluded

    def rows(self) -> list[dict]:
        return [
            {"prompt": p, "response": r, "ended": e, "length": n}
            for p, r, e, n in zip(self.prompts, self.responses, self.ended, self.lengths)
        ]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        return list(zip(self.prompt_ids, self.completion_ids))

    def texts(self) -> list[tuple[str, bool]]:
        """(response, ended) per prompt."""
        return list(zip(self.responses, self.ended))


def stop_ids(model, tokenizer) -> set[int]:
    return stop_set(model.generation_config.eos_token_id, tokenizer)


def stop_set(eos_token_id, tokenizer) -> set[int]:
    """The tokens that end a response: a generation config's EOS id(s) and the tokenizer's EOS."""
    ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id] if eos_token_id is not None else []
    return set(ids) | {tokenizer.eos_token_id}


def _decoding(sampling: Sampling) -> dict:
    if not sampling.temperature:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}


def _special_ids(model, tokenizer, stops: set[int]) -> list[int]:
    """Special tokens other than the stop tokens, within the model's vocabulary."""
    special = tokenizer.added_tokens_decoder.items()
    return sorted(i for i, t in special if t.special and i not in stops and i < model.config.vocab_size)


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `rows` padded on the left, so every row continues from its last real token."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r)
        attention[i, width - len(r) :] = 1
    return input_ids, attention


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence,
    sampling: Sampling,
    seed: int,
    desc: str = "generating",
    by_length: bool = True,
    suppress_special: bool = False,
) -> Generations:
    """Sample one response per prompt in left-padded batches, from a torch RNG seeded with `seed` (the caller's RNG
    state is left as it was).

    `by_length` batches prompts of similar length together (little padding); False keeps the given order, which the
    world's build uses so its samples do not depend on prompt lengths. `suppress_special` forbids special tokens
    other than the stop tokens, so every response is plain text (the world's demonstrations and pairs)."""
    model.eval()
    dev = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    suppress = _special_ids(model, tokenizer, stops) if suppress_special else None
    encoded = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i])) if by_length else list(range(len(prompts)))
    completions: list[list[int]] = [[] for _ in prompts]
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())), progress() as bar:
        torch.manual_seed(seed)
        task = bar.add_task(desc, total=len(prompts))
        for start in range(0, len(order), sampling.batch_size):
            idx = order[start : start + sampling.batch_size]
            input_ids, attention = _left_padded([encoded[i] for i in idx], pad)
            width = input_ids.shape[1]
            out = model.generate(
                input_ids=input_ids.to(dev),
                attention_mask=attention.to(dev),
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=sorted(stops),
                suppress_tokens=suppress,
                **_decoding(sampling),
            )
            for row, i in enumerate(idx):
                tokens = out[row, width:].tolist()
                cut = next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))
                completions[i] = tokens[:cut]
            bar.advance(task, len(idx))
    ended = [bool(c) and c[-1] in stops for c in completions]
    lengths = [len(c) - int(e) for c, e in zip(completions, ended)]
    responses = [tokenizer.decode(c[:n], skip_special_tokens=True) for c, n in zip(completions, lengths)]
    return Generations(list(prompts), encoded, completions, responses, ended, lengths)
