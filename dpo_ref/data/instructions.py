"""Checkable instructions in the spirit of IFEval: prompts for a small real chat model and a judge for its answers.

The embedded world's gold reward only scores toy string puzzles. For a real model (SmolLM2-135M-Instruct) this
module gives a judge that needs no reward model and no API: a prompt is an everyday task followed by one or two
instruction sentences of fixed wording, and `checks` parses them back from the prompt text alone, so the judge
is stateless and works on any prompt of `make_prompts`, even after it went through files and datasets.
The families, with N, W and P drawn at random (words lowercase, so they never clash with `lowercase`):

    max_words        Answer in at most N words.                                        N in 10..60
    min_words        Answer in at least N words.                                       N in 20..80
    include_keyword  Include the word "W" in your answer.                              whole word, any case
    exclude_keyword  Do not use the word "W".                                          whole word, any case
    lowercase        Write your entire answer in lowercase letters.                    letters, none uppercase
    no_commas        Do not use any commas.
    bullets          Format your answer as exactly N bullet points starting with "- ". N in 2..5
    start_with       Start your answer with the word "W".                              first word, any case
    end_with         End your answer with the phrase "P".                              any case
    quotes           Wrap your entire answer in double quotes.

Words are whitespace-separated tokens; a bullet is a line starting with "- " or "* " (after leading spaces).

    score(prompt, response, ended) = (checks passed + (1 if ended else 0)) / (checks + 1)

Finishing with EOS within the token budget counts as one more check, so rambling past the limit costs reward, as
with `world.gold_reward` (same signature); a prompt without instructions scores 1 if ended, else 0.
`all_passed` is IFEval's strict accuracy, `ended` included.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The everyday tasks a prompt starts with: plain enough for a 135M model, none with quotes or instruction wording.
TOPICS = (
    "Describe a cat.",
    "Describe a dog.",
    "Describe your favorite season.",
    "Describe a busy city street.",
    "Describe a quiet morning.",
    "Describe the ocean.",
    "Describe a forest.",
    "Describe a good breakfast.",
    "Describe a rainy day.",
    "Describe a birthday party.",
    "Describe a mountain.",
    "Describe a garden in spring.",
    "Describe your ideal weekend.",
    "Describe a library.",
    "Describe a train journey.",
    "Describe a sunset.",
    "Give advice on sleeping well.",
    "Give advice on saving money.",
    "Give advice on learning a new language.",
    "Give advice on staying healthy.",
    "Give advice on making friends.",
    "Give advice on studying for an exam.",
    "Give advice on cooking for the first time.",
    "Give advice on keeping a room tidy.",
    "Give advice on starting to run.",
    "Give advice on managing time.",
    "Give advice on caring for a houseplant.",
    "Give advice on preparing for a job interview.",
    "Give advice on traveling on a budget.",
    "Give advice on drinking more water.",
    "Give advice on reading more books.",
    "Give advice on being kind to others.",
    "Explain what rain is.",
    "Explain what a rainbow is.",
    "Explain what the moon is.",
    "Explain what a computer does.",
    "Explain what photosynthesis is.",
    "Explain what a volcano is.",
    "Explain what money is used for.",
    "Explain what friendship means.",
    "Explain what a library is for.",
    "Explain what the internet is.",
    "Explain what a habit is.",
    "Explain what wind is.",
    "Explain what a recipe is.",
    "Explain what exercise does for the body.",
    "Explain what a map is.",
    "Explain what sleep is for.",
    "Write a short note to a friend about the weekend.",
    "Write a short note to a neighbor about a lost cat.",
    "Write a short note to a teacher to say thank you.",
    "Write a short note to a coworker about a meeting.",
    "Write a short note to a friend about a new book.",
    "Write a short note to your family about a trip.",
    "Write a short note to a friend about a movie.",
    "Write a short note inviting a friend to dinner.",
    "Write a short story about a lost key.",
    "Write a short story about a brave mouse.",
    "Write a short story about a robot that learns to paint.",
    "Write a short story about a rainy afternoon.",
    "Write a short poem about the sea.",
    "Write a short poem about autumn.",
    "Write a short poem about a cup of tea.",
    "Write a product description for a water bottle.",
    "Tell me about the sun.",
    "Tell me about elephants.",
    "Tell me about bicycles.",
    "Tell me about bread.",
    "Tell me about the stars.",
    "Tell me about bees.",
    "Tell me about coffee.",
    "Tell me about trees.",
    "List some fun things to do on a sunny day.",
    "List some healthy snacks.",
    "List some ways to relax after work.",
    "List some reasons to learn to cook.",
    "Suggest a name for a new bakery.",
    "Suggest a plan for a day at the beach.",
    "Suggest a gift for a friend who likes music.",
    "Suggest a simple dinner for two.",
)
INCLUDE_WORDS = ("happy", "water", "simple", "friend", "morning", "color", "light", "home", "music", "small")  # W
EXCLUDE_WORDS = ("very", "really", "also", "just", "good", "important", "many", "great", "always", "like")  # W
START_WORDS = ("yes", "sure", "well", "first", "today", "okay", "so", "hello", "honestly", "imagine")  # W
END_PHRASES = ("hope this helps", "that is all", "thank you", "have a nice day", "the end", "any questions")  # P
# The four lists share no word, so a prompt never asks to use and avoid one word (include/start/end vs exclude).

TWO_INSTRUCTIONS = 0.5  # probability that a prompt carries two instructions rather than one
TRIES_PER_PROMPT = 100  # make_prompts gives up after this many draws per prompt asked (duplicates are redrawn)


def _first_word(response: str) -> str:
    """The response's first word, lowercased, punctuation (quotes, markdown stars) stripped."""
    words = response.split()
    return words[0].strip(string.punctuation).lower() if words else ""


def _has_word(response: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", response, re.IGNORECASE) is not None


def _bullets(response: str) -> int:
    return sum(line.lstrip().startswith(("- ", "* ")) for line in response.splitlines())


@dataclass(frozen=True)
class _Family:
    """One kind of instruction: its sentence ({} = the parameter), the parameters to draw from, its test."""

    template: str
    values: Sequence[int | str | None]
    test: Callable[[str, int | str | None], bool]

    @property
    def numeric(self) -> bool:
        return isinstance(self.values[0], int)


# The families by name, as listed in the module docstring (the ranges are the N drawn).
_FAMILIES = {
    "max_words": _Family("Answer in at most {} words.", range(10, 61), lambda r, n: len(r.split()) <= n),
    "min_words": _Family("Answer in at least {} words.", range(20, 81), lambda r, n: len(r.split()) >= n),
    "include_keyword": _Family('Include the word "{}" in your answer.', INCLUDE_WORDS, _has_word),
    "exclude_keyword": _Family('Do not use the word "{}".', EXCLUDE_WORDS, lambda r, w: not _has_word(r, w)),
    "lowercase": _Family(
        "Write your entire answer in lowercase letters.",
        (None,),
        lambda r, _: any(c.isalpha() for c in r) and not any(c.isupper() for c in r),
    ),
    "no_commas": _Family("Do not use any commas.", (None,), lambda r, _: "," not in r),
    "bullets": _Family(
        'Format your answer as exactly {} bullet points starting with "- ".', range(2, 6), lambda r, n: _bullets(r) == n
    ),
    "start_with": _Family('Start your answer with the word "{}".', START_WORDS, lambda r, w: _first_word(r) == w),
    "end_with": _Family(
        'End your answer with the phrase "{}".', END_PHRASES, lambda r, p: r.rstrip().lower().endswith(p.lower())
    ),
    "quotes": _Family(
        "Wrap your entire answer in double quotes.",
        (None,),
        lambda r, _: len(r.strip()) >= 2 and r.strip()[0] == r.strip()[-1] == '"',
    ),
}
# Families never asked together: they contradict (a bullet or a quote cannot also be the first word or the end).
_CONFLICTS = {
    frozenset(pair)
    for pair in [
        ("max_words", "min_words"),
        ("bullets", "quotes"),
        ("bullets", "start_with"),
        ("start_with", "quotes"),
        ("end_with", "quotes"),
    ]
}


def _pattern(family: _Family) -> re.Pattern[str]:
    """The template as a regex, the parameter captured: digits for numbers, anything but a quote for words."""
    group = r"(\d+)" if family.numeric else r'([^"]+)'
    return re.compile(re.escape(family.template).replace(re.escape("{}"), group))


# What `checks` looks for in a prompt, one regex per family.
_PATTERNS = {name: _pattern(family) for name, family in _FAMILIES.items()}


@dataclass(frozen=True)
class Check:
    """One instruction of a prompt: its family and parameter (N, W or P; None for families without one)."""

    family: str
    param: int | str | None = None

    def passed(self, response: str) -> bool:
        """Whether the response follows this instruction."""
        return _FAMILIES[self.family].test(response, self.param)


def _sentence(check: Check) -> str:
    return _FAMILIES[check.family].template.format(check.param)


def _make(n: int, seed: int) -> list[tuple[str, list[Check]]]:
    """n distinct prompts with the instructions put in each, in the order of their sentences."""
    rng = random.Random(seed)
    made: dict[str, list[Check]] = {}
    for _ in range(TRIES_PER_PROMPT * n):
        if len(made) == n:
            break
        families = [rng.choice(list(_FAMILIES))]
        if rng.random() < TWO_INSTRUCTIONS:
            compatible = [f for f in _FAMILIES if f != families[0] and frozenset((f, families[0])) not in _CONFLICTS]
            families.append(rng.choice(compatible))
        instructions = [Check(f, rng.choice(_FAMILIES[f].values)) for f in families]
        prompt = " ".join([rng.choice(TOPICS), *map(_sentence, instructions)])
        made.setdefault(prompt, instructions)
    if len(made) < n:
        raise ValueError(f"asked for {n} distinct prompts, found {len(made)}")
    return list(made.items())


def make_prompts(n: int, seed: int) -> list[str]:
    """n distinct prompts (a topic, then one or two instructions), the same for the same seed."""
    return [prompt for prompt, _ in _make(n, seed)]


def checks(prompt: str) -> list[Check]:
    """The instructions of a prompt, parsed from its text in the order they appear; [] when it has none."""
    found = []
    for name, pattern in _PATTERNS.items():
        for match in pattern.finditer(prompt):
            text = match.group(1) if pattern.groups else None
            param = int(text) if _FAMILIES[name].numeric else text
            found.append((match.start(), Check(name, param)))
    return [check for _, check in sorted(found, key=lambda item: item[0])]


def score(prompt: str, response: str, ended: bool) -> float:
    """(checks passed + (1 if ended else 0)) / (checks + 1): partial credit in [0, 1], finishing counted as a check."""
    results = [check.passed(response) for check in checks(prompt)] + [ended]
    return sum(results) / len(results)


def all_passed(prompt: str, response: str, ended: bool) -> bool:
    """IFEval's strict accuracy: every instruction followed and the response ended with EOS."""
    return ended and all(check.passed(response) for check in checks(prompt))
