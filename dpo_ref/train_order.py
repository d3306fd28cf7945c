"""The training order: accelerate's random order of the pairs, each optimizer step's pairs sorted by length so that
its micro-batches need less padding."""

from __future__ import annotations

import torch
from datasets import Dataset


def pair_lengths(dataset: Dataset) -> list[int]:
    """Tokens a pair pads its micro-batch to: the prompt and the longer of its two responses (the collator puts both
    responses of a pair in one batch)."""
    return [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    ]


class LengthSortedSteps(torch.utils.data.Sampler):
    """The order of accelerate's SeedableRandomSampler (torch.randperm seeded with data_seed + epoch), each
    optimizer step's `step` pairs then sorted longest first, so that its micro-batches (and processes) hold pairs of
    similar length. Each step sums the gradients of the same pairs as in the random order, so what a run computes
    is the same up to float rounding; only the padding shrinks."""

    def __init__(self, lengths: list[int], step: int, seed: int):
        self.lengths, self.step, self.seed, self.epoch = lengths, step, seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.step):
            yield from sorted(order[start : start + self.step], key=lambda i: -self.lengths[i])
