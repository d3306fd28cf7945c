"""The world's two tokenizer families: a character-level one (sft, strong-same) and a BPE one with its own special
tokens and chat template (strong-other)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import WorldConfig
from .tasks import max_length

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

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


def other_max_length(cfg: WorldConfig) -> int:
    """strong-other's longest sequence, in its tokens: one more special token than the char template (<|user|>)."""
    return max_length(cfg) + 1
