"""`instructions.pairing`: which two of a prompt's samples make its pair. `select_pair` against hand-made samples
(scores, ended flags, token lengths) for every mode, skip reason and tie rule; the settings' validation; and builds
on a tiny real policy whose statistics are recounted here from the pairs written and the samples drawn."""

from statistics import mean

import pytest
import torch

from dpo_ref.config import InstructionsConfig, load_experiment
from dpo_ref.data import instructions, sampled_pairs
from dpo_ref.data.sampled_pairs import build_instruction_pairs, select_pair
from dpo_ref.errors import UserError
from dpo_ref.generation import generate
from dpo_ref.models import load_tokenizer, resolve, write_config_model

T, F = True, False
N10 = [10] * 4  # lengths that never decide

# --- best_worst ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, ended, expected",
    [
        ([0.5, 1.0, 0.0, 0.5], [T, T, F, T], (1, 2)),
        ([1.0, 0.0, 1.0, 0.0], [T, F, T, F], (0, 1)),  # equal best and equal worst: the lowest indices
        ([0.0, 0.5, 0.0, 1.0], [F, T, F, T], (3, 0)),  # ended flags are not read (the scores count ending)
        ([0.5, 0.5, 0.5, 0.5], [T, F, T, F], "all_tied"),
    ],
)
def test_best_worst_takes_the_best_and_the_worst_sample(scores, ended, expected):
    assert select_pair("best_worst", scores, ended, N10) == expected


# --- both_ended ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, ended, expected",
    [
        ([1.0, 0.5, 0.75, 0.25], [F, T, T, F], (2, 1)),  # the best (0) and the worst (3) ran out: not candidates
        ([0.5, 1.0, 1.0, 0.5], [T, T, T, T], (1, 0)),  # equals: the lowest index
        ([0.2, 0.8, 0.4, 0.6], [F, T, T, T], (1, 2)),
        ([1.0, 0.0, 0.5, 0.5], [T, F, F, F], "fewer_than_2_ended"),
        ([1.0, 0.0, 0.5, 0.5], [F, F, F, F], "fewer_than_2_ended"),
        ([0.5, 0.5, 0.5, 0.5], [F, F, F, T], "fewer_than_2_ended"),  # checked before ties
        ([1.0, 0.5, 0.5, 0.0], [F, T, T, F], "all_tied"),  # the samples differ, the ended ones do not
    ],
)
def test_both_ended_picks_among_the_samples_that_ended(scores, ended, expected):
    assert select_pair("both_ended", scores, ended, N10) == expected


# --- length_matched --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, ended, lengths, expected",
    [
        # (0, 1) and (1, 2) differ in ended status; (0, 2): 2 tokens apart <= 0.25 * 12
        ([1.0, 0.0, 0.5], [T, F, T], [10, 30, 12], (0, 2)),
        # the largest gap wins over closer lengths
        ([1.0, 0.5, 0.0], [T, T, T], [10, 10, 12], (0, 2)),
        # two samples that both ran out of budget make a pair; the wider gap (1, 2) is across ended status
        ([0.5, 0.0, 1.0], [F, F, T], [96, 96, 5], (0, 1)),
        # gap 1 for (0, 1) 4 apart and (2, 3) 1 apart ((0, 3) and (1, 2) too far): the closest lengths
        ([1.0, 0.0, 1.0, 0.0], [T, T, T, T], [20, 16, 10, 11], (2, 3)),
        # gap 1 and 0 apart for (0, 1), (0, 3), (1, 2), (2, 3): the lowest indices, chosen the better of them
        ([0.0, 1.0, 0.0, 1.0], [T, T, T, T], [10, 10, 10, 10], (1, 0)),
        # chosen is the better sample whatever its index
        ([0.0, 0.5, 1.0], [F, T, T], [40, 9, 10], (2, 1)),
    ],
)
def test_length_matched_takes_the_widest_gap_at_matched_length_and_status(scores, ended, lengths, expected):
    assert select_pair("length_matched", scores, ended, lengths, 0.25) == expected


def test_length_matched_counts_score_gaps_equal_that_floats_round_apart():
    """Scores of one prompt are k/3: 1 - 1/3 = 0.6666666666666667 and 2/3 - 0 = 0.6666666666666666 in floats, one gap
    of 2/3, so the closer lengths (2, 3) decide, not the float's last bit that favours (0, 1)."""
    scores = [1.0, 1 / 3, 2 / 3, 0.0]
    assert 1.0 - scores[1] > scores[2] - 0.0  # the rounding this test is about
    # within 0.4: (0, 1) 4 apart, (1, 2) 6, (1, 3) 6, (2, 3) 0; (0, 2) and (0, 3) 10 apart are not
    assert select_pair("length_matched", scores, [T, T, T, T], [10, 14, 20, 20], 0.4) == (2, 3)


@pytest.mark.parametrize(
    "scores, ended, lengths, expected",
    [
        ([0.5, 0.5, 0.5], [T, F, T], [10, 10, 10], "all_tied"),
        ([0.5, 0.5, 0.5], [T, T, T], [10, 90, 50], "all_tied"),  # checked first
        # the pair of equal status (0, 2) scores the same; those that differ in score differ in status
        ([1.0, 0.0, 1.0], [T, F, T], [10, 10, 10], "no_same_ended_pair"),
        ([1.0, 0.5, 0.0, 0.5], [T, F, T, F], [10, 10, 40, 10], "lengths_too_far"),  # (0, 2): 30 apart > 0.25 * 40
        ([1.0, 0.0], [F, F], [10, 20], "lengths_too_far"),
    ],
)
def test_length_matched_skips_by_reason(scores, ended, lengths, expected):
    assert select_pair("length_matched", scores, ended, lengths, 0.25) == expected


@pytest.mark.parametrize(
    "lengths, tolerance, kept",
    [
        ((100, 75), 0.25, True),  # 25 == 0.25 * 100: equality is inside
        ((75, 100), 0.25, True),  # either order
        ((100, 74), 0.25, False),
        ((100, 71), 0.29, True),  # 29 == 0.29 * 100, though 0.29 * 100 is 28.999999999999996 in floats
        ((100, 70), 0.29, False),
        ((10, 10), 0.0, True),
        ((10, 11), 0.0, False),
        ((0, 0), 0.0, True),  # two empty answers
        ((1, 0), 0.5, False),
        ((1, 0), 1.0, True),  # tolerance 1: any lengths
    ],
)
def test_length_tolerance_edges(lengths, tolerance, kept):
    pick = select_pair("length_matched", [1.0, 0.0], [T, T], list(lengths), tolerance)
    assert pick == ((0, 1) if kept else "lengths_too_far")


def test_select_pair_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="needs a tolerance"):
        select_pair("length_matched", [1.0, 0.0], [T, T], [1, 1])
    with pytest.raises(ValueError, match="unknown pairing"):
        select_pair("longest", [1.0, 0.0], [T, T], [1, 1])
    with pytest.raises(ValueError, match="2 scores, 2 ended flags and 3 lengths"):
        select_pair("best_worst", [1.0, 0.0], [T, T], [1, 1, 1])


# --- the settings ----------------------------------------------------------------------------------------------------

YAML = "experiments/rq1_sweep_beta/default.yaml"


def test_the_tolerance_defaults_for_length_matched_only():
    assert (InstructionsConfig().pairing, InstructionsConfig().length_tolerance) == ("best_worst", None)
    assert InstructionsConfig(pairing="both_ended").length_tolerance is None
    assert InstructionsConfig(pairing="length_matched").length_tolerance == 0.25
    assert InstructionsConfig(pairing="length_matched", length_tolerance=0.1).length_tolerance == 0.1
    exp = load_experiment(YAML, ["instructions.pairing=length_matched", "instructions.length_tolerance=0"])
    assert exp.instructions.length_tolerance == 0


@pytest.mark.parametrize(
    "sets, says",
    [
        (["instructions.length_tolerance=0.1"], "length_tolerance: read by pairing: length_matched only"),
        (["instructions.pairing=both_ended", "instructions.length_tolerance=0.3"], "not by pairing: both_ended"),
        (["instructions.pairing=length_matched", "instructions.length_tolerance=1.5"], "less than or equal to 1"),
        (["instructions.pairing=length_matched", "instructions.length_tolerance=-0.1"], "greater than or equal to 0"),
        (["instructions.pairing=shortest"], "'best_worst', 'both_ended' or 'length_matched'"),
    ],
)
def test_settings_a_pairing_does_not_read_are_refused_in_one_line(sets, says):
    with pytest.raises(UserError, match=says) as caught:
        load_experiment(YAML, sets)
    assert "\n" not in str(caught.value)


# --- builds on a real policy -----------------------------------------------------------------------------------------

SETTINGS = {"n_train_prompts": 24, "n_validation_prompts": 8, "n_eval_prompts": 2}
SETTINGS |= {"samples_per_prompt": 6, "max_new_tokens": 16}
TOLERANCE = 0.5
# the skip reasons of each mode, as the module docstring states them
REASONS = {
    "best_worst": {"all_tied"},
    "both_ended": {"fewer_than_2_ended", "all_tied"},
    "length_matched": {"all_tied", "no_same_ended_pair", "lengths_too_far"},
}


@pytest.fixture(scope="module")
def eos_policy(tmp_path_factory):
    """A tiny Llama with random weights whose EOS embedding is scaled up 20 times: its logit swings far either way,
    so samples end at various lengths or run out of budget (about two thirds end), as a real model's do."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("eos-policy")
    texts = instructions.make_prompts(64, seed=5) + ["hello, this is a simple answer", "- one\n- two"]
    write_config_model(path, texts, hidden=64, layers=2, heads=4, mlp=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(path))
    with torch.no_grad():
        model.get_input_embeddings().weight[AutoTokenizer.from_pretrained(path).eos_token_id] *= 20
    model.save_pretrained(path)
    return resolve(str(path))


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def expected_reason(pairing: str, samples: list[tuple]) -> str | None:
    """Why a prompt with these (score, ended, tokens) samples is skipped, None if kept, by brute force."""
    if pairing == "both_ended":
        ended = [s for s, e, _ in samples if e]
        return "fewer_than_2_ended" if len(ended) < 2 else "all_tied" if len(set(ended)) == 1 else None
    pairs = [(a, b) for i, a in enumerate(samples) for b in samples[i + 1 :] if round(abs(a[0] - b[0]), 9)]
    if not pairs:
        return "all_tied"
    if pairing == "best_worst":
        return None
    pairs = [(a, b) for a, b in pairs if a[1] == b[1]]
    if not pairs:
        return "no_same_ended_pair"
    return None if any(abs(a[2] - b[2]) <= TOLERANCE * max(a[2], b[2]) for a, b in pairs) else "lengths_too_far"


def check_rule(pairing: str, row: dict, chosen_tokens: int, rejected_tokens: int, samples: list[tuple]) -> None:
    """The pair is the one its mode's rule picks among the prompt's samples (as scores: a tie may pick either)."""
    if pairing == "best_worst":
        best, worst = max(s for s, _, _ in samples), min(s for s, _, _ in samples)
    elif pairing == "both_ended":
        assert row["chosen_ended"] and row["rejected_ended"]
        best, worst = max(s for s, e, _ in samples if e), min(s for s, e, _ in samples if e)
    else:
        assert row["chosen_ended"] == row["rejected_ended"]
        assert abs(chosen_tokens - rejected_tokens) <= TOLERANCE * max(chosen_tokens, rejected_tokens)
        widest = max(
            abs(a[0] - b[0])
            for i, a in enumerate(samples)
            for b in samples[i + 1 :]
            if a[1] == b[1] and abs(a[2] - b[2]) <= TOLERANCE * max(a[2], b[2])
        )
        assert row["chosen_score"] - row["rejected_score"] == pytest.approx(widest, abs=1e-9)
        best, worst = row["chosen_score"], row["rejected_score"]
    assert (row["chosen_score"], row["rejected_score"]) == pytest.approx((best, worst), abs=1e-9)
    assert row["chosen_score"] > row["rejected_score"]


@pytest.mark.parametrize("pairing", ["best_worst", "both_ended", "length_matched"])
def test_a_build_counts_what_it_kept_and_why_it_skipped(eos_policy, monkeypatch, capsys, pairing):
    drawn = []

    def recording(*args, **kwargs):
        drawn.append(generate(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(sampled_pairs, "generate", recording)
    tok = load_tokenizer(eos_policy)
    tolerance = {"length_tolerance": TOLERANCE} if pairing == "length_matched" else {}
    cfg = InstructionsConfig(**SETTINGS, pairing=pairing, **tolerance)
    pairs, _, stats = build_instruction_pairs(cfg, eos_policy, tok, batch_size=16, precision="fp32")
    (gens,) = drawn  # built here, not read from the cache
    samples: dict[str, list[tuple]] = {}  # prompt -> its (score, ended, tokens) and (response, ended) samples
    texts: dict[str, list[tuple]] = {}
    for prompt, response, ended in zip(gens.prompts, gens.responses, gens.ended):
        samples.setdefault(prompt, []).append(
            (instructions.score(prompt, response, ended), ended, n_tokens(tok, response))
        )
        texts.setdefault(prompt, []).append((response, ended))
    prompts = list(samples)
    assert stats["pairing"] == pairing and stats["length_tolerance"] == (TOLERANCE if tolerance else None)
    (summary,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instruction pairs")]
    assert f"({pairing})" in summary
    assert len(prompts) == 24 + 8
    for split, chunk in (("train", prompts[:24]), ("validation", prompts[24:])):
        rows, s = list(pairs[split]), stats["splits"][split]
        assert f"{split} {len(rows)}/{len(chunk)} prompts kept" in summary
        reasons = [expected_reason(pairing, samples[p]) for p in chunk]
        assert s["skipped"] == {r: reasons.count(r) for r in REASONS[pairing]}
        assert [r["prompt"] for r in rows] == [p for p, why in zip(chunk, reasons) if why is None]
        assert s["kept"] == len(rows) == stats["pairs"][split] > 0
        assert s["prompts"] == len(chunk) == len(rows) + sum(s["skipped"].values())
        if pairing == "best_worst":
            assert stats["prompts_all_tied"][split] == s["skipped"]["all_tied"]
        chosen = [n_tokens(tok, r["chosen"]) for r in rows]
        rejected = [n_tokens(tok, r["rejected"]) for r in rows]
        assert s["chosen_tokens"] == pytest.approx(mean(chosen))
        assert s["rejected_tokens"] == pytest.approx(mean(rejected))
        assert s["chosen_ended"] == pytest.approx(mean(r["chosen_ended"] for r in rows))
        assert s["rejected_ended"] == pytest.approx(mean(r["rejected_ended"] for r in rows))
        for row, c, r in zip(rows, chosen, rejected):
            assert (row["chosen"], row["chosen_ended"]) in texts[row["prompt"]]
            assert (row["rejected"], row["rejected_ended"]) in texts[row["prompt"]]
            assert row["chosen_score"] == instructions.score(row["prompt"], row["chosen"], row["chosen_ended"])
            assert row["rejected_score"] == instructions.score(row["prompt"], row["rejected"], row["rejected_ended"])
            check_rule(pairing, row, c, r, samples[row["prompt"]])
    train = stats["splits"]["train"]
    if pairing == "best_worst":  # the confound on this policy: the chosen answers end, the rejected run out
        assert train["chosen_ended"] - train["rejected_ended"] > 0.5
        assert train["rejected_tokens"] > train["chosen_tokens"]
