"""The embedded controlled world: a stand-in for "7B SFT model + UltraFeedback + AlpacaEval" on 2 CPU cores (see
`build` for what it holds and how it is made)."""

from ..config import WorldConfig
from .build import MODEL_NAMES, WORLD_VERSION, World, build_world
from .models import respond
from .pairs import PAIR_COLUMNS
from .tasks import ALPHABET, TASKS, gold_reward, max_length, response_budget, solve
from .tokenizers import CHAT_TEMPLATE, OTHER_CHAT_TEMPLATE, make_other_tokenizer, make_tokenizer

__all__ = [
    "ALPHABET",
    "CHAT_TEMPLATE",
    "MODEL_NAMES",
    "OTHER_CHAT_TEMPLATE",
    "PAIR_COLUMNS",
    "TASKS",
    "WORLD_VERSION",
    "World",
    "WorldConfig",
    "build_world",
    "gold_reward",
    "make_other_tokenizer",
    "make_tokenizer",
    "max_length",
    "respond",
    "response_budget",
    "solve",
]
