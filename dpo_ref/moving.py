"""References that change as the policy trains: TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656; `kind: moving`)
and BEMA (Block and Zhang 2025, arXiv 2508.00180; `kind: bema`). TRL does the moving (its SyncRefModelCallback, its
BEMACallback); this module holds what dporef adds: the settings it hands TRL, BEMA's weights copied into the
reference, and the reference's weights in every checkpoint, since a moving reference is training state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from transformers import PreTrainedModel, TrainerCallback
from trl import BEMACallback

REFERENCE_STATE = "reference.safetensors"  # a moving reference's weights, in each checkpoint of its run


@dataclass(frozen=True)
class MovingReference:
    """A copy of the policy's starting weights that follows the policy every `sync_steps` optimizer steps: TR-DPO
    (`kind: moving`, TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref) or BEMA (`kind: bema`,
    `BEMAReference`: ref <- the bias-corrected moving average of the policy's weights)."""

    model: PreTrainedModel
    alpha: float | None
    sync_steps: int
    kind: str = "moving"

    def trl_settings(self) -> dict:
        """DPOConfig's settings; the reference is scored live, so nothing is precomputed."""
        if self.kind == "bema":
            return {"precompute_ref_log_probs": False}
        return {
            "sync_ref_model": True,
            "ref_model_mixup_alpha": self.alpha,
            "ref_model_sync_steps": self.sync_steps,
            "precompute_ref_log_probs": False,
        }

    def callbacks(self) -> list[TrainerCallback]:
        """What moves a BEMA reference (TR-DPO's callback is TRL's own, from `trl_settings`)."""
        return [BEMAReference(self.model, self.sync_steps)] if self.kind == "bema" else []

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


class BEMAReference(TrainerCallback):
    """BEMA as the reference: TRL's BEMACallback keeps the bias-corrected exponential moving average of the policy's
    weights (its `running_model`, on the CPU); each time it updates it, the average becomes the reference. Its
    end-of-training save (a model in the trainer's output directory) is left out: the reference is not a result."""

    def __init__(self, reference: torch.nn.Module, update_freq: int):
        self.reference = reference
        self.bema = BEMACallback(update_freq=update_freq)

    def on_train_begin(self, args, state, control, **kwargs):
        self.bema.on_train_begin(args, state, control, **kwargs)

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        self.bema.on_step_end(args, state, control, **kwargs)
        step = state.global_step - self.bema.update_after
        if step > 0 and step % self.bema.update_freq == 0:  # BEMACallback updated its weights at this step
            self.reference.load_state_dict(self.bema.running_model.state_dict())
