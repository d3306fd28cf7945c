"""What a run's history holds: every per-step metric stock TRL's DPOTrainer logs, under its name and with its value,
although dporef computes the loss from cached reference columns; and `train.report_to: [tensorboard]` writes event
files whose scalars are that history."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_history_has_stock_dpo_trainers_metrics_with_its_values_at_step_1(scored_pairs, tmp_path):
    """One micro-batch per step (so both trainers see the same batches in the Trainer's random order), fp32, the
    same seed: TRL's DPOTrainer with a reference model against dporef's trainer on its cached reference columns."""
    from trl import DPOConfig, DPOTrainer

    from dpo_ref.config import RunSpec, TrainConfig
    from dpo_ref.models import load_model
    from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config

    sft, ref, tok, text, pairs = scored_pairs
    stock = DPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=load_model(ref, torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=0.1,
            learning_rate=1e-3,
            per_device_train_batch_size=8,
            max_steps=2,
            logging_steps=1,
            seed=0,
            data_seed=0,
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            bf16=False,
            lr_scheduler_type="cosine",  # dporef's defaults (train.scheduler, train.warmup_ratio)
            warmup_steps=0.1,
        ),
        train_dataset=text,
        processing_class=tok,
    )
    cfg = TrainConfig(learning_rate=1e-3, max_steps=2, batch_size=8, logging_steps=1, precision="fp32")
    run = RunSpec(run_id="dpo", objective="dpo", reference="strong", beta=0.1, seed=0)
    ours = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32),
        args=dpo_config(cfg, run, tmp_path / "ours", 1),
        train_dataset=pairs,
        processing_class=tok,
    )
    first = []
    for trainer in (stock, ours):
        trainer.train()
        first.append(next(h for h in trainer.state.log_history if h.get("step") == 1 and "loss" in h))
    theirs, mine = first
    assert set(theirs) <= set(mine), f"missing from dporef's history: {sorted(set(theirs) - set(mine))}"
    assert {"entropy", "num_tokens", "logits/chosen", "mean_token_accuracy", "rewards/margins"} <= set(theirs)
    for key, value in theirs.items():
        assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_tensorboard_events_hold_the_runs_history(run_study, tmp_path):
    """The default sweep (cut short) with `--set train.report_to=[tensorboard]`: the event files under the
    experiment's tracking/<run_id> hold, at every logged step, the scalars of its metrics.json history, and the run's
    resolved config as text; tensorboard's own reader reads them back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = ["objectives.0.betas=[0.1]", "train.max_steps=4", "train.logging_steps=2", "eval.max_new_tokens=8"]
    run_study("sweep-beta", tmp_path, *sets, "train.report_to=[tensorboard]", experiment="rq1_sweep_beta")
    exp = tmp_path / "rq1_sweep_beta"
    (run_dir,) = (exp / "tracking").iterdir()
    history = json.loads((exp / run_dir.name / "metrics.json").read_text())["history"]
    logged = [h for h in history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 4]
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for name in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm", "learning_rate"):
        scalars = {e.step: e.value for e in events.Scalars(f"train/{name}")}
        assert scalars == pytest.approx({h["step"]: h[name] for h in logged}, rel=1e-6), name
    config = events.Tensors("dporef/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"run_id: {run_dir.name}" in config and "- tensorboard" in config
