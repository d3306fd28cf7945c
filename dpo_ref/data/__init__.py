"""Registry of preference-data sources. Each source says how to load its pairs, how many training pairs it has, the
programmatic reward it comes with (its built-in judge), how to describe that judge, and what of the experiment its
content depends on; nothing outside this package asks which source an experiment uses.

- `world`: the embedded world's pairs, judged by the gold reward.
- `instructions`: pairs dporef samples from the policy on prompts with checkable instructions, judged by the checks.
- anything else: a local file or directory, or a hub dataset in the local cache (`files.py`); no built-in judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict

from ..config import Experiment
from . import instructions
from .tokenize import unique_prompts

Scorer = Callable[[object, str, bool], float]  # (prompt, response, ended) -> reward


@dataclass
class PreferenceData:
    """Pairs (splits `train`, `validation`), the held-out prompts policies are judged on, and what loading did."""

    pairs: DatasetDict
    eval_prompts: list
    notes: list[str]  # counts, held-out validation, build statistics: shown to the user


class WorldSource:
    name = "world"
    judge_text = "the world's gold reward"

    def load(self, exp: Experiment, world, policy, tokenizer) -> PreferenceData:
        return PreferenceData(world.preference_data(), world.eval_prompts(), [])

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return exp.world.n_train_pairs

    @property
    def scorer(self) -> Scorer:
        from ..world import gold_reward

        return gold_reward

    def hash_parts(self, exp: Experiment) -> list:
        return [exp.data.model_dump(), None]  # None: the slot of the instructions settings


class InstructionsSource:
    name = "instructions"
    judge_text = "the instruction checks"
    scorer = staticmethod(instructions.score)

    def load(self, exp: Experiment, world, policy, tokenizer) -> PreferenceData:
        from .sampled_pairs import build_instruction_pairs

        pairs, prompts, stats = build_instruction_pairs(
            exp.instructions, policy, tokenizer, exp.eval.batch_size, exp.train.precision
        )
        notes = [f"instruction pairs: {stats['pairs']}; prompts skipped, all samples tied: {stats['prompts_all_tied']}"]
        return PreferenceData(pairs, prompts, notes)

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return exp.instructions.n_train_prompts

    def hash_parts(self, exp: Experiment) -> list:
        return [exp.data.model_dump(), exp.instructions.model_dump()]


class FileSource:
    name = "files"
    judge_text = None  # no programmatic reward: a reward-model judge is needed
    scorer = None

    def load(self, exp: Experiment, world, policy, tokenizer) -> PreferenceData:
        from .files import load_source

        cfg = exp.data
        pairs, report = load_source(
            cfg.source, cfg.train_split, cfg.validation_split, cfg.max_train_pairs, cfg.max_validation_pairs, "data"
        )
        return PreferenceData(pairs, unique_prompts(pairs["validation"]["prompt"]), report.lines())

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return None  # known only once read

    def hash_parts(self, exp: Experiment) -> list:
        return [exp.data.model_dump(), None]  # None: the slot of the instructions settings


SOURCES = {"world": WorldSource(), "instructions": InstructionsSource()}
FILES = FileSource()


def source(exp: Experiment):
    """The source of `exp.data.source`: a named one, or files/hub."""
    return SOURCES.get(exp.data.source, FILES)


def needs_world(exp: Experiment) -> bool:
    """Whether anything in the experiment needs the embedded world built: its data or a `world:` model spec."""
    specs = [exp.policy, exp.judge.model or ""] + [r.model for r in exp.references]
    return isinstance(source(exp), WorldSource) or any(s.startswith("world:") for s in specs)


def judge_scorer(exp: Experiment) -> tuple[str, Scorer] | None:
    """(name, reward function) of a programmatic judge (`builtin` or `instructions`); None for a reward model."""
    if exp.judge.kind == "builtin":
        return source(exp).name, source(exp).scorer
    if exp.judge.kind == "instructions":
        return "instructions", instructions.score
    return None


def describe_judge(exp: Experiment) -> str:
    """Who decides a win, in the words of the results' caption."""
    if exp.judge.kind == "reward-model":
        return f"the reward model {exp.judge.model} (sigmoid of the reward difference)"
    text = InstructionsSource.judge_text if exp.judge.kind == "instructions" else source(exp).judge_text
    return f"{text} (higher reward wins, ties 0.5)"


def check_judge(exp: Experiment) -> tuple[str, str] | None:
    """A `builtin` judge needs data that come with their own reward (a config check, see config.load_experiment)."""
    if exp.judge.kind == "builtin" and source(exp).scorer is None:
        return (
            "judge",
            f"kind builtin needs data with its own reward ({', '.join(SOURCES)}); "
            f"for {exp.data.source!r} use {{kind: reward-model, model: ...}}",
        )
    return None


def load_data(exp: Experiment, world, policy, tokenizer) -> PreferenceData:
    """The preference data named by the experiment's `data` key."""
    return source(exp).load(exp, world, policy, tokenizer)
