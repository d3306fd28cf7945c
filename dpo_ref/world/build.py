"""The embedded controlled world: a stand-in for "7B SFT model + UltraFeedback + AlpacaEval" on 2 CPU cores.

Tasks are short string puzzles (`rev abcde` -> `edcba`) with a gold reward r*(x, y) that scores any response.
A tiny Llama is SFT-trained on noisy demonstrations (correct, stopped early, rambling, one wrong letter), so that,
like a real SFT model, it is imperfect and its samples vary in length and quality. Preference pairs are two
samples of that policy per prompt, labelled by r* with Bradley-Terry noise (as GPT-4 labels UltraFeedback), and
held-out prompts play AlpacaEval. Everything is deterministic from `WorldConfig.seed` and built once:

    <cache>/world/<hash>/meta.json                config, counts, per-model statistics, timings
                         models/sft/              the SFT policy and default reference
                         models/strong-same/      a stronger reference of the same family
                         models/strong-other/     a stronger reference of another family
                         preference/              datasets.DatasetDict: train, validation
                         eval_prompts.json        held-out prompts

Each model directory holds model + tokenizer (chat template included) for AutoModelForCausalLM / AutoTokenizer.

The two stronger references (RQ3, `swap-reference`) learn from one stream of cleaner demonstrations (by default
93% correct, against sft's 40%: 3% stopped early, 1% rambling, 3% one letter wrong) on prompts of their own:
- strong-same, the same family: sft's tokenizer, chat template, architecture and size. It is the sft checkpoint
  trained further with sft's recipe: `strong_sft_steps` more SFT steps (at the lower `strong_learning_rate`, as
  one fine-tunes a trained model) on the cleaner demonstrations. Stronger through more steps and cleaner data.
- strong-other, another family: its own tokenizer, a BPE trained on the world's text whose merges (`aa`, `ff`,
  `copy`, `sort`, ...) make tokens that do not line up with characters, with its own special tokens and chat
  template (`<|user|>rev abc<|assistant|>cba<|end|>`, EOS `<|end|>`); another architecture, a tiny Mistral
  (grouped-query attention, 2 key/value heads for 4 query heads). Trained from scratch, `other_sft_steps` steps on
  the cleaner demonstrations (sft's batch size and learning rate). Stronger through the cleaner data; it needs
  twice sft's steps to get there, as multi-character tokens make the tasks harder to learn (a vocabulary of a few
  hundred, or GPT-2's learned positions, need over 1000 steps to reach sft's level: too slow for the default).
meta.json records per model (`model_stats`) its size, greedy exact match and mean gold reward of greedy and T=1
responses on the held-out prompts, and the win rate of its T=1 samples against T=1 samples of sft (gold reward,
ties 0.5): how much stronger each reference is, measured rather than assumed.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import WorldConfig
from ..evaluation.metrics import preference
from ..store import atomic_write_json, cache_root, content_hash, read_json
from . import family
from .isolation import build_once
from .models import init_model, init_other_model, respond, sft
from .pairs import pair_stats, sample_pairs
from .tasks import TASKS, demonstration, gold_reward, max_length, prompts, response_budget, solve
from .tokenizers import make_other_tokenizer, make_tokenizer, other_max_length

if TYPE_CHECKING:  # heavy imports stay inside the functions, so importing this module is cheap
    import datasets
    from transformers import PreTrainedTokenizerFast

WORLD_VERSION = "2"  # part of the cache key: bump it when a build would change for the same config
MODEL_NAMES = ("sft", "strong-same", "strong-other")  # the world's models: the SFT policy and two stronger references


@dataclass(frozen=True)
class World:
    """A built world: its paths and cheap loaders (nothing is read until asked for).

    `models` maps each name of MODEL_NAMES to its directory: "sft" (the SFT policy and default reference),
    "strong-same" (sft trained further on cleaner demonstrations: same tokenizer, architecture and size) and
    "strong-other" (another family: its own BPE tokenizer and chat template, a Mistral architecture, trained from
    scratch on the cleaner demonstrations). See the module docstring, and `meta()["model_stats"]` for how strong
    each one is.
    """

    root: Path
    config: WorldConfig
    models: dict[str, Path]  # name -> model dir, for every name in MODEL_NAMES

    @classmethod
    def load(cls, root: Path) -> World:
        """Open a built world directory."""
        meta = read_json(Path(root) / "meta.json")
        models = {name: Path(root) / rel for name, rel in meta["models"].items()}
        return cls(root=Path(root), config=WorldConfig(**meta["config"]), models=models)

    def model_path(self, name: str) -> Path:
        """The directory of model `name`: one of MODEL_NAMES, or a member of the graded family of references
        (`family`: same@N, other@N, distill@N), built into the cache on first use. ValueError for any other name."""
        if name in self.models:
            return self.models[name]
        if not family.is_member(name):
            allowed = [*self.models, *family.PATTERNS]
            raise ValueError(f"unknown world model 'world:{name}'; allowed: {', '.join(f'world:{n}' for n in allowed)}")
        return family.member(self, name)

    def tokenizer(self, name: str = "sft") -> PreTrainedTokenizerFast:
        """The tokenizer of model `name`: for sft and strong-same the character-level one with the world's chat
        template, for strong-other its own BPE tokenizer and template."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.models[name])

    def model(self, name: str = "sft"):
        """Model `name` (an AutoModelForCausalLM in eval mode, on the CPU)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.models[name]).eval()

    def preference_data(self) -> datasets.DatasetDict:
        """Splits train/validation; columns prompt, chosen, rejected (responses without EOS), chosen_reward,
        rejected_reward, chosen_ended, rejected_ended. Held in memory: a `map` over data read from the sealed world
        directory would otherwise write its cache files into it (and the world would read as damaged)."""
        import datasets

        return datasets.load_from_disk(str(self.root / "preference"), keep_in_memory=True)

    def eval_prompts(self) -> list[str]:
        return json.loads((self.root / "eval_prompts.json").read_text())

    def meta(self) -> dict:
        return read_json(self.root / "meta.json")


def build_world(cfg: WorldConfig, cache_dir: Path | None = None) -> World:
    """Build the world once into <cache_dir>/world/<hash of config + WORLD_VERSION>/ and return it.

    A second call with the same config finds the directory and returns at once (no training, no model load).
    The build writes into a temporary sibling renamed at the end: an interrupted build leaves nothing behind. It
    holds the world's lock: a second process waits for the first build, then loads it.
    """
    key = content_hash({"config": cfg.model_dump(), "world_version": WORLD_VERSION})
    root = Path(cache_dir or cache_root()) / "world" / key
    return World.load(build_once(root, "the embedded world", lambda tmp: _build(cfg, tmp)))


def _model_stats(models: dict, eval_prompts: list[str], cfg: WorldConfig, rng: random.Random) -> dict[str, dict]:
    """Per model (name -> (model, tokenizer)), on the held-out prompts: size, greedy exact match and reward, and
    T=1 samples' mean reward, exact match and win rate against T=1 samples of `sft` (a draw of their own, so
    `sft`'s own win rate is that of two independent draws of one policy, about 0.5)."""
    sft_model, sft_tokenizer = models["sft"]
    seed, baseline_seed = rng.getrandbits(63), rng.getrandbits(63)
    budget = response_budget(cfg)
    baseline = respond(sft_model, sft_tokenizer, eval_prompts, budget, 1.0, baseline_seed)
    baseline_rewards = [gold_reward(p, *x) for p, x in zip(eval_prompts, baseline, strict=True)]
    stats = {}
    for name, (model, tokenizer) in models.items():
        greedy = respond(model, tokenizer, eval_prompts, budget)
        samples = respond(model, tokenizer, eval_prompts, budget, 1.0, seed)
        rewards = [gold_reward(p, *x) for p, x in zip(eval_prompts, samples, strict=True)]
        n = len(eval_prompts)
        stats[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__,
            "vocab_size": len(tokenizer),
            "greedy_exact_match": sum(e and t == solve(p) for p, (t, e) in zip(eval_prompts, greedy, strict=True)) / n,
            "greedy_mean_reward": sum(gold_reward(p, *g) for p, g in zip(eval_prompts, greedy, strict=True)) / n,
            "sample_mean_reward": sum(rewards) / n,
            "sample_exact_match": sum(e and t == solve(p) for p, (t, e) in zip(eval_prompts, samples, strict=True)) / n,
            "sample_ended_frac": sum(e for _, e in samples) / n,
            "win_rate_vs_sft": float(np.mean(preference(rewards, baseline_rewards))),
        }
    return stats


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@dataclass
class _Build:
    """What the stages of one build share: the config, the output directory, every prompt drawn so far (eval, SFT,
    validation, train and strong prompts are disjoint), timings and the statistics meta.json records."""

    cfg: WorldConfig
    root: Path
    seen: set[str]
    seconds: dict[str, float]
    meta: dict


def _build_sft(b: _Build):
    """The SFT policy on noisy demonstrations, and its greedy answers on the held-out prompts."""
    cfg, t0 = b.cfg, time.perf_counter()
    tokenizer = make_tokenizer(max_length(cfg))
    eval_prompts = prompts(random.Random(f"{cfg.seed}-eval"), cfg.n_eval_prompts, cfg, b.seen)
    demo_rng = random.Random(f"{cfg.seed}-sft")
    sft_prompts = prompts(demo_rng, cfg.sft_steps * cfg.sft_batch_size, cfg, b.seen)
    mix = (cfg.demo_truncate, cfg.demo_ramble, cfg.demo_substitute)
    demos = [demonstration(p, demo_rng, *mix) for p in sft_prompts]
    model = sft(init_model(cfg, tokenizer), tokenizer, sft_prompts, demos, cfg)
    _save(model, tokenizer, b.root / "models" / "sft")
    b.seconds["sft"] = time.perf_counter() - t0
    greedy = respond(model, tokenizer, eval_prompts, response_budget(cfg))
    exact_by_task: dict[str, list[bool]] = {task: [] for task in TASKS}
    for prompt, (text, ended) in zip(eval_prompts, greedy, strict=True):
        exact_by_task[prompt.partition(" ")[0]].append(ended and text == solve(prompt))
    b.meta.update(
        vocab_size=len(tokenizer),
        sft_params=sum(p.numel() for p in model.parameters()),
        sft_demo_exact_frac=sum(d == solve(p) for p, d in zip(sft_prompts, demos, strict=True)) / len(demos),
        sft_greedy_exact_match=sum(map(sum, exact_by_task.values())) / len(eval_prompts),
        sft_greedy_exact_match_by_task={t: sum(v) / len(v) for t, v in exact_by_task.items() if v},
        sft_greedy_mean_reward=sum(gold_reward(p, *g) for p, g in zip(eval_prompts, greedy, strict=True))
        / len(eval_prompts),
    )
    b.meta["counts"] = {"eval_prompts": len(eval_prompts), "sft_demonstrations": len(demos)}
    return model, tokenizer, eval_prompts


def _build_pairs(b: _Build, model, tokenizer, eval_prompts: list[str]) -> None:
    """Validation and train pairs sampled from the SFT policy, and the held-out prompts, on disk."""
    import datasets

    cfg, t0 = b.cfg, time.perf_counter()
    splits, split_stats = {}, {}
    for split, n in (("validation", cfg.n_val_pairs), ("train", cfg.n_train_pairs)):
        rows, stats = sample_pairs(model, tokenizer, cfg, random.Random(f"{cfg.seed}-{split}"), b.seen, n)
        splits[split] = datasets.Dataset.from_dict(rows)
        split_stats[split] = {**pair_stats(rows), **stats}
    datasets.DatasetDict(splits).save_to_disk(str(b.root / "preference"))
    (b.root / "eval_prompts.json").write_text(json.dumps(eval_prompts, indent=0) + "\n")
    b.seconds["pairs"] = time.perf_counter() - t0
    n_samples = 2 * sum(s["prompts_used"] for s in split_stats.values())
    total = {k: sum(s[k] for s in split_stats.values()) for k in ("sample_reward_sum", "sample_exact", "ended")}
    train = split_stats["train"]
    b.meta["counts"].update(
        train_pairs=len(splits["train"]),
        validation_pairs=len(splits["validation"]),
        identical_pairs_dropped=sum(s["identical_dropped"] for s in split_stats.values()),
    )
    b.meta.update(
        sft_sample_mean_reward=total["sample_reward_sum"] / n_samples,
        sft_sample_exact_match=total["sample_exact"] / n_samples,
        sft_sample_ended_frac=total["ended"] / n_samples,
        mean_chosen_len=train["mean_chosen_len"],
        mean_rejected_len=train["mean_rejected_len"],
        frac_chosen_longer=train["frac_chosen_longer"],
        splits=split_stats,
    )


def _build_strong(b: _Build, tokenizer) -> dict:
    """The strong references (RQ3), built after the pairs so that everything above is as it was before they existed.
    One stream of cleaner demonstrations on prompts of their own: strong-same (a copy of sft trained further) takes
    its first strong_sft_steps batches, strong-other (from scratch) its first other_sft_steps."""
    from transformers import AutoModelForCausalLM

    cfg, t0 = b.cfg, time.perf_counter()
    strong_rng = random.Random(f"{cfg.seed}-strong")
    n_strong = max(cfg.strong_sft_steps, cfg.other_sft_steps) * cfg.sft_batch_size
    strong_prompts = prompts(strong_rng, n_strong, cfg, b.seen)
    strong_mix = (cfg.strong_demo_truncate, cfg.strong_demo_ramble, cfg.strong_demo_substitute)
    strong_demos = [demonstration(p, strong_rng, *strong_mix) for p in strong_prompts]
    n_same = cfg.strong_sft_steps * cfg.sft_batch_size
    # from the saved checkpoint, not a deepcopy: the trainer leaves sft's forward wrapped in a closure that a
    # deepcopy would share, so the copy would still compute with sft's weights
    sft_copy = AutoModelForCausalLM.from_pretrained(b.root / "models" / "sft")
    same = sft(sft_copy, tokenizer, strong_prompts[:n_same], strong_demos[:n_same], cfg, None, cfg.strong_learning_rate)
    _save(same, tokenizer, b.root / "models" / "strong-same")
    b.seconds["strong-same"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_other = cfg.other_sft_steps * cfg.sft_batch_size
    other_texts = (t for pair in zip(strong_prompts[:n_other], strong_demos[:n_other], strict=True) for t in pair)
    other_tokenizer = make_other_tokenizer(other_texts, cfg.other_vocab_size, other_max_length(cfg))
    other = init_other_model(cfg, other_tokenizer)
    other = sft(other, other_tokenizer, strong_prompts[:n_other], strong_demos[:n_other], cfg, other_max_length(cfg))
    _save(other, other_tokenizer, b.root / "models" / "strong-other")
    b.seconds["strong-other"] = time.perf_counter() - t0
    b.meta["counts"]["strong_demonstrations"] = len(strong_demos)  # strong-same saw the first n_same, other n_other
    b.meta["strong_demo_exact_frac"] = sum(
        d == solve(p) for p, d in zip(strong_prompts, strong_demos, strict=True)
    ) / len(strong_demos)
    return {"strong-same": (same, tokenizer), "strong-other": (other, other_tokenizer)}


def _build(cfg: WorldConfig, root: Path) -> None:
    """Every stage of the build, writing into `root` (a temporary directory the caller renames)."""
    import torch
    import transformers
    import trl

    t0 = time.perf_counter()
    b = _Build(cfg, root, seen=set(), seconds={}, meta={})
    model, tokenizer, eval_prompts = _build_sft(b)
    _build_pairs(b, model, tokenizer, eval_prompts)
    models = {"sft": (model, tokenizer), **_build_strong(b, tokenizer)}
    t = time.perf_counter()
    model_stats = _model_stats(models, eval_prompts, cfg, random.Random(f"{cfg.seed}-model-stats"))
    b.seconds["model_stats"] = time.perf_counter() - t
    meta = {
        "world_version": WORLD_VERSION,
        "config": cfg.model_dump(),
        "models": {name: f"models/{name}" for name in MODEL_NAMES},  # name -> directory relative to the world root
        "max_new_tokens": response_budget(cfg),
        "max_length": max_length(cfg),
        **b.meta,
        "model_stats": model_stats,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "build_seconds": {**b.seconds, "total": time.perf_counter() - t0},
    }
    atomic_write_json(root / "meta.json", meta)
