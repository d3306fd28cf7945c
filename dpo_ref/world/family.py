"""A graded family of references: models of the world that vary in strength and in similarity to the SFT policy
independently, to ask whether similarity predicts a reference's benefit (the paper's RQ3 finding names no measure).

    world:same@N     sft trained N more SFT steps on the strong references' cleaner demonstrations (at
                     strong_learning_rate, as strong-same is): the same family, stronger and less like sft as N grows
    world:other@N    another family (strong-other's BPE tokenizer, chat template and tiny Mistral) trained from scratch
                     N steps on the cleaner demonstrations: stronger as N grows, never alike in its tokens
    world:distill@N  sft's architecture and tokenizer trained from its initial weights N steps on sft's own samples
                     (temperature 1) instead of demonstrations: about as strong as sft, closer to it as N grows

N is in optimizer steps of `sft_batch_size` examples. Members of one kind learn from one stream of examples, so a
larger N sees what a smaller one saw and more. The streams use prompts of their own (none of the held-out or pair
prompts). Each member is built on first use into <cache>/world-family/<world>/<name>/ (sealed, under a lock, like
the world itself) with family.json saying what it is and prompts.json the prompts it learned from.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..store import atomic_write_json
from .isolation import build_once
from .models import init_model, init_other_model, respond, sft
from .tasks import demonstration, prompts, response_budget
from .tokenizers import other_max_length

KINDS = {
    "same": "sft trained further on the cleaner demonstrations (same tokenizer and architecture)",
    "other": "another family (strong-other's tokenizer and architecture) trained from scratch on the cleaner "
    "demonstrations",
    "distill": "sft's architecture trained from its initial weights on sft's own samples",
}
MEMBER = re.compile(r"(same|other|distill)@([1-9][0-9]{0,4})")  # up to 99999 steps
PATTERNS = [f"{kind}@N" for kind in KINDS]


def is_member(name: str) -> bool:
    return MEMBER.fullmatch(name) is not None


def member_dir(world, name: str) -> Path:
    """Where member `name` of `world`'s family lives (built or not)."""
    return world.root.parent.parent / "world-family" / world.root.name / name


def member(world, name: str) -> Path:
    """The directory of family member `name` (e.g. `same@40`), built first if it is not in the cache."""
    match = MEMBER.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a family member ({', '.join(PATTERNS)}, N optimizer steps)")
    kind, steps = match[1], int(match[2])

    def build(out: Path) -> None:
        BUILDERS[kind](world, steps, out)
        # no timings in it: the directory's content is the model's fingerprint, the same wherever it is built
        atomic_write_json(out / "family.json", {"name": name, "kind": kind, "steps": steps, "what": KINDS[kind]})

    return build_once(member_dir(world, name), f"the world's reference {name}", build)


def _fresh_prompts(world, stream: str, n: int, out: Path) -> list[str]:
    """`n` prompts of the stream's own, none of them a held-out or pair prompt of the world; kept in prompts.json
    beside the model (what it learned from)."""
    data = world.preference_data()
    seen = set(world.eval_prompts()) | {p for split in data.values() for p in split["prompt"]}
    drawn = prompts(random.Random(f"{world.config.seed}-family-{stream}"), n, world.config, seen)
    atomic_write_json(out / "prompts.json", drawn)
    return drawn


def _clean_demonstrations(world, steps: int, out: Path) -> tuple[list[str], list[str]]:
    """The first `steps` batches of the family's stream of cleaner demonstrations (strong_demo_* mix)."""
    cfg = world.config
    prompt_list = _fresh_prompts(world, "clean", steps * cfg.sft_batch_size, out)
    rng = random.Random(f"{cfg.seed}-family-clean-demos")
    mix = (cfg.strong_demo_truncate, cfg.strong_demo_ramble, cfg.strong_demo_substitute)
    return prompt_list, [demonstration(p, rng, *mix) for p in prompt_list]


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _same(world, steps: int, out: Path) -> None:
    cfg = world.config
    prompt_list, demos = _clean_demonstrations(world, steps, out)
    model, tokenizer = world.model("sft"), world.tokenizer("sft")
    _save(sft(model, tokenizer, prompt_list, demos, cfg, None, cfg.strong_learning_rate), tokenizer, out)


def _other(world, steps: int, out: Path) -> None:
    cfg = world.config
    prompt_list, demos = _clean_demonstrations(world, steps, out)
    tokenizer = world.tokenizer("strong-other")
    model = sft(init_other_model(cfg, tokenizer), tokenizer, prompt_list, demos, cfg, other_max_length(cfg))
    _save(model, tokenizer, out)


def _distill(world, steps: int, out: Path) -> None:
    """Sequence-level distillation: sft's samples that ended are the demonstrations."""
    cfg = world.config
    teacher, tokenizer = world.model("sft"), world.tokenizer("sft")
    prompt_list = _fresh_prompts(world, "distill", steps * cfg.sft_batch_size, out)
    samples = respond(teacher, tokenizer, prompt_list, response_budget(cfg), 1.0, cfg.seed)
    kept = [(p, text) for p, (text, ended) in zip(prompt_list, samples, strict=True) if ended]
    kept = kept[: len(kept) // cfg.sft_batch_size * cfg.sft_batch_size] or kept  # whole batches
    student = sft(init_model(cfg, tokenizer), tokenizer, [p for p, _ in kept], [t for _, t in kept], cfg)
    _save(student, tokenizer, out)


BUILDERS = {"same": _same, "other": _other, "distill": _distill}
