"""The degeneration rule: fires on constructed broken outputs, not on the SFT model's own samples."""

import torch

from dpo_ref.evaluation.metrics import degeneration
from dpo_ref.generation import Generations, Sampling, generate
from dpo_ref.models import load_model, load_tokenizer, resolve


def gens(completions, ended):
    n = len(completions)
    return Generations(["p"] * n, [[1]] * n, completions, ["r"] * n, ended, [len(c) for c in completions])


def test_fires_when_most_responses_never_end():
    reason = degeneration(gens([[5, 6, 7, 8]] * 6 + [[5, 2]] * 4, [False] * 6 + [True] * 4))
    assert reason == "60% of responses broken (60% without EOS, 0% looping)"


def test_fires_on_loops_even_with_eos():
    looping = [[3] * 9 + [2], [4, 5, 6, 7] * 4 + [2]]
    reason = degeneration(gens(looping * 3 + [[5, 2]] * 2, [True] * 8))
    assert reason == "75% of responses broken (0% without EOS, 75% looping)"  # 6 of 8 loop, all ended


def test_quiet_on_healthy_outputs_and_on_the_sft_model(tiny_world):
    assert degeneration(gens([[5, 6, 2]] * 10, [True] * 10)) is None
    world = tiny_world
    ref = resolve("world:sft", world)
    samples = generate(
        load_model(ref, torch.float32), load_tokenizer(ref), world.eval_prompts(), Sampling(max_new_tokens=32), seed=0
    )
    assert degeneration(samples) is None


def test_more_than_half_broken_is_the_threshold():
    healthy, unended = [5, 6, 2], [5, 6, 7]
    assert degeneration(gens([unended] * 5 + [healthy] * 5, [False] * 5 + [True] * 5)) is None  # exactly half
    reason = degeneration(gens([unended] * 6 + [healthy] * 4, [False] * 6 + [True] * 4))
    assert reason == "60% of responses broken (60% without EOS, 0% looping)"


def test_loop_rules_by_hand():
    # one token 8 times in a row is a loop (EOS, token 2, closes each response)
    assert (
        degeneration(gens([[3] * 8 + [2]] * 4, [True] * 4)) == "100% of responses broken (0% without EOS, 100% looping)"
    )
    # a 4-gram repeated 4 times is a loop, 3 times is not
    assert degeneration(gens([[4, 5, 6, 7] * 3 + [2]] * 4, [True] * 4)) is None
    assert degeneration(gens([[4, 5, 6, 7] * 4 + [2]] * 4, [True] * 4)) is not None
    # a response both unended and looping counts once: 3 of 4 broken
    both = [[3] * 9, [3] * 9 + [2], [5, 6, 7], [5, 6, 2]]
    assert degeneration(gens(both, [False, True, False, True])) == (
        "75% of responses broken (50% without EOS, 50% looping)"
    )


def test_seven_equal_tokens_in_a_row_are_not_a_loop():
    # docs/metrics.md (status): a loop is one token 8+ times in a row or a 4-gram 4+ times; 7 in a row is neither
    assert degeneration(gens([[3] * 7 + [2]] * 4, [True] * 4)) is None
