"""Judges: a reward for each (prompt, response), and a per-prompt preference of a policy's response over the SFT
baseline's, from which the win rate and the LC win rate are computed.

- `RuleJudge`: a programmatic reward the preference data comes with (the world's gold reward, the instruction
  checks of `data: instructions`). Preference = 1 if the policy's reward is higher, 0.5 on a tie, 0 otherwise.
- `RewardModelJudge`: any Hugging Face sequence-classification reward model r(x, y) with one output. Preference =
  sigmoid(r(x, y) - r(x, y_base)), the Bradley-Terry probability that the policy's response wins. It scores in its
  own precision regime (precision.py), as every other model runs: under bf16, a reward model below LARGE keeps fp32
  weights under bf16 autocast (it had bf16 weights without autocast: on a GPU its rewards move by bf16 rounding),
  a larger one bf16 weights under the same autocast. The regime is part of its key, so no baseline judged the
  old way is reused.
A GPT-4 judge runs outside dporef: every run exports its generations in AlpacaEval's format (alpaca_eval.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..chat import conversation
from ..models import ModelRef, device
from ..precision import regime_for
from ..ui import progress
from .metrics import preference


@dataclass(frozen=True)
class RuleJudge:
    name: str
    score: Callable[[object, str, bool], float]  # (prompt, response, ended) -> reward

    @property
    def key(self) -> str:
        return self.name

    def rewards(self, prompts: Sequence, responses: Sequence[str], ended: Sequence[bool]) -> np.ndarray:
        return np.array([self.score(p, r, e) for p, r, e in zip(prompts, responses, ended)], dtype=np.float64)

    @staticmethod
    def preferences(rewards, baseline_rewards) -> np.ndarray:
        return preference(rewards, baseline_rewards)


@dataclass(frozen=True)
class RewardModelJudge:
    model: ModelRef
    batch_size: int = 32
    precision: str = "auto"

    @property
    def name(self) -> str:
        return f"reward-model {self.model.spec}"

    @property
    def key(self) -> str:
        return f"reward-model:{self.model.fingerprint}:{regime_for(self.model, self.precision).key}"

    @torch.no_grad()
    def rewards(self, prompts: Sequence, responses: Sequence[str], ended: Sequence[bool]) -> np.ndarray:
        """r(x, y) for each pair, the conversation rendered with the reward model's own chat template (plain
        "prompt\\n\\nresponse" when it has none). The model is loaded for this call only."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model.location)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        regime = regime_for(self.model, self.precision)
        rm = AutoModelForSequenceClassification.from_pretrained(self.model.location, dtype=regime.dtype)
        rm = rm.to(device()).eval()
        rm.config.pad_token_id = tok.pad_token_id  # the classifier reads the last non-pad token
        texts = [self._text(tok, p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros(len(texts))
        with progress() as bar, regime.autocast():
            task = bar.add_task(f"judging ({self.model.spec})", total=len(texts))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                logits = rm(**enc.to(rm.device)).logits.float()
                out[idx] = logits[:, 0].cpu().numpy()
                bar.advance(task, len(idx))
        return out

    @staticmethod
    def _text(tok, prompt, response: str) -> str:
        if tok.chat_template:
            return tok.apply_chat_template(conversation(prompt, response), tokenize=False)
        user = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
        return f"{user}\n\n{response}"

    @staticmethod
    def preferences(rewards, baseline_rewards) -> np.ndarray:
        diff = np.asarray(rewards, dtype=np.float64) - np.asarray(baseline_rewards, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-diff))


Judge = RuleJudge | RewardModelJudge
