"""IFEval-style instructions: prompt generation, parsing back from text, each family's check, the score."""

import pytest

from dpo_ref.data import instructions as inst
from dpo_ref.data.instructions import Check, all_passed, checks, make_prompts, score

MADE = inst._make(2000, seed=0)  # enough prompts to meet every family, pair and parameter kind


def test_make_prompts_deterministic_and_distinct():
    assert make_prompts(300, seed=1) == make_prompts(300, seed=1)
    assert make_prompts(300, seed=1) != make_prompts(300, seed=2)
    prompts = [prompt for prompt, _ in MADE]
    assert len(prompts) == len(set(prompts)) == 2000
    assert make_prompts(0, seed=0) == []


def test_prompts_are_a_topic_then_one_or_two_compatible_instructions():
    for prompt, made in MADE:
        assert any(prompt.startswith(topic + " ") for topic in inst.TOPICS)
        families = [check.family for check in made]
        assert len(families) == len(set(families)) in (1, 2)
        assert frozenset(families) not in inst._CONFLICTS
    assert {check.family for _, made in MADE for check in made} == set(inst._FAMILIES)
    assert {len(made) for _, made in MADE} == {1, 2}


def test_checks_recover_the_instructions_put_in():
    for prompt, made in MADE:
        assert checks(prompt) == made


def test_topics_have_no_instructions():
    assert len(inst.TOPICS) == len(set(inst.TOPICS)) >= 80
    assert all(checks(topic) == [] for topic in inst.TOPICS)


def test_word_lists_lowercase_and_disjoint():
    """No prompt can ask to use and to avoid one word, or to use an uppercase word in lowercase."""
    used = {w for phrase in inst.INCLUDE_WORDS + inst.START_WORDS + inst.END_PHRASES for w in phrase.split()}
    assert not used & set(inst.EXCLUDE_WORDS)
    assert all(w == w.lower() for w in used | set(inst.EXCLUDE_WORDS))


# (check, response, expected): for every family a response that passes and one that fails.
CASES = [
    (Check("max_words", 5), "Cats are soft and warm.", True),
    (Check("max_words", 5), "Cats are soft, warm and kind.", False),
    (Check("min_words", 4), "Rain falls from clouds.", True),
    (Check("min_words", 4), "Rain falls.", False),
    (Check("include_keyword", "water"), "Drink WATER daily.", True),
    (Check("include_keyword", "water"), "Drink waterfalls daily.", False),
    (Check("exclude_keyword", "very"), "Everything is fine.", True),
    (Check("exclude_keyword", "very"), "It is Very fine.", False),
    (Check("lowercase"), "cats are soft. 100%", True),
    (Check("lowercase"), "cats are Soft.", False),
    (Check("lowercase"), "123 !", False),
    (Check("no_commas"), "Sleep early and rest well.", True),
    (Check("no_commas"), "Sleep early, rest well.", False),
    (Check("bullets", 2), "Tips:\n- sleep early\n  * drink water\nThat is it.", True),
    (Check("bullets", 2), "- sleep early\n- drink water\n- rest", False),
    (Check("bullets", 2), "-sleep early\n-drink water", False),
    (Check("start_with", "sure"), "**Sure!** here it is.", True),
    (Check("start_with", "sure"), "Of course, sure.", False),
    (Check("end_with", "hope this helps"), "Rest well. Hope this helps  \n", True),
    (Check("end_with", "hope this helps"), "Rest well. Hope this helps.", False),
    (Check("quotes"), '  "Cats are soft."\n', True),
    (Check("quotes"), '"Cats" are soft.', False),
    (Check("quotes"), '"', False),
]


@pytest.mark.parametrize(("check", "response", "expected"), CASES, ids=lambda x: repr(x)[:30])
def test_each_family(check, response, expected):
    assert check.passed(response) is expected


def test_every_family_has_a_passing_and_a_failing_case():
    assert {(c.family, e) for c, _, e in CASES} == {(f, e) for f in inst._FAMILIES for e in (True, False)}


def test_sentence_parses_back_for_every_parameter():
    for name, family in inst._FAMILIES.items():
        for value in family.values:
            assert checks("Describe a cat. " + inst._sentence(Check(name, value))) == [Check(name, value)]


PROMPT = "Describe a cat. Answer in at most 10 words. Do not use any commas."


def test_score_is_partial_credit_with_ended_as_a_check():
    assert checks(PROMPT) == [Check("max_words", 10), Check("no_commas")]
    one_of_two = "A cat is a small, soft pet."
    assert score(PROMPT, one_of_two, ended=True) == pytest.approx(2 / 3)
    assert score(PROMPT, one_of_two, ended=False) == pytest.approx(1 / 3)
    assert not all_passed(PROMPT, one_of_two, ended=True)
    both = "A cat is a small soft pet."
    assert score(PROMPT, both, ended=True) == 1.0
    assert score(PROMPT, both, ended=False) == pytest.approx(2 / 3)
    assert all_passed(PROMPT, both, ended=True)
    assert not all_passed(PROMPT, both, ended=False)
    assert score(PROMPT, "A cat is a small, soft pet that likes to sleep all day.", ended=False) == 0.0


def test_prompt_without_instructions_scores_ended_only():
    assert checks("Describe a cat.") == []
    assert score("Describe a cat.", "Anything.", ended=True) == 1.0
    assert score("Describe a cat.", "Anything.", ended=False) == 0.0
    assert all_passed("Describe a cat.", "Anything.", ended=True)
    assert not all_passed("Describe a cat.", "Anything.", ended=False)
