"""Registry of preference-data sources. Each source says how to load its pairs, how many training pairs it has, the
programmatic reward it comes with (its built-in judge), how to describe that judge, and what of the experiment its
content depends on; nothing outside this package asks which source an experiment uses.

- `world`: the embedded world's pairs, judged by the gold reward.
- `instructions`: pairs dporef samples from the policy on prompts with checkable instructions, judged by the checks.
- anything else: a local file or directory, or a hub dataset in the local cache (`files.py`); no built-in judge.
- a bare name that is none of these (a typo such as `wrld`) is refused by the config check `check_source`.

Whatever the source, the test prompts a table reports and the validation prompts every choice is made on (best beta,
tune-beta, checkpoints) are disjoint (`load_data`), so no choice is ever made on the prompts it is reported on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import DatasetDict

from ..config import Experiment
from ..errors import UserError, excerpt
from . import instructions
from .tokenize import load_prompts, prompt_key, unique_prompts

Scorer = Callable[[object, str, bool], float]  # (prompt, response, ended) -> reward


@dataclass
class PreferenceData:
    """Pairs (splits `train`, `validation`), the held-out prompts policies are judged on, and what loading did."""

    pairs: DatasetDict
    eval_prompts: list  # the test prompts, never among the validation pairs' prompts (`load_data`)
    notes: list[str]  # counts, held-out validation, build statistics: shown to the user
    prompt_counts: dict | None = None  # test / validation prompts and the pairs set aside for them (`load_data`)
    sampling: dict | None = None  # pairs dporef sampled: how they were built (the pairs' stats.json), for plan.json


class WorldSource:
    name = "world"
    judge_text = "the world's gold reward"

    def load(self, exp: Experiment, world, policy, tokenizer) -> PreferenceData:
        return PreferenceData(world.preference_data(), world.eval_prompts(), [])

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return exp.world.n_train_pairs

    def test_prompts_text(self, exp: Experiment) -> str:
        return f"the world's {exp.world.n_eval_prompts} held-out prompts (drawn apart from every pair's)"

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
        skipped = {split: {k: n for k, n in s["skipped"].items() if n} for split, s in stats["splits"].items()}
        notes = [f"instruction pairs ({stats['pairing']}): {stats['pairs']}; prompts skipped, by reason: {skipped}"]
        return PreferenceData(pairs, prompts, notes, sampling=stats)

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return exp.instructions.train_prompts

    def test_prompts_text(self, exp: Experiment) -> str:
        return f"{exp.instructions.n_eval_prompts} held-out instruction prompts (drawn apart from the pairs')"

    def hash_parts(self, exp: Experiment) -> list:
        return [exp.data.model_dump(), exp.instructions.identity()]


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
        if exp.eval.prompts:  # the test prompts come from elsewhere (`load_data`)
            return PreferenceData(pairs, [], report.lines())
        return PreferenceData(pairs, held_out_prompts(pairs, cfg.test_share, cfg.source), report.lines())

    def n_train_pairs(self, exp: Experiment) -> int | None:
        return None  # known only once read

    def test_prompts_text(self, exp: Experiment) -> str:
        return (
            f"{exp.data.test_share:.0%} of the prompts of split {exp.data.validation_split!r}, held out at random "
            f"(seed {HELD_OUT_SEED}) with their pairs"
        )

    def hash_parts(self, exp: Experiment) -> list:
        return [exp.data.model_dump(), None]  # None: the slot of the instructions settings


SOURCES = {"world": WorldSource(), "instructions": InstructionsSource()}
FILES = FileSource()


def source(exp: Experiment):
    """The source of `exp.data.source`: a named one, or files/hub."""
    return SOURCES.get(exp.data.source, FILES)


def needs_world(exp: Experiment) -> bool:
    """Whether anything in the experiment needs the embedded world built: its data or a `world:` model spec."""
    specs = [exp.policy, exp.judge.model or ""] + [r.model or "" for r in exp.references]  # a mixture: no model
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


def check_source(exp: Experiment) -> tuple[str, str] | None:
    """`data.source` names a registered source, a local file or directory, or a hub dataset id (a config check, see
    config.load_experiment; it needs no file read, so it holds under --dry-run too). A bare word that is none of these
    (`wrld`, `instruction`) is refused here rather than read as a missing file. A source written as a path (a `/`, a
    leading `~` or `.`, or a data file's extension) passes: whether that file exists and reads is
    `validate.check_inputs`' question, with its own message."""
    from .files import FORMATS  # the data files' extensions files.py reads

    name = exp.data.source
    path = Path(name).expanduser()
    if name in SOURCES or path.exists():
        return None
    # written as a path or a hub dataset id (owner/name): files.py says what is wrong with it, if anything
    if "/" in name or "\\" in name or name.startswith(("~", ".")) or path.suffix in FORMATS:
        return None
    return (
        "data.source",
        f"{name!r} is not a source name, an existing local file or directory, or a hub dataset id; allowed: "
        f"{', '.join(SOURCES)}, a local file or directory, or a hub dataset id owner/name",
    )


def check_judge(exp: Experiment) -> tuple[str, str] | None:
    """A config check (config.load_experiment, after `check_source`): a `builtin` judge needs data that come with
    their own reward."""
    if exp.judge.kind == "builtin" and source(exp).scorer is None:
        return (
            "judge",
            f"kind builtin needs data with its own reward ({', '.join(SOURCES)}); "
            f"for {exp.data.source!r} use {{kind: reward-model, model: ...}}",
        )
    return None


HELD_OUT_SEED = 0  # which of a validation split's prompts become test prompts (data.test_share of them)


def check_judged(exp: Experiment, prompts: list) -> None:
    """The `eval.prompts` are prompts the experiment's programmatic judge can score (the world's gold reward needs
    world prompts `<task> <letters>`, the instruction checks text); a reward model reads any chat."""
    judge = judge_scorer(exp)
    if judge is None:
        return
    name, scorer = judge
    for i, prompt in enumerate(prompts):
        try:
            scorer(prompt, "", True)
        except (ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                "eval.prompts",
                f"{exp.eval.prompts}: row {i + 1}: the {name} judge cannot score the prompt {excerpt(prompt, 40)} "
                f"({first}); allowed: prompts of the experiment's data, or judge kind reward-model",
            ) from None


def held_out_prompts(pairs: DatasetDict, share: float, source_name: str) -> list:
    """A fixed random `share` of the validation split's distinct prompts, at least one and never all: the test
    prompts of data that come without held-out prompts of their own (`load_data` then removes their pairs from the
    validation split)."""
    prompts = unique_prompts(pairs["validation"]["prompt"])
    if len(prompts) < 2:
        raise UserError(
            "data.validation_split",
            f"{source_name}: its validation pairs have {len(prompts)} distinct prompt; test prompts are held out of "
            "them, so give pairs with 2 prompts or more, or set eval.prompts",
        )
    n_test = min(len(prompts) - 1, max(1, round(share * len(prompts))))
    chosen = sorted(random.Random(HELD_OUT_SEED).sample(range(len(prompts)), n_test))
    return [prompts[i] for i in chosen]


def test_prompts_text(exp: Experiment) -> str:
    """Where the test prompts come from, in the words of the plan (`--dry-run`)."""
    text = f"{exp.eval.prompts} (eval.prompts)" if exp.eval.prompts else source(exp).test_prompts_text(exp)
    return text + (f", the first {exp.eval.n_prompts}" if exp.eval.n_prompts else "")


def load_data(exp: Experiment, world, policy, tokenizer) -> PreferenceData:
    """The preference data named by the experiment's `data` key, with the test prompts (`eval.prompts` when set,
    else the source's held-out prompts) and no validation pair on a test prompt: such pairs are set aside and
    counted, so validation choices never see a test prompt. Training pairs on test prompts are counted (a leak the
    user's own files can hold), not dropped."""
    loaded = source(exp).load(exp, world, policy, tokenizer)
    held_out = load_prompts(exp.eval.prompts) if exp.eval.prompts else loaded.eval_prompts
    if exp.eval.prompts:
        check_judged(exp, held_out)
    test = held_out[: exp.eval.n_prompts] if exp.eval.n_prompts else held_out
    held = {prompt_key(p) for p in held_out}
    validation = loaded.pairs["validation"]
    keep = [i for i, p in enumerate(validation["prompt"]) if prompt_key(p) not in held]
    if not keep:
        counts = f"train {len(loaded.pairs['train'])} pairs, validation 0 of {len(validation)} left"
        raise UserError(
            "eval.prompts",
            f"{exp.eval.prompts or 'the held-out prompts'}: every validation pair's prompt is a test prompt, and "
            f"those pairs are set aside ({counts}); validation needs its own: allowed are test prompts that leave "
            "some validation prompts out",
        )
    pairs = DatasetDict({**loaded.pairs, "validation": validation.select(keep)})
    counts = {
        "test_prompts": len(test),
        "validation_prompts": len(unique_prompts(pairs["validation"]["prompt"])),
        "validation_pairs_on_test_prompts": len(validation) - len(keep),
        "train_pairs_on_test_prompts": sum(prompt_key(p) in held for p in loaded.pairs["train"]["prompt"]),
    }
    notes = loaded.notes + [
        f"prompts: {counts['test_prompts']} test ({test_prompts_text(exp)}), {counts['validation_prompts']} "
        f"validation; {counts['validation_pairs_on_test_prompts']} validation pairs on test prompts set aside"
    ]
    if counts["train_pairs_on_test_prompts"]:
        notes.append(f"[yellow]{counts['train_pairs_on_test_prompts']} training pairs are on test prompts")
    return replace(loaded, pairs=pairs, eval_prompts=test, notes=notes, prompt_counts=counts)
