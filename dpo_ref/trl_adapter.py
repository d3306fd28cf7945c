"""The one place dporef touches private names of another library (TRL 1.16, transformers 5).

dporef trains with TRL's `DPOTrainer` on pairs it has already tokenized and scored against their reference, in a
training order of its own, logging metrics of its own objectives. TRL and transformers offer no public hook for
four of those needs, so `DPOTrainerAdapter` overrides or reads their private names here, and nowhere else: the rest
of dporef (`train.CachedReferenceDPOTrainer`) uses only the adapter's public methods `train_sampler` and
`record_metric` and TRL's public API. Every private name is listed in `RELIES_ON`.

On a TRL (or transformers) upgrade:
1. run tests/test_trl_adapter.py: it fails, naming the entry, when a name in `RELIES_ON` disappears, changes its
   parameters, or is no longer used where the override expects it;
2. re-read each override below against the new source, even when the test passes: a private method may keep its
   signature and change its meaning (e.g. `_precompute_ref_logps` accepting precomputed columns would make the
   override unnecessary; `_prepare_dataset` learning to skip tokenized pairs likewise), and a public hook may have
   appeared that replaces one (then move the code out of this module);
3. check what train.py assumes of TRL's public behaviour: a forward with `fused_lm_head=True` returns per-token
   `log_probs` (TRL's `add_fused_lm_head`), and `compute_ref_log_probs(model, inputs)` scores a batch.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from trl import DPOTrainer
from trl.trainer import dpo_trainer

# Every private name of another library this module relies on; tests/test_trl_adapter.py checks each.
RELIES_ON = (
    "trl.trainer.dpo_trainer.DPOTrainer._prepare_dataset",
    "trl.trainer.dpo_trainer.DPOTrainer._precompute_ref_logps",
    "trl.trainer.dpo_trainer.DPOTrainer._metrics",
    "trl.trainer.dpo_trainer.create_model_from_path",
    "transformers.trainer.Trainer._get_train_sampler",
)


@contextmanager
def _no_model_from_path():
    """TRL 1.16 under FSDP builds a reference model from the policy's path even with `precompute_ref_log_probs`
    (DPOTrainer.__init__, "Reference model": to precompute with, freed after). dporef hands it the reference columns,
    so that model would only cost a policy's memory and load time: while the trainer is built, the reference model
    it creates is None. (The policy is passed built, so TRL creates no other model from a path.)"""
    # TRL 1.16 private: `trl.trainer.dpo_trainer.create_model_from_path`, the module global DPOTrainer.__init__ calls
    # to build that reference. No public setting skips it: `ref_model=None` asks for it, and a model passed as
    # `ref_model` is the very memory this avoids.
    build = dpo_trainer.create_model_from_path
    dpo_trainer.create_model_from_path = lambda *args, **kwargs: None
    try:
        yield
    finally:
        dpo_trainer.create_model_from_path = build


class DPOTrainerAdapter(DPOTrainer):
    """TRL's DPOTrainer for pairs that arrive tokenized (`prompt_ids`, `chosen_ids`, `rejected_ids`) with their
    reference columns (`ref_chosen_logps`, `ref_rejected_logps`): TRL neither re-tokenizes nor rescores them, and
    builds no reference model from the policy's path. Subclasses choose the training order by overriding
    `train_sampler` and log per-step metrics with `record_metric`."""

    def __init__(self, *args, **kwargs):
        with _no_model_from_path():
            super().__init__(*args, **kwargs)

    def train_sampler(self, dataset) -> torch.utils.data.Sampler | None:
        """The sampler that orders `dataset` (the training set) for training; None: the Trainer's own order."""
        return None

    def record_metric(self, mode: str, name: str, value: float, latest: bool = False) -> None:
        """Record one step's `value` of metric `name` in `mode` ("train" or "eval"): TRL's `log` writes the mean of
        the values recorded since the last log into the log history (under "eval_" + `name` in evaluation); with
        `latest`, the last value recorded instead (a running count)."""
        # TRL 1.16 private: `DPOTrainer._metrics[mode]`, a dict of lists that DPOTrainer.log averages and clears. It
        # is the only way into TRL's per-step logs: the public `log` writes a log entry at once rather than
        # accumulating values over the steps between two logs.
        if latest:
            self._metrics[mode][name] = [value]
        else:
            self._metrics[mode][name].append(value)

    def _get_train_sampler(self, train_dataset=None):
        # transformers 5 private: `Trainer._get_train_sampler(train_dataset)`, what `get_train_dataloader` orders the
        # training set by. The public `get_train_dataloader` could only be replaced by rebuilding the loader through
        # the private `Trainer._get_dataloader`; `train_sampling_strategy` offers no per-step length sorting.
        sampler = self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # TRL 1.16 private: `DPOTrainer._prepare_dataset`, called by __init__ (and `evaluate`) on every dataset. It
        # would re-tokenize; dporef's prepare stage already rendered the pairs with the template. No public setting
        # skips it (only vision datasets do).
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL 1.16 private: `DPOTrainer._precompute_ref_logps`, called by __init__ (and `evaluate`) with
        # `precompute_ref_log_probs`. It would reject dporef's precomputed ref_*_logps columns as duplicates and
        # rescore them; without `precompute_ref_log_probs` TRL keeps a reference model instead.
        return dataset
