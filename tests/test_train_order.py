"""dporef's training order: accelerate's random order with each optimizer step's pairs sorted by length. Each step
holds the pairs accelerate's own sampler puts in it (so the gradients are TRL's, checked against stock DPOTrainer
step by step), with less padding in its micro-batches."""

import random

import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler

from dpo_ref.train_order import LengthSortedSteps


def chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("n, step, seed", [(48, 8, 0), (50, 16, 3), (7, 4, 1)])
def test_each_step_holds_the_pairs_of_accelerates_random_order_longest_first(n, step, seed):
    lengths = [random.Random(i).randint(10, 200) for i in range(n)]
    ours = LengthSortedSteps(lengths, step, seed)
    theirs = SeedableRandomSampler(range(n), data_seed=seed)
    for epoch in (0, 1):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        mine, reference = chunks(list(ours), step), chunks(list(theirs), step)
        assert [sorted(c) for c in mine] == [sorted(c) for c in reference]
        assert all([lengths[i] for i in c] == sorted((lengths[i] for i in c), reverse=True) for c in mine)


def padded_tokens(order: list[int], lengths: list[int], micro: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in chunks(order, micro))


def test_sorting_within_steps_pads_less():
    lengths = [random.Random(i).randint(110, 230) for i in range(480)]
    random_order = list(SeedableRandomSampler(range(480), data_seed=0))
    sorted_order = list(LengthSortedSteps(lengths, 8, 0))
    shares = [sum(lengths) / padded_tokens(o, lengths, 2) for o in (random_order, sorted_order)]
    print(f"\nreal tokens / padded tokens: random {shares[0]:.3f}, sorted within steps {shares[1]:.3f}")
    assert shares[1] > shares[0] + 0.03


@pytest.mark.slow
def test_training_matches_stock_trl_step_by_step_with_micro_batches(tiny_world, tmp_path):
    """4 micro-batches of 2 pairs per step: dporef's trainer on its cached reference columns against TRL's own
    DPOTrainer with a reference model, in fp32, same seeds: the same loss and gradient norm at every step."""
    from datasets import DatasetDict
    from trl import DPOConfig, DPOTrainer

    from dpo_ref.config import RunSpec, TrainConfig
    from dpo_ref.models import load_model, load_tokenizer, resolve
    from dpo_ref.reference import ReferenceEngine
    from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config

    sft = resolve("world:sft", tiny_world)
    tok = load_tokenizer(sft)
    text = tiny_world.preference_data()["train"].select(range(32)).select_columns(["prompt", "chosen", "rejected"])
    args = dict(max_steps=4, logging_steps=1, seed=0, data_seed=0, use_cpu=True, report_to=[], disable_tqdm=True)
    stock = DPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=load_model(sft, torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=0.1,
            learning_rate=1e-3,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=0.1,
            bf16=False,
            **args,
        ),
        train_dataset=text,
        processing_class=tok,
    )
    pairs = stock.train_dataset.remove_columns([c for c in stock.train_dataset.column_names if "ref_" in c])
    scores = ReferenceEngine(cache_dir=tmp_path / "ref").pair_scores(sft, DatasetDict(train=pairs), tok, 1024, 64)
    pairs = pairs.add_column("ref_chosen_logps", list(scores["train"]["chosen"]))
    pairs = pairs.add_column("ref_rejected_logps", list(scores["train"]["rejected"]))
    cfg = TrainConfig(learning_rate=1e-3, max_steps=4, batch_size=2, grad_accum=4, logging_steps=1, precision="fp32")
    run = RunSpec(run_id="dpo", objective="dpo", reference="sft", beta=0.1, seed=0)
    settings = dpo_config(cfg, run, tmp_path / "ours", 1)
    ours = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32), args=settings, train_dataset=pairs, processing_class=tok
    )
    assert isinstance(ours.get_train_dataloader().batch_sampler.sampler, LengthSortedSteps)
    logged = []
    for trainer in (stock, ours):
        trainer.train()
        logged.append([(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h])
    assert len(logged[0]) == len(logged[1]) == 4
    for (loss_trl, norm_trl), (loss, norm) in zip(*logged):
        assert loss == pytest.approx(loss_trl, rel=1e-5) and norm == pytest.approx(norm_trl, rel=1e-4)
    assert logged[1][-1][0] != pytest.approx(logged[1][0][0], rel=1e-3)  # it trained: the loss moved
    assert torch.isfinite(torch.tensor(logged[1])).all()
