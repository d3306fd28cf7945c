"""Moving references (TR-DPO, Gorbatovski et al. 2024, arXiv 2404.09656; `kind: moving`): a reference that follows
the policy while it trains. TRL's SyncRefModelCallback does the moving; this module holds what dporef adds: the
settings it hands TRL, and the reference's weights in every checkpoint, since a moving reference is training state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from transformers import PreTrainedModel, TrainerCallback

REFERENCE_STATE = "reference.safetensors"  # a moving reference's weights, in each checkpoint of its run


@dataclass(frozen=True)
class MovingReference:
    """A TR-DPO reference (`kind: moving`): a copy of the policy's starting weights that TRL's SyncRefModelCallback
    moves towards the policy, ref <- alpha * policy + (1 - alpha) * ref, every `sync_steps` optimizer steps."""

    model: PreTrainedModel
    alpha: float
    sync_steps: int

    def trl_settings(self) -> dict:
        """DPOConfig's TR-DPO settings; the reference is scored live, so nothing is precomputed."""
        return {
            "sync_ref_model": True,
            "ref_model_mixup_alpha": self.alpha,
            "ref_model_sync_steps": self.sync_steps,
            "precompute_ref_log_probs": False,
        }

    def restore(self, checkpoint: Path) -> None:
        """The reference as it was at `checkpoint` (written there by MovingReferenceCheckpoints)."""
        safetensors.torch.load_model(self.model, str(checkpoint / REFERENCE_STATE))


class MovingReferenceCheckpoints(TrainerCallback):
    """A moving reference is training state: its weights go into every checkpoint (after the Trainer wrote it), so a
    resumed run goes on from the reference it had, not from the policy's starting point."""

    def __init__(self, reference: torch.nn.Module):
        self.reference = reference

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / REFERENCE_STATE
            partial = path.with_suffix(".partial")
            safetensors.torch.save_model(self.reference, str(partial))  # handles tied (shared) weights
            partial.replace(path)
