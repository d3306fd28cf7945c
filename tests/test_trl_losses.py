"""Every TRL 1.16 DPO loss type, mix and option dporef offers, run from an experiment's objective grid on dporef's
cached reference columns, against stock TRL's DPOTrainer computing its own reference log-probs with a reference model
(settings written out here by hand, as a TRL script would): the same loss, rewards and log-probs at step 1."""

import pytest
import torch

pytestmark = pytest.mark.slow

# (objective grid as in a YAML file, the DPOConfig settings a TRL user would write for the same loss)
CASES = [
    *(({"name": t}, {"loss_type": [t]}) for t in ("sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard")),
    *(({"name": t}, {"loss_type": [t]}) for t in ("aot", "aot_unpaired", "apo_zero", "apo_down", "sigmoid_norm")),
    ({"name": "discopop", "discopop_tau": 0.1}, {"loss_type": ["discopop"], "discopop_tau": 0.1}),
    ({"name": "sft_loss"}, {"loss_type": ["sft"]}),
    ({"name": "robust", "label_smoothing": 0.1}, {"loss_type": ["robust"], "label_smoothing": 0.1}),
    ({"name": "exo_pair", "label_smoothing": 1e-3}, {"loss_type": ["exo_pair"], "label_smoothing": 1e-3}),
    ({"name": "aot", "label": "aot-s", "label_smoothing": 0.2}, {"loss_type": ["aot"], "label_smoothing": 0.2}),
    (
        {"name": "sigmoid+bco_pair+sft_loss", "label": "mpo", "loss_weights": [0.8, 0.2, 1.0]},
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    ),
    ({"name": "sigmoid", "f_divergence": "forward_kl"}, {"f_divergence_type": "forward_kl"}),
    ({"name": "sigmoid", "f_divergence": "js_divergence"}, {"f_divergence_type": "js_divergence"}),
    (
        {"name": "hinge", "f_divergence": "alpha_divergence", "f_alpha": 0.3},
        {"loss_type": ["hinge"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
    ),
    ({"name": "sigmoid", "use_weighting": True}, {"use_weighting": True}),
]


def first_log(trainer) -> dict:
    trainer.train()
    return next(h for h in trainer.state.log_history if h.get("step") == 1 and "loss" in h)


@pytest.mark.parametrize("grid, trl_settings", CASES, ids=[g.get("label", g["name"]) + str(i) for i, (g, _) in
                                                           enumerate(CASES)])  # fmt: skip
def test_trl_loss_from_the_grid_equals_stock_trl(scored_pairs, tmp_path, grid, trl_settings):
    from trl import DPOConfig, DPOTrainer

    from dpo_ref.config import ObjectiveGrid, RunSpec, TrainConfig
    from dpo_ref.models import load_model
    from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config

    sft, ref, tok, text, cached = scored_pairs
    beta, common = 0.3, dict(max_steps=1, logging_steps=1, seed=0, data_seed=0, use_cpu=True, disable_tqdm=True)
    stock = DPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=load_model(ref, torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=beta,
            per_device_train_batch_size=8,
            report_to=[],
            bf16=False,
            **common,
            **trl_settings,
        ),
        train_dataset=text,
        processing_class=tok,
    )
    objective = ObjectiveGrid(betas=[beta], **grid)
    run = RunSpec(
        run_id="r", objective=objective.label or objective.name, reference="sft", beta=beta, seed=0,
        loss=objective.name, trl=objective.trl_settings(),
    )  # fmt: skip
    cfg = TrainConfig(max_steps=1, batch_size=8, logging_steps=1, precision="fp32")
    ours = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32),
        args=dpo_config(cfg, run, tmp_path / "ours", 1),
        train_dataset=cached,
        processing_class=tok,
        objective=run.loss,
    )
    theirs, mine = first_log(stock), first_log(ours)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key
    assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
