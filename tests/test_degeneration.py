"""The degeneration rule: fires on constructed broken outputs, not on the SFT model's own samples."""

from dpo_ref.evaluation.metrics import degeneration
from dpo_ref.generation import Generations, Sampling, generate
from dpo_ref.models import load_model, load_tokenizer, resolve


def gens(completions, ended):
    n = len(completions)
    return Generations(["p"] * n, [[1]] * n, completions, ["r"] * n, ended, [len(c) for c in completions])


def test_fires_when_most_responses_never_end():
    reason = degeneration(gens([[5, 6, 7, 8]] * 6 + [[5, 2]] * 4, [False] * 6 + [True] * 4))
    assert reason is not None and "60% of responses broken" in reason and "60% without EOS" in reason


def test_fires_on_loops_even_with_eos():
    looping = [[3] * 9 + [2], [4, 5, 6, 7] * 4 + [2]]
    reason = degeneration(gens(looping * 3 + [[5, 2]] * 2, [True] * 8))
    assert reason is not None and "looping" in reason


def test_quiet_on_healthy_outputs_and_on_the_sft_model(tiny_world):
    assert degeneration(gens([[5, 6, 2]] * 10, [True] * 10)) is None
    world = tiny_world
    ref = resolve("world:sft", world)
    samples = generate(load_model(ref), load_tokenizer(ref), world.eval_prompts(), Sampling(max_new_tokens=32), seed=0)
    assert degeneration(samples) is None
