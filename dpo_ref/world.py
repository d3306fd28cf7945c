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
import logging
import math
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dpo_ref.store import atomic_dir, atomic_write_json, cache_root, content_hash, read_json

if TYPE_CHECKING:  # heavy imports stay inside the functions, so importing this module is cheap
    import datasets
    from transformers import PreTrainedTokenizerFast

WORLD_VERSION = "2"  # part of the cache key: bump it when a build would change for the same config
MODEL_NAMES = ("sft", "strong-same", "strong-other")  # the world's models: the SFT policy and two stronger references

# ---------------------------------------------------------------------------------------------------------
# Tasks and the gold reward

ALPHABET = "abcdefgh"  # the letters task inputs are made of
TASKS: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "rev": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "dup": lambda s: "".join(c + c for c in s),  # the longest targets: twice the input
}
RAMBLE_COST = 0.1  # reward lost per character beyond the target's length
NO_EOS_PENALTY = 0.5  # reward lost when the response hit the length limit without EOS


def solve(prompt: str) -> str:
    """The correct response to a task prompt such as `rev abcde`."""
    task, _, letters = prompt.partition(" ")
    if task not in TASKS or not letters:
        raise ValueError(f"not a world prompt: {prompt!r} (expected '<task> <letters>', task in {list(TASKS)})")
    return TASKS[task](letters)


def gold_reward(prompt: str, response: str, ended: bool) -> float:
    """r*(x, y) = hits / len(target) - 0.1 * (characters beyond the target) - (0.5 if not ended else 0).

    hits counts the target positions the response gets right (position-wise), so the first term is at most 1.
    A response that stops early loses the credit of what it left out; one that rambles on pays per extra
    character: longer is better up to the target's length and worse after it, which makes EOS matter as in the
    paper. `ended` is False when the response hit the length limit without EOS. For `rev abcde`:
    `edcba` 1.0, `edcb` 0.8, `edcbaxx` 0.8, `edcba` not ended 0.5.
    """
    target = solve(prompt)
    hits = sum(a == b for a, b in zip(response, target, strict=False))
    extra = max(0, len(response) - len(target))
    return hits / len(target) - RAMBLE_COST * extra - (0.0 if ended else NO_EOS_PENALTY)


# ---------------------------------------------------------------------------------------------------------
# Configuration


class WorldConfig(BaseModel):
    """Everything a world is built from; its hash (with WORLD_VERSION) names the world's cache directory."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of every random choice: prompts, demonstrations, init, samples, labels.")
    n_train_pairs: int = Field(4096, ge=1, description="Preference pairs in the train split.")
    n_val_pairs: int = Field(256, ge=1, description="Preference pairs in the validation split.")
    n_eval_prompts: int = Field(512, ge=1, description="Held-out evaluation prompts (the world's AlpacaEval).")
    label_temperature: float = Field(
        0.1, gt=0, description="Bradley-Terry label noise: P(a chosen over b) = sigmoid((r*(a) - r*(b)) / this)."
    )
    min_letters: int = Field(3, ge=1, le=12, description="Shortest task input, in letters.")
    max_letters: int = Field(8, ge=1, le=12, description="Longest task input, in letters.")
    demo_truncate: float = Field(0.3, ge=0, le=1, description="SFT demonstrations that stop 1-3 letters early.")
    demo_ramble: float = Field(0.1, ge=0, le=1, description="SFT demonstrations that add 1-4 letters at the end.")
    demo_substitute: float = Field(
        0.2, ge=0, le=1, description="SFT demonstrations with one letter wrong; the rest are correct."
    )
    hidden_size: int = Field(64, ge=8, le=1024, description="Width of the tiny Llama (a multiple of num_heads).")
    num_layers: int = Field(2, ge=1, le=12, description="Transformer layers of the tiny Llama.")
    num_heads: int = Field(4, ge=1, le=16, description="Attention heads of the tiny Llama.")
    intermediate_size: int = Field(256, ge=8, le=4096, description="MLP width of the tiny Llama.")
    sft_steps: int = Field(300, ge=1, description="SFT optimizer steps, each on fresh demonstrations.")
    sft_batch_size: int = Field(64, ge=1, le=4096, description="Demonstrations per SFT step.")
    sft_learning_rate: float = Field(3e-3, gt=0, le=1, description="Peak SFT learning rate (cosine, 5% warmup).")
    sample_temperature: float = Field(1.0, gt=0, description="Temperature of the SFT samples that form pairs.")
    strong_demo_truncate: float = Field(
        0.03, ge=0, le=1, description="Demonstrations of the strong references (strong-*) that stop 1-3 letters early."
    )
    strong_demo_ramble: float = Field(
        0.01, ge=0, le=1, description="Demonstrations of the strong references that add 1-4 letters at the end."
    )
    strong_demo_substitute: float = Field(
        0.03, ge=0, le=1, description="Demonstrations of the strong references with one letter wrong."
    )
    strong_sft_steps: int = Field(
        80,
        ge=1,
        description="SFT steps that train a copy of sft further into strong-same, on the strong demonstrations.",
    )
    strong_learning_rate: float = Field(
        1e-3, gt=0, le=1, description="Peak learning rate of strong-same's further SFT (cosine, 5% warmup)."
    )
    other_sft_steps: int = Field(
        600, ge=1, description="SFT steps of strong-other (from scratch) on the strong demonstrations."
    )
    other_vocab_size: int = Field(
        61,
        ge=48,
        le=4096,
        description="Vocabulary of strong-other's BPE tokenizer, special tokens and 38 single characters included.",
    )
    other_hidden_size: int = Field(
        64, ge=8, le=1024, description="Width of strong-other's Mistral (a multiple of other_num_heads)."
    )
    other_num_layers: int = Field(2, ge=1, le=12, description="Transformer layers of strong-other's Mistral.")
    other_num_heads: int = Field(4, ge=1, le=16, description="Attention (query) heads of strong-other's Mistral.")
    other_num_kv_heads: int = Field(
        2, ge=1, le=16, description="Key/value heads of strong-other's Mistral (grouped-query attention)."
    )
    other_intermediate_size: int = Field(256, ge=8, le=4096, description="MLP width of strong-other's Mistral.")

    @model_validator(mode="after")
    def _consistent(self) -> WorldConfig:
        if self.min_letters > self.max_letters:
            raise ValueError(f"min_letters ({self.min_letters}) > max_letters ({self.max_letters})")
        for prefix in ("demo", "strong_demo"):
            if sum(getattr(self, f"{prefix}_{kind}") for kind in ("truncate", "ramble", "substitute")) > 1:
                raise ValueError(f"{prefix}_truncate + {prefix}_ramble + {prefix}_substitute must be at most 1")
        for prefix in ("", "other_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_heads")
            if width % heads:
                raise ValueError(f"{prefix}hidden_size ({width}) is not a multiple of {prefix}num_heads ({heads})")
        if self.other_num_heads % self.other_num_kv_heads:
            raise ValueError(
                f"other_num_heads ({self.other_num_heads}) is not a multiple of other_num_kv_heads "
                f"({self.other_num_kv_heads})"
            )
        return self

    @property
    def max_new_tokens(self) -> int:
        """Generation budget: twice the longest target (a `dup` of max_letters) plus 4."""
        return 2 * max(len(solve(f"{task} {'a' * self.max_letters}")) for task in TASKS) + 4

    @property
    def max_length(self) -> int:
        """Longest sequence the world's models see: the longest rendered prompt plus the generation budget.

        In characters, which is the length in tokens for the char-level tokenizer; strong-other's template has one
        more special token and its BPE tokens are at least a character long, so it allows one more (see
        `_other_max_length`)."""
        return max(map(len, TASKS)) + 1 + self.max_letters + 1 + self.max_new_tokens


# ---------------------------------------------------------------------------------------------------------
# The world on disk


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
        rejected_reward, chosen_ended, rejected_ended."""
        import datasets

        return datasets.load_from_disk(str(self.root / "preference"))

    def eval_prompts(self) -> list[str]:
        return json.loads((self.root / "eval_prompts.json").read_text())

    def meta(self) -> dict:
        return read_json(self.root / "meta.json")

    def gold_reward(self, prompt: str, response: str, ended: bool) -> float:
        return gold_reward(prompt, response, ended)


def build_world(cfg: WorldConfig, cache_dir: Path | None = None) -> World:
    """Build the world once into <cache_dir>/world/<hash of config + WORLD_VERSION>/ and return it.

    A second call with the same config finds the directory and returns at once (no training, no model load).
    The build writes into a temporary sibling renamed at the end: an interrupted build leaves nothing behind.
    """
    key = content_hash({"config": cfg.model_dump(), "world_version": WORLD_VERSION})
    root = Path(cache_dir or cache_root()) / "world" / key
    if not root.exists():
        with atomic_dir(root) as tmp, _quiet(), _preserved_global_rng(), _single_threaded():
            _build(cfg, tmp)
    return World.load(root)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and chat template

# "rev abc" renders as "rev abc=" with the generation prompt and as "rev abc=cba<eos>" with the answer. The "="
# opens the assistant turn, so the prompt with the generation prompt is an exact prefix of prompt + answer, and
# the completion is the answer's characters then EOS. The generation tags give TRL its assistant-only masks.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}={% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- else -%}{{ raise_exception('the world chat template has no role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}={%- endif -%}"
)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0-3; <bos> is there for scoring with no prompt
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 ="  # one token each


def make_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """Character-level tokenizer (WordLevel over single characters); adds no BOS or EOS by itself."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # a word per character
    backend.decoder = decoders.Fuse()  # decode by concatenation, no spaces in between
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",  # batched generation continues each prompt from its last real token
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


# strong-other's own family: "rev abc" renders as "<|user|>rev abc<|assistant|>" with the generation prompt and as
# "<|user|>rev abc<|assistant|>cba<|end|>" with the answer. Special tokens mark the turn boundaries, so BPE merges
# never cross them and the prompt with the generation prompt is again an exact prefix of prompt + answer.
OTHER_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}<|user|>{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- else -%}{{ raise_exception('the world chat template has no role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
OTHER_SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|unk|>"]  # ids 0-4


def make_other_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `texts` (world prompts and responses), with its own special tokens and chat
    template: tokens are chunks of letters such as `ffhh` or `cde` that do not line up with the characters.

    Words are split at spaces (a space is a token of its own) and decoding concatenates tokens; the base alphabet
    is the world's CHARACTERS, so every world text tokenizes without <|unk|>. Adds no BOS or EOS by itself.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    backend.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=OTHER_SPECIAL_TOKENS,
        initial_alphabet=list(CHARACTERS),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        unk_token="<|unk|>",
        extra_special_tokens=["<|user|>", "<|assistant|>"],
        padding_side="left",
        chat_template=OTHER_CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


def _user(prompt: str) -> dict:
    return {"role": "user", "content": prompt}


def _assistant(response: str) -> dict:
    return {"role": "assistant", "content": response}


def _render(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list[list[int]]:
    """Token ids of conversations rendered through the chat template."""
    texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------------------
# Prompts, demonstrations, the SFT model and its samples


def _prompts(rng: random.Random, n: int, cfg: WorldConfig, seen: set[str]) -> list[str]:
    """n new prompts, uniform over tasks and input lengths, none of them in `seen` (which they join)."""
    out = []
    while len(out) < n:
        letters = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(cfg.min_letters, cfg.max_letters)))
        prompt = f"{rng.choice(list(TASKS))} {letters}"
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


def _demonstration(prompt: str, rng: random.Random, truncate: float, ramble: float, substitute: float) -> str:
    """A noisy SFT demonstration: stopped early (with probability `truncate`), rambling (`ramble`), one letter
    wrong (`substitute`), or correct."""
    target = solve(prompt)
    u = rng.random()
    if u < truncate and len(target) > 1:
        return target[: -rng.randint(1, min(3, len(target) - 1))]
    u -= truncate
    if u < ramble:
        return target + "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4)))
    u -= ramble
    if u < substitute:
        i = rng.randrange(len(target))
        return target[:i] + rng.choice([c for c in ALPHABET if c != target[i]]) + target[i + 1 :]
    return target


def _init_model(cfg: WorldConfig, tokenizer):
    """A tiny Llama whose config and generation config agree with the tokenizer on pad/eos/bos."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    ids = {name: tokenizer.convert_tokens_to_ids(f"<{name}>") for name in ("pad", "eos", "bos")}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,  # plain multi-head attention
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True,  # the head reuses the embedding matrix
        pad_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        bos_token_id=ids["bos"],
    )
    set_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = ids["pad"], ids["eos"], ids["bos"]
    return model


def _other_max_length(cfg: WorldConfig) -> int:
    """strong-other's longest sequence, in its tokens: one more special token than the char template (<|user|>)."""
    return cfg.max_length + 1


def _init_other_model(cfg: WorldConfig, tokenizer):
    """strong-other's architecture: a tiny Mistral (grouped-query attention, sliding-window attention that is
    inactive at these lengths, its own head and width settings), whose config and generation config agree with
    its tokenizer on pad/eos; there is no BOS."""
    from transformers import MistralConfig, MistralForCausalLM, set_seed

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.other_hidden_size,
        num_hidden_layers=cfg.other_num_layers,
        num_attention_heads=cfg.other_num_heads,
        num_key_value_heads=cfg.other_num_kv_heads,
        head_dim=cfg.other_hidden_size // cfg.other_num_heads,
        intermediate_size=cfg.other_intermediate_size,
        max_position_embeddings=_other_max_length(cfg),
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=None,
    )
    set_seed(cfg.seed)
    model = MistralForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = pad, eos, None
    return model


def _demonstration_tokens(tokenizer, prompts: list[str], demos: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, labels) of demonstrations rendered through the chat template in one batched call; the labels
    mask the prompt with -100, so the loss is on the completion (answer + EOS) only."""
    prompt_ids = _render(tokenizer, [[_user(p)] for p in prompts], add_generation_prompt=True)
    full_ids = _render(tokenizer, [[_user(p), _assistant(d)] for p, d in zip(prompts, demos, strict=True)])
    labels = []
    for p, f in zip(prompt_ids, full_ids, strict=True):
        assert f[: len(p)] == p, "chat template: the prompt is not a prefix of prompt + answer"
        labels.append([-100] * len(p) + f[len(p) :])
    return full_ids, labels


def _sft(
    model,
    tokenizer,
    prompts: list[str],
    demos: list[str],
    cfg: WorldConfig,
    max_length: int | None = None,
    learning_rate: float | None = None,
):
    """SFT through TRL's SFTTrainer, with the loss on the completion (answer + EOS) only: one pass over the
    demonstrations in batches of `cfg.sft_batch_size` (so len(demos) // batch size steps), peak learning rate
    `learning_rate` (default cfg.sft_learning_rate) and sequences up to `max_length` (default cfg.max_length).

    The pairs are tokenized here through the chat template in one batched call (TRL's per-example preparation
    takes longer than the training) and handed over with `skip_prepare_dataset`. The build runs on the CPU on
    every machine: the cache key is the config alone, so the world must not depend on the device (and a model
    this small gains nothing from a GPU).
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    full_ids, labels = _demonstration_tokens(tokenizer, prompts, demos)
    data = Dataset.from_dict({"input_ids": full_ids, "labels": labels})
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,  # receives nothing (save_strategy="no"); the caller saves the model
            max_steps=len(demos) // cfg.sft_batch_size,  # one pass over the demonstrations
            per_device_train_batch_size=cfg.sft_batch_size,
            learning_rate=learning_rate or cfg.sft_learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, len(demos) // cfg.sft_batch_size // 20),  # 5% warmup
            weight_decay=0.0,
            max_length=max_length or cfg.max_length,  # no demonstration is longer
            dataset_kwargs={"skip_prepare_dataset": True},  # tokenized above, labels included
            bf16=False,  # fp32 on the CPU
            activation_checkpointing=False,  # tiny activations (the new name of gradient_checkpointing)
            use_cpu=True,  # see the docstring
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            disable_tqdm=True,
            logging_strategy="no",
            save_strategy="no",
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics
        trainer.train()
    trainer.model.config.use_cache = True  # the trainer turns the KV cache off; generation wants it back
    return trainer.model.eval()


def generate_responses(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 512,
) -> list[tuple[str, bool]]:
    """(response text without EOS, ended) per prompt: greedy when temperature is None, else sampled.

    Works with any world model and its own tokenizer: the prompt goes through the tokenizer's chat template, the
    model stops at the tokenizer's EOS (which its generation config shares), and special tokens other than EOS are
    suppressed, so a response is plain text (decoded with skip_special_tokens); `ended` is False when the budget
    of `max_new_tokens` tokens ran out before EOS. Sampling draws from a torch RNG seeded with `seed` and forked
    from the global one, which is left as it was.
    """
    import torch

    eos = tokenizer.eos_token_id
    suppress = sorted(
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special and i != eos and i < model.config.vocab_size
    )
    if temperature is None:
        decoding = {"do_sample": False}
    else:  # plain temperature sampling: no top-k / top-p truncation
        decoding = {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": None}
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer.apply_chat_template(
                [[_user(p)] for p in prompts[start : start + batch_size]],
                add_generation_prompt=True,
                padding=True,
                return_tensors="pt",
                return_dict=True,
            ).to(model.device)
            tokens = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                suppress_tokens=suppress,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                **decoding,
            )
            for row in tokens[:, enc["input_ids"].shape[1] :].tolist():
                ended = eos in row
                row = row[: row.index(eos)] if ended else row
                out.append((tokenizer.decode(row, skip_special_tokens=True), ended))
    return out


# ---------------------------------------------------------------------------------------------------------
# Preference pairs

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "chosen_ended", "rejected_ended")


def _label_pairs(prompts, samples, rows: dict[str, list], n: int, rng: random.Random, temperature: float) -> int:
    """Append to `rows` the pairs (samples[2i], samples[2i+1]) labelled by Bradley-Terry on r*, skipping
    identical responses, until it holds n pairs; return how many prompts that used."""
    for i, prompt in enumerate(prompts):
        if len(rows["prompt"]) == n:
            return i
        (a, a_end), (b, b_end) = samples[2 * i], samples[2 * i + 1]
        if a == b:
            continue
        ra, rb = gold_reward(prompt, a, a_end), gold_reward(prompt, b, b_end)
        if rng.random() >= 1 / (1 + math.exp(-(ra - rb) / temperature)):  # b preferred: swap
            (a, a_end, ra), (b, b_end, rb) = (b, b_end, rb), (a, a_end, ra)
        for key, value in zip(PAIR_COLUMNS, (prompt, a, b, ra, rb, a_end, b_end), strict=True):
            rows[key].append(value)
    return len(prompts)


def _sample_pairs(model, tokenizer, cfg: WorldConfig, rng: random.Random, seen: set[str], n: int):
    """n labelled pairs on fresh prompts (more prompts are drawn until n pairs survive the identical-pair
    filter), and statistics of every sample those pairs came from."""
    rows: dict[str, list] = {k: [] for k in PAIR_COLUMNS}
    stats = {"identical_dropped": 0, "prompts_used": 0, "sample_reward_sum": 0.0, "sample_exact": 0, "ended": 0}
    while len(rows["prompt"]) < n:
        kept = len(rows["prompt"])
        prompts = _prompts(rng, (n - kept) * 3 // 2 + 8, cfg, seen)  # headroom for identical pairs
        samples = generate_responses(
            model,
            tokenizer,
            [p for p in prompts for _ in range(2)],
            cfg.max_new_tokens,
            temperature=cfg.sample_temperature,
            seed=rng.getrandbits(63),
        )
        used = _label_pairs(prompts, samples, rows, n, rng, cfg.label_temperature)
        stats["identical_dropped"] += used - (len(rows["prompt"]) - kept)
        stats["prompts_used"] += used
        for i, prompt in enumerate(prompts[:used]):
            for text, ended in samples[2 * i : 2 * i + 2]:
                stats["sample_reward_sum"] += gold_reward(prompt, text, ended)
                stats["sample_exact"] += ended and text == solve(prompt)
                stats["ended"] += ended
    return rows, stats


def _pair_stats(rows: dict[str, list]) -> dict:
    n = len(rows["prompt"])
    lengths = [(len(c), len(r)) for c, r in zip(rows["chosen"], rows["rejected"], strict=True)]
    rewards = list(zip(rows["chosen_reward"], rows["rejected_reward"], strict=True))
    return {
        "pairs": n,
        "mean_chosen_len": sum(c for c, _ in lengths) / n,
        "mean_rejected_len": sum(r for _, r in lengths) / n,
        "frac_chosen_longer": sum(c > r for c, r in lengths) / n,
        "frac_chosen_shorter": sum(c < r for c, r in lengths) / n,
        "frac_label_agrees_with_gold": sum(c > r for c, r in rewards) / n,
        "frac_equal_gold": sum(c == r for c, r in rewards) / n,
    }


# ---------------------------------------------------------------------------------------------------------
# The build


def _win_rate(prompts: list[str], samples: list[tuple[str, bool]], baseline: list[tuple[str, bool]]) -> float:
    """Fraction of prompts where the sample's gold reward beats the baseline's, ties counting 0.5."""
    wins = 0.0
    for prompt, a, b in zip(prompts, samples, baseline, strict=True):
        ra, rb = gold_reward(prompt, *a), gold_reward(prompt, *b)
        wins += 1.0 if ra > rb else 0.5 if ra == rb else 0.0
    return wins / len(prompts)


def _model_stats(models: dict, prompts: list[str], cfg: WorldConfig, rng: random.Random) -> dict[str, dict]:
    """Per model (name -> (model, tokenizer)), on the held-out prompts: size, greedy exact match and reward, and
    T=1 samples' mean reward, exact match and win rate against T=1 samples of `sft` (a draw of their own, so
    `sft`'s own win rate is that of two independent draws of one policy, about 0.5)."""
    sft_model, sft_tokenizer = models["sft"]
    seed, baseline_seed = rng.getrandbits(63), rng.getrandbits(63)
    baseline = generate_responses(sft_model, sft_tokenizer, prompts, cfg.max_new_tokens, 1.0, baseline_seed)
    stats = {}
    for name, (model, tokenizer) in models.items():
        greedy = generate_responses(model, tokenizer, prompts, cfg.max_new_tokens)
        samples = generate_responses(model, tokenizer, prompts, cfg.max_new_tokens, 1.0, seed)
        n = len(prompts)
        stats[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__,
            "vocab_size": len(tokenizer),
            "greedy_exact_match": sum(e and t == solve(p) for p, (t, e) in zip(prompts, greedy, strict=True)) / n,
            "greedy_mean_reward": sum(gold_reward(p, *g) for p, g in zip(prompts, greedy, strict=True)) / n,
            "sample_mean_reward": sum(gold_reward(p, *x) for p, x in zip(prompts, samples, strict=True)) / n,
            "sample_exact_match": sum(e and t == solve(p) for p, (t, e) in zip(prompts, samples, strict=True)) / n,
            "sample_ended_frac": sum(e for _, e in samples) / n,
            "win_rate_vs_sft": _win_rate(prompts, samples, baseline),
        }
    return stats


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _build(cfg: WorldConfig, root: Path) -> None:
    """Every stage of the build, writing into `root` (a temporary directory the caller renames)."""
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    tokenizer = make_tokenizer(cfg.max_length)
    seen: set[str] = set()  # every prompt drawn: eval, SFT, validation, train and strong prompts are disjoint
    eval_prompts = _prompts(random.Random(f"{cfg.seed}-eval"), cfg.n_eval_prompts, cfg, seen)
    demo_rng = random.Random(f"{cfg.seed}-sft")
    sft_prompts = _prompts(demo_rng, cfg.sft_steps * cfg.sft_batch_size, cfg, seen)
    mix = (cfg.demo_truncate, cfg.demo_ramble, cfg.demo_substitute)
    demos = [_demonstration(p, demo_rng, *mix) for p in sft_prompts]

    model = _sft(_init_model(cfg, tokenizer), tokenizer, sft_prompts, demos, cfg)
    _save(model, tokenizer, root / "models" / "sft")
    seconds["sft"] = time.perf_counter() - t0

    greedy = generate_responses(model, tokenizer, eval_prompts, cfg.max_new_tokens)
    exact_by_task: dict[str, list[bool]] = {task: [] for task in TASKS}
    for prompt, (text, ended) in zip(eval_prompts, greedy, strict=True):
        exact_by_task[prompt.partition(" ")[0]].append(ended and text == solve(prompt))

    t = time.perf_counter()
    splits, split_stats = {}, {}
    for split, n in (("validation", cfg.n_val_pairs), ("train", cfg.n_train_pairs)):
        rows, stats = _sample_pairs(model, tokenizer, cfg, random.Random(f"{cfg.seed}-{split}"), seen, n)
        splits[split] = datasets.Dataset.from_dict(rows)
        split_stats[split] = {**_pair_stats(rows), **stats}
    datasets.DatasetDict(splits).save_to_disk(str(root / "preference"))
    (root / "eval_prompts.json").write_text(json.dumps(eval_prompts, indent=0) + "\n")
    seconds["pairs"] = time.perf_counter() - t

    # The strong references (RQ3), built after the pairs so that everything above is as it was before they
    # existed. One stream of cleaner demonstrations on prompts of their own: strong-same (a copy of sft trained
    # further) takes its first strong_sft_steps batches, strong-other (from scratch) its first other_sft_steps.
    t = time.perf_counter()
    strong_rng = random.Random(f"{cfg.seed}-strong")
    n_strong = max(cfg.strong_sft_steps, cfg.other_sft_steps) * cfg.sft_batch_size
    strong_prompts = _prompts(strong_rng, n_strong, cfg, seen)
    strong_mix = (cfg.strong_demo_truncate, cfg.strong_demo_ramble, cfg.strong_demo_substitute)
    strong_demos = [_demonstration(p, strong_rng, *strong_mix) for p in strong_prompts]
    n_same = cfg.strong_sft_steps * cfg.sft_batch_size
    # from the saved checkpoint, not a deepcopy: the trainer leaves sft's forward wrapped in a closure that a
    # deepcopy would share, so the copy would still compute with sft's weights
    sft_copy = AutoModelForCausalLM.from_pretrained(root / "models" / "sft")
    strong_same = _sft(
        sft_copy, tokenizer, strong_prompts[:n_same], strong_demos[:n_same], cfg, None, cfg.strong_learning_rate
    )
    _save(strong_same, tokenizer, root / "models" / "strong-same")
    seconds["strong-same"] = time.perf_counter() - t

    t = time.perf_counter()
    n_other = cfg.other_sft_steps * cfg.sft_batch_size
    other_tokenizer = make_other_tokenizer(
        (text for pair in zip(strong_prompts[:n_other], strong_demos[:n_other], strict=True) for text in pair),
        cfg.other_vocab_size,
        _other_max_length(cfg),
    )
    other = _init_other_model(cfg, other_tokenizer)
    other = _sft(other, other_tokenizer, strong_prompts[:n_other], strong_demos[:n_other], cfg, _other_max_length(cfg))
    _save(other, other_tokenizer, root / "models" / "strong-other")
    seconds["strong-other"] = time.perf_counter() - t

    t = time.perf_counter()
    world_models = {
        "sft": (model, tokenizer),
        "strong-same": (strong_same, tokenizer),
        "strong-other": (other, other_tokenizer),
    }
    model_stats = _model_stats(world_models, eval_prompts, cfg, random.Random(f"{cfg.seed}-model-stats"))
    seconds["model_stats"] = time.perf_counter() - t

    n_samples = 2 * sum(s["prompts_used"] for s in split_stats.values())
    total = {k: sum(s[k] for s in split_stats.values()) for k in ("sample_reward_sum", "sample_exact", "ended")}
    train = split_stats["train"]
    meta = {
        "world_version": WORLD_VERSION,
        "config": cfg.model_dump(),
        "models": {name: f"models/{name}" for name in MODEL_NAMES},  # name -> directory relative to the world root
        "counts": {
            "train_pairs": len(splits["train"]),
            "validation_pairs": len(splits["validation"]),
            "eval_prompts": len(eval_prompts),
            "sft_demonstrations": len(demos),
            "strong_demonstrations": len(strong_demos),  # strong-same saw the first n_same, strong-other n_other
            "identical_pairs_dropped": sum(s["identical_dropped"] for s in split_stats.values()),
        },
        "vocab_size": len(tokenizer),
        "sft_params": sum(p.numel() for p in model.parameters()),
        "max_new_tokens": cfg.max_new_tokens,
        "max_length": cfg.max_length,
        "sft_demo_exact_frac": sum(d == solve(p) for p, d in zip(sft_prompts, demos, strict=True)) / len(demos),
        "strong_demo_exact_frac": sum(d == solve(p) for p, d in zip(strong_prompts, strong_demos, strict=True))
        / len(strong_demos),
        "sft_greedy_exact_match": sum(map(sum, exact_by_task.values())) / len(eval_prompts),
        "sft_greedy_exact_match_by_task": {t: sum(v) / len(v) for t, v in exact_by_task.items() if v},
        "sft_greedy_mean_reward": sum(gold_reward(p, *g) for p, g in zip(eval_prompts, greedy, strict=True))
        / len(eval_prompts),
        "sft_sample_mean_reward": total["sample_reward_sum"] / n_samples,
        "sft_sample_exact_match": total["sample_exact"] / n_samples,
        "sft_sample_ended_frac": total["ended"] / n_samples,
        "mean_chosen_len": train["mean_chosen_len"],
        "mean_rejected_len": train["mean_rejected_len"],
        "frac_chosen_longer": train["frac_chosen_longer"],
        "model_stats": model_stats,
        "splits": split_stats,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "build_seconds": {**seconds, "total": time.perf_counter() - t0},
    }
    atomic_write_json(root / "meta.json", meta)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers/TRL/datasets logs, progress bars and warnings during a build, then restore them."""
    import datasets
    import transformers

    tf_logging = transformers.utils.logging
    tf_level, tf_bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    trl_logger = logging.getLogger("trl")
    trl_level, ds_bars = trl_logger.level, datasets.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    trl_logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logging.set_verbosity(tf_level)
        trl_logger.setLevel(trl_level)
        if tf_bars:
            tf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


@contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """The build seeds Python, NumPy and torch globally (the Trainer does); the caller gets its state back."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Build on one CPU thread. The models are too small to gain much from more (2 threads: ~1.7x per step on
    an idle 2-core machine), while a second torch process on the same cores makes multi-threaded steps 10-40x
    slower (threads spin at barriers); one thread also keeps the floating-point order, hence the world, the same
    on machines with more cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
