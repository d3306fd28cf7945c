"""Training: a TRL `DPOTrainer` that reads cached reference columns and computes any registered objective.

No reference model is loaded here: `precompute_ref_log_probs=True` makes TRL drop its reference, and the adapter
(`trl_adapter`, the one module that touches TRL's private names) hands it dporef's cached `ref_chosen_logps` /
`ref_rejected_logps` instead of recomputing them. The one exception is a moving reference (TR-DPO,
`MovingReference`), which changes as the policy trains: it is in memory and scored live while training. The
validation loss that chooses a checkpoint (`eval_steps`) is measured against its starting point's cached scores
instead: against the moving reference it falls back towards ln 2 after every sync, so its lowest value would pick
the checkpoint just before a sync, quietly turning the run into a short DPO run.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer

from . import ranks
from .config import RunSpec, TrainConfig
from .config.schema import LoraSettings
from .moving import REFERENCE_STATE, MovingReference, MovingReferenceCheckpoints
from .objectives import OBJECTIVES, PolicyLogps, ReferenceLogps
from .precision import use_bf16
from .reference_methods import BetaDPO
from .store import atomic_dir, read_json
from .tracking import Tracking
from .train_callbacks import PeriodicCheckpoints, RichProgress
from .train_order import LengthSortedSteps, pair_lengths
from .training_guards import Diverged, DivergenceGuard
from .trl_adapter import DPOTrainerAdapter
from .ui import console


class CachedReferenceDPOTrainer(DPOTrainerAdapter):
    """DPOTrainer over pre-tokenized pairs with reference columns supplied by dporef's reference engine."""

    def __init__(
        self,
        *args,
        objective: str = "dpo",
        gamma: float = 0.0,
        params: dict | None = None,
        guard: DivergenceGuard | None = None,
        **kw,
    ):
        self.objective = OBJECTIVES[objective]
        # a stateful objective's validation batches never move the statistics training carries (beta_dpo's M0)
        self.losses = {"train": self.objective.loss(params), "eval": self.objective.loss(params)}
        self.gamma = gamma
        self.guard = guard  # told every training loss, so a non-finite one stops training at its step
        self.tokens_seen = 0  # the `num_tokens` metric: prompt and response tokens trained on so far
        super().__init__(*args, **kw)

    def train_sampler(self, dataset):
        # The training order: the same pairs per optimizer step as the Trainer's random order, sorted by length
        # within the step so that its micro-batches need less padding (see LengthSortedSteps).
        step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        if step == self.args.per_device_train_batch_size:  # one micro-batch per step: nothing to sort
            return None  # the Trainer's own random order
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthSortedSteps(pair_lengths(dataset), step, seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Trainer's public hook (TRL 1.16 routes DPO's loss through it): any registered objective, summed log-probs.
        if self.objective.trl:
            return self.trl_loss(model, inputs, return_outputs, num_items_in_batch)
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
        if self.ref_model is not None and mode == "train":  # a moving reference (TR-DPO): scored as it is now
            ref_logps = self.compute_ref_log_probs(self.ref_model, inputs)
        else:  # cached; a moving run's validation loss against its starting point (module docstring)
            ref_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        ref = ReferenceLogps(*(x.to(chosen.dtype) for x in ref_logps))
        objective = self.losses[mode]
        losses, chosen_reward, rejected_reward = objective(policy, ref, self.beta, self.gamma)
        loss = losses.mean()
        if isinstance(objective, BetaDPO):  # the beta it took for this batch
            self.record_metric(mode, "beta", objective.last_beta)
        if mode == "train" and self.guard is not None:  # gathered: every process takes the same decision
            step_loss = self.accelerator.gather(loss.detach().reshape(1)).mean().item()
            self.guard.observe(self.state.global_step + 1, "loss", step_loss)
        self.record_token_metrics(mode, out, inputs, shift_mask)
        metrics = {
            "rewards/chosen": chosen_reward,
            "rewards/rejected": rejected_reward,
            "rewards/margins": chosen_reward - rejected_reward,
            "rewards/accuracies": (chosen_reward > rejected_reward).float(),
            "logps/chosen": chosen,
            "logps/rejected": rejected,
            "length/chosen": policy.chosen_len,
            "length/rejected": policy.rejected_len,
        }
        for name, value in metrics.items():
            self.record_metric(mode, name, self.accelerator.gather_for_metrics(value.detach()).mean().item())
        return (loss, out) if return_outputs else loss

    def trl_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's own loss types (DPOConfig.loss_type and its settings) through TRL's own compute_loss, on the cached
        reference columns (`precompute_ref_log_probs`); a moving reference is scored live while training and its
        validation loss read from its starting point's columns (module docstring)."""
        live = self.precompute_ref_logps
        self.precompute_ref_logps = live or not self.model.training  # DPOTrainer reads the flag at every call
        try:
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self.precompute_ref_logps = live
        if self.model.training and self.guard is not None:  # gathered: every process takes the same decision
            loss = out[0] if return_outputs else out
            step_loss = self.accelerator.gather(loss.detach().reshape(1)).mean().item()
            self.guard.observe(self.state.global_step + 1, "loss", step_loss)
        return out

    def record_token_metrics(self, mode: str, out, inputs, shift_mask: torch.Tensor) -> None:
        """The per-token metrics stock DPOTrainer logs beside the rewards (same names, same definitions): entropy
        and mean logit over completion tokens, the chosen responses' top-1 token accuracy, tokens trained on."""
        if mode == "train":
            self.tokens_seen += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self.record_metric(mode, "num_tokens", self.tokens_seen, latest=True)
        width = shift_mask.size(1)

        def token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:  # over every process's tokens
            total = self.accelerator.gather_for_metrics((values.float() * mask).sum()).sum()
            count = self.accelerator.gather_for_metrics(mask.sum()).sum()
            return (total / count).item() if count > 0 else 0.0

        chosen_mask, rejected_mask = shift_mask.chunk(2)
        mean_logits = out.mean_logits[:, -width:].detach().chunk(2)
        self.record_metric(mode, "entropy", token_mean(out.entropy[:, -width:].detach(), shift_mask))
        self.record_metric(mode, "logits/chosen", token_mean(mean_logits[0], chosen_mask))
        self.record_metric(mode, "logits/rejected", token_mean(mean_logits[1], rejected_mask))
        self.record_metric(mode, "mean_token_accuracy", token_mean(out.is_top1[:, -width:].chunk(2)[0], chosen_mask))


def _saving(cfg: TrainConfig) -> dict:
    """What the Trainer saves: with `eval_steps`, a checkpoint at every evaluation for checkpoint choice (the best
    and the latest kept), full ones when `checkpoint_steps` needs to resume from them; with `checkpoint_steps`
    alone, the latest full checkpoint (PeriodicCheckpoints)."""
    if cfg.eval_steps:
        return {
            "eval_strategy": "steps",
            "eval_steps": cfg.eval_steps,
            "save_strategy": "steps",
            "save_steps": cfg.eval_steps,
            "save_only_model": cfg.checkpoint_steps is None,
            "save_total_limit": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
        }
    return {"save_strategy": "no", "save_total_limit": 1 if cfg.checkpoint_steps else None}


def dpo_config(
    cfg: TrainConfig,
    run: RunSpec,
    output_dir: Path,
    params: float,
    moving: MovingReference | None = None,
    tracking: Tracking | None = None,
) -> DPOConfig:
    """TRL settings from dporef's; precision and checkpointing follow the hardware unless set explicitly; the
    trackers of `train.report_to` (`tracking`), else none."""
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
        gradient_accumulation_steps=cfg.accumulation_per_process(ranks.size()),
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio of total steps
        max_length=cfg.max_length,
        bf16=use_bf16(cfg.precision),
        activation_checkpointing=checkpointing,  # transformers 5 name of gradient checkpointing
        gradient_checkpointing=None,  # TRL defaults the deprecated alias to True; leave the decision above
        **(moving.trl_settings() if moving else {"precompute_ref_log_probs": True}),  # => TRL holds no reference
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the history shows a non-finite loss as it was, not as an average
        **_saving(cfg),
        **(tracking.trainer_settings(run.run_id) if tracking else {"report_to": []}),
        **(run.trl or {}),  # TRL's loss type and its settings, for objectives TRL computes
        disable_tqdm=True,
        seed=run.seed,
        data_seed=run.seed,
        use_cpu=not gpu,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient: no extra autograd traversal
    )


def resume_point(output_dir: Path, moving: bool = False) -> Path | None:
    """The newest full checkpoint an interrupted attempt of this run left in `output_dir`, or None (and nothing
    left there). A checkpoint is complete once its trainer_state.json is readable (the Trainer writes it last); an
    incomplete one (killed while saving) is removed, and one without optimizer state (`eval_steps` alone), or for a
    `moving` reference without the reference's weights, cannot be resumed from."""
    complete = []
    for ckpt in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        try:
            read_json(ckpt / "trainer_state.json")
            complete.append(ckpt)
        except (OSError, ValueError):
            shutil.rmtree(ckpt)
    full = [c for c in complete if (c / "optimizer.pt").is_file() and (not moving or (c / REFERENCE_STATE).is_file())]
    if not full:
        shutil.rmtree(output_dir, ignore_errors=True)
        return None
    return max(full, key=lambda c: int(c.name.rsplit("-", 1)[1]))


@dataclass
class Trained:
    """What training returns: the trained model (a peft model holding the adapter under `train.lora`; None when
    several processes trained it, whose weights were sharded: it is read back from the saved policy), TRL's log
    history, the checkpoint step kept with `eval_steps` (None: the final policy), the checkpoint step it resumed
    from (None: it started at step 0) and `stopped_at`: the optimizer step at which a Trainer callback (a tune-beta
    trial's pruner) stopped training before its planned end (None: it ran all its steps), for the caller to mark the
    run "stopped"; a diverged run raises Diverged instead."""

    model: PreTrainedModel | None
    history: list[dict]
    checkpoint_step: int | None
    resumed_from: int | None
    stopped_at: int | None = None


def lora_config(lora: LoraSettings | None) -> LoraConfig | None:
    """peft's LoRA settings, handed to the DPOTrainer, which wraps the policy itself: a model wrapped beforehand would
    make TRL copy the adapter as a "ref" adapter, and with dporef's cached reference columns no reference pass (copied
    or adapter-disabled) ever runs."""
    if lora is None:
        return None
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _restore_adapter_dropout(model: torch.nn.Module, p: float) -> None:
    """TRL's `disable_dropout` zeroes every nn.Dropout, the adapters' too: give them back `train.lora.dropout`."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." in f"{name}.":
            module.p = p


def _whole_run_train_loss(history: list[dict], resumed_from: int) -> None:
    """Make the final `train_loss` of a resumed run the mean over all its steps, as an uninterrupted run's is: the
    Trainer averages only the steps since the resume, and the steps before it are all in logged losses (the
    checkpoint step is a logging step, PeriodicCheckpoints)."""
    end = next((h for h in history if "train_loss" in h), None)
    if end is None or not end["step"]:
        return
    before, last = 0.0, 0
    for h in history:
        if "loss" in h and h["step"] <= resumed_from:
            before, last = before + h["loss"] * (h["step"] - last), h["step"]
    end["train_loss"] = (before + end["train_loss"] * (end["step"] - resumed_from)) / end["step"]


def save_policy(trainer: DPOTrainer, policy_dir: Path) -> None:
    """Save the trained policy (under LoRA the adapter, its adapter_config.json naming the base) with its tokenizer.
    Every process calls it: under ZeRO-3 or FSDP the full weights are gathered from all of them; the main process
    writes them (atomically), the others nothing."""
    with atomic_dir(policy_dir) if ranks.is_main() else nullcontext(policy_dir) as out:
        trainer.save_model(str(out))
        if ranks.is_main():
            (Path(out) / "training_args.bin").unlink(missing_ok=True)  # the Trainer's pickled arguments: not a model


def _configure(trainer: DPOTrainer, cfg: TrainConfig, moving: MovingReference | None, tracking: Tracking | None):
    """What the Trainer's constructor cannot be told: no printed metrics (they go to metrics.json, progress to the
    rich bar), the moving reference saved with each checkpoint, the adapters' dropout, the trackers' run setup."""
    trainer.remove_callback(PrinterCallback)
    if moving and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):  # sharded: a rerun starts over
        trainer.add_callback(MovingReferenceCheckpoints(trainer.ref_model))
    if cfg.lora is not None and cfg.lora.dropout:
        _restore_adapter_dropout(trainer.model, cfg.lora.dropout)
    if tracking:
        tracking.attach(trainer)


def train_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Dataset,
    validation: Dataset,
    cfg: TrainConfig,
    run: RunSpec,
    output_dir: Path,
    policy_dir: Path,
    moving: MovingReference | None = None,
    callbacks: list[TrainerCallback] = (),
    tracking: Tracking | None = None,
) -> Trained:
    """Train `model` on `train` (tokenized pairs with reference columns), from the last checkpoint of an interrupted
    attempt in `output_dir` when there is one, and save it in `policy_dir`; with `cfg.eval_steps`, the weights kept
    (lowest validation loss) are the ones saved and returned (`model` itself, or under `cfg.lora` a peft model around
    it); `moving`: the run's TR-DPO reference, in memory while it trains; `callbacks`: more of the Trainer's (a
    tune-beta trial's pruner; the step at which one stopped training is `Trained.stopped_at`); `tracking`: the
    experiment trackers that receive its metrics (`train.report_to`). Raises Diverged at the first non-finite loss
    or gradient norm."""
    params = sum(p.numel() for p in model.parameters())
    resume = ranks.agree(resume_point(output_dir, moving is not None) if ranks.is_main() else None)  # main cleans up
    resumed_from = int(resume.name.rsplit("-", 1)[1]) if resume else None
    if resume and moving:
        moving.restore(resume)
    guard = DivergenceGuard()
    callbacks = [RichProgress(f"training {run.run_id}"), guard, *callbacks, *(moving.callbacks() if moving else [])]
    callbacks += [PeriodicCheckpoints(cfg.checkpoint_steps)] if cfg.checkpoint_steps else []
    trainer = CachedReferenceDPOTrainer(
        model=model,
        args=dpo_config(cfg, run, output_dir, params, moving, tracking),
        ref_model=moving.model if moving else None,
        train_dataset=train,
        eval_dataset=validation if cfg.eval_steps else None,
        processing_class=tokenizer,
        objective=run.loss or run.objective,
        gamma=run.gamma,
        params=run.params,
        guard=guard,
        peft_config=lora_config(cfg.lora),
        callbacks=callbacks,
    )
    _configure(trainer, cfg, moving, tracking)
    if resume:
        console.print(f"resuming {run.run_id} from its checkpoint at step {resumed_from}")
    with tracking.environment() if tracking else nullcontext():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    history = [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h or "eval_loss" in h]
    if guard.found:
        raise Diverged(*guard.found, history)
    stopped_at = trainer.state.global_step if trainer.state.global_step < trainer.state.max_steps else None
    if resumed_from:
        _whole_run_train_loss(history, resumed_from)
    save_policy(trainer, policy_dir)
    best = trainer.state.best_model_checkpoint
    model = trainer.model
    if ranks.size() > 1:  # sharded or wrapped across the processes: free it all; the policy is read back from disk
        trainer.accelerator.free_memory()
        model = None
    return Trained(model, history, int(best.rsplit("-", 1)[1]) if best else None, resumed_from, stopped_at)
