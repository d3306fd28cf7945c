"""Training: a TRL `DPOTrainer` that reads cached reference columns and computes any registered objective.

No reference model is ever loaded here: `precompute_ref_log_probs=True` makes TRL drop its reference, and the
overrides below hand it dporef's cached `ref_chosen_logps` / `ref_rejected_logps` instead of recomputing them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer

from .config import RunSpec, TrainConfig
from .models import use_bf16
from .objectives import OBJECTIVES, PolicyLogps, ReferenceLogps
from .ui import progress


class CachedReferenceDPOTrainer(DPOTrainer):
    """DPOTrainer over pre-tokenized pairs with reference columns supplied by dporef's reference engine."""

    def __init__(self, *args, objective: str = "dpo", gamma: float = 0.0, **kwargs):
        self.objective = OBJECTIVES[objective]
        self.gamma = gamma
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # TRL 1.16 private: it would re-tokenize; dporef's prepare stage already rendered the pairs with the template.
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL 1.16 private: it would reject dporef's precomputed ref_*_logps columns as duplicates and rescore them.
        return dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Trainer's public hook (TRL 1.16 routes DPO's loss through it): any registered objective, summed log-probs.
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
        shift_mask = completion_mask[:, 1:]
        logps = (out.log_probs[:, -shift_mask.size(1) :] * shift_mask).sum(dim=1)
        lengths = shift_mask.sum(dim=1).float()
        policy = PolicyLogps(*logps.chunk(2), *lengths.chunk(2))
        chosen, rejected = policy.chosen, policy.rejected
        ref = ReferenceLogps(inputs["ref_chosen_logps"].to(chosen.dtype), inputs["ref_rejected_logps"].to(chosen.dtype))
        losses, chosen_reward, rejected_reward = self.objective.fn(policy, ref, self.beta, self.gamma)
        loss = losses.mean()
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_reward.detach()).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_reward.detach()).mean().item())
        metrics["rewards/margins"].append(gather((chosen_reward - rejected_reward).detach()).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_reward > rejected_reward).float()).mean().item())
        metrics["logps/chosen"].append(gather(chosen.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected.detach()).mean().item())
        metrics["length/chosen"].append(gather(policy.chosen_len).mean().item())
        metrics["length/rejected"].append(gather(policy.rejected_len).mean().item())
        return (loss, out) if return_outputs else loss


class RichProgress(TrainerCallback):
    """Training progress on dporef's rich display instead of TRL's tqdm bar."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress()
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.stop()


def dpo_config(cfg: TrainConfig, run: RunSpec, output_dir: Path, params: float) -> DPOConfig:
    """TRL settings from dporef's; precision and checkpointing follow the hardware unless set explicitly."""
    gpu = torch.cuda.is_available()
    checkpointing = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and gpu and params > 1e9
    )
    return DPOConfig(
        output_dir=str(output_dir),
        beta=run.beta,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio of total steps
        max_length=cfg.max_length,
        bf16=use_bf16(cfg.precision),
        activation_checkpointing=checkpointing,  # transformers 5 name of gradient checkpointing
        gradient_checkpointing=None,  # TRL defaults the deprecated alias to True; leave the decision above
        precompute_ref_log_probs=True,  # => TRL keeps no reference model in memory
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        **(
            {  # checkpoint choice by validation loss; only the weights are saved, and only the best two kept
                "eval_strategy": "steps",
                "eval_steps": cfg.eval_steps,
                "save_strategy": "steps",
                "save_steps": cfg.eval_steps,
                "save_only_model": True,
                "save_total_limit": 2,
                "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss",
                "greater_is_better": False,
            }
            if cfg.eval_steps
            else {"save_strategy": "no"}
        ),
        report_to=[],
        disable_tqdm=True,
        seed=run.seed,
        data_seed=run.seed,
        use_cpu=not gpu,
        dataloader_num_workers=0,
    )


def train_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Dataset,
    validation: Dataset,
    cfg: TrainConfig,
    run: RunSpec,
    output_dir: Path,
) -> tuple[list[dict], int | None]:
    """Train `model` on `train` (tokenized pairs with reference columns). Returns TRL's log history and, with
    `cfg.eval_steps`, the step of the checkpoint kept (lowest validation loss), whose weights are then in `model`."""
    params = sum(p.numel() for p in model.parameters())
    trainer = CachedReferenceDPOTrainer(
        model=model,
        args=dpo_config(cfg, run, output_dir, params),
        train_dataset=train,
        eval_dataset=validation if cfg.eval_steps else None,
        processing_class=tokenizer,
        objective=run.objective,
        gamma=run.gamma,
        callbacks=[RichProgress(f"training {run.run_id}")],
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.json, progress to the rich bar
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h or "eval_loss" in h]
    for h in history:
        if any(isinstance(v, float) and not math.isfinite(v) for v in h.values()):
            raise FloatingPointError(f"non-finite training metric at step {h.get('step')}: {h}")
    best = trainer.state.best_model_checkpoint
    return history, int(best.rsplit("-", 1)[1]) if best else None
