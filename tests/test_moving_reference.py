"""Moving references (TR-DPO, `kind: moving`): the reference follows the policy through TRL's sync_ref_model.

Checked against what needs no dporef code to know: with alpha = 1 and tau = 1 every step's reference is the policy
of the step before, so every step's DPO loss is ln 2 with zero margins (the policy still moves: the gradient at a
zero margin is not zero); with tau longer than the run the reference never moves, so training equals training on a
fixed reference's cached scores; with a soft update, dporef's trainer and TRL's own DPOTrainer with sync_ref_model
log the same loss at every step."""

import math
import shutil

import pytest
import torch
from datasets import DatasetDict
from transformers import TrainerCallback

from dpo_ref.config import RunSpec, TrainConfig, load_experiment
from dpo_ref.data.tokenize import tokenize_pairs
from dpo_ref.errors import UserError
from dpo_ref.expdir import ExperimentDir
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.moving import REFERENCE_STATE, MovingReference
from dpo_ref.plan import plan_text
from dpo_ref.reference import ReferenceEngine
from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config, train_policy

pytestmark = pytest.mark.slow

RUN = RunSpec(run_id="dpo-tr-b0.5-s0", objective="dpo", reference="tr", beta=0.5, seed=0)
STEPS = 6


def settings(**kw) -> TrainConfig:
    # one micro-batch per step, a learning rate that moves the tiny policy visibly in a few steps
    return TrainConfig(learning_rate=3e-3, batch_size=4, logging_steps=1, precision="fp32", max_steps=STEPS, **kw)


@pytest.fixture(scope="module")
def pairs(tiny_world, tmp_path_factory):
    """32 training pairs tokenized for the SFT policy, with the SFT policy's own reference columns."""
    sft = resolve("world:sft", tiny_world)
    tok = load_tokenizer(sft)
    text = DatasetDict(train=tiny_world.preference_data()["train"].select(range(32)))
    tokenized, _ = tokenize_pairs(text, tok, 1024)
    engine = ReferenceEngine(cache_dir=tmp_path_factory.mktemp("ref"))
    scores = engine.pair_scores(sft, tokenized, tok, 1024, 64)["train"]
    train = tokenized["train"].add_column("ref_chosen_logps", scores["chosen"].tolist())
    return sft, tok, text["train"], train.add_column("ref_rejected_logps", scores["rejected"].tolist())


class ReferenceIsPolicy(TrainerCallback):
    """Records, at the start of every step, whether the reference's weights equal the policy's."""

    def __init__(self, reference):
        self.reference, self.equal = reference, []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        pairs = zip(self.reference.parameters(), model.parameters(), strict=True)
        self.equal.append(all(torch.equal(r, p) for r, p in pairs))


def trainer(pairs, tmp_path, cfg: TrainConfig, moving: MovingReference | None):
    sft, tok, _, train = pairs
    args = dpo_config(cfg, RUN, tmp_path, 1, moving)
    ref = moving.model if moving else None
    return CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32), ref_model=ref, args=args, train_dataset=train, processing_class=tok
    )


def logged(t) -> list[tuple[float, float]]:
    return [(h["loss"], h["rewards/margins"]) for h in t.state.log_history if "loss" in h]


def test_hard_update_every_step_makes_each_reference_the_previous_policy(pairs, tmp_path):
    sft = pairs[0]
    moving = MovingReference(load_model(sft, torch.float32), alpha=1.0, sync_steps=1)
    t = trainer(pairs, tmp_path, settings(), moving)
    watch = ReferenceIsPolicy(t.ref_model)
    t.add_callback(watch)
    t.train()
    assert watch.equal == [True] * STEPS
    assert [loss for loss, _ in logged(t)] == pytest.approx([math.log(2)] * STEPS, abs=1e-6)
    assert [margin for _, margin in logged(t)] == pytest.approx([0.0] * STEPS, abs=1e-6)
    start = load_model(sft, torch.float32)
    moved = max(float((a - b).abs().max()) for a, b in zip(t.model.parameters(), start.parameters(), strict=True))
    assert moved > 1e-3  # the policy trained all the same


def hand_dpo_loss(model, pairs_ds, beta: float) -> float:
    """Mean DPO loss of `model` against the cached reference columns, from a plain forward pass per response."""

    def logp(prompt, completion):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double().log_softmax(-1)
        token_logps = logits.gather(1, ids[0, 1:, None])[:, 0]
        return float(token_logps[len(prompt) - 1 :].sum())

    losses = []
    for row in pairs_ds:
        margin = logp(row["prompt_ids"], row["chosen_ids"]) - row["ref_chosen_logps"]
        margin -= logp(row["prompt_ids"], row["rejected_ids"]) - row["ref_rejected_logps"]
        losses.append(math.log1p(math.exp(-beta * margin)))
    return sum(losses) / len(losses)


def test_checkpoint_choice_measures_a_moving_run_against_its_starting_point(pairs, tmp_path):
    """Against the moving reference, a hard update every step would make every validation loss exactly ln 2 (the
    reference is the policy after each sync) and the lowest one meaningless; measured against the starting point's
    cached scores it is the DPO loss of the policy against the SFT model, computed here by hand."""
    sft, tok, _, train = pairs
    moving = MovingReference(load_model(sft, torch.float32), alpha=1.0, sync_steps=1)
    validation = train.select(range(8))
    t = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=moving.model,
        args=dpo_config(settings(eval_steps=3), RUN, tmp_path, 1, moving),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tok,
    )
    t.train()
    evals = [h["eval_loss"] for h in t.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and evals[-1] != pytest.approx(math.log(2), abs=1e-3)
    t.model.eval()
    assert evals[-1] == pytest.approx(hand_dpo_loss(t.model, validation, RUN.beta), rel=1e-4)


def test_a_reference_that_never_syncs_trains_as_the_fixed_one(pairs, tmp_path):
    sft = pairs[0]
    fixed = trainer(pairs, tmp_path / "fixed", settings(), None)
    moving = trainer(
        pairs, tmp_path / "moving", settings(), MovingReference(load_model(sft, torch.float32), 0.6, STEPS + 1)
    )
    for t in (fixed, moving):
        t.train()
    assert fixed.ref_model is None and moving.ref_model is not None  # the fixed run read the cached columns
    assert [x for step in logged(moving) for x in step] == pytest.approx(
        [x for step in logged(fixed) for x in step], rel=1e-5, abs=1e-6
    )
    weights = zip(moving.model.parameters(), fixed.model.parameters(), strict=True)
    assert max(float((a - b).abs().max()) for a, b in weights) < 1e-5


def test_soft_update_logs_the_losses_of_trls_own_tr_dpo(pairs, tmp_path):
    from trl import DPOConfig, DPOTrainer

    sft, tok, text, _ = pairs
    common = dict(max_steps=STEPS, logging_steps=1, seed=0, data_seed=0, use_cpu=True, report_to=[], bf16=False)
    stock = DPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=load_model(sft, torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=RUN.beta,
            learning_rate=3e-3,
            per_device_train_batch_size=4,
            warmup_steps=0.1,
            sync_ref_model=True,
            ref_model_mixup_alpha=0.6,
            ref_model_sync_steps=2,
            disable_tqdm=True,
            **common,
        ),
        train_dataset=text.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tok,
    )
    # on the pairs as TRL tokenized them (no reference columns: a moving reference is scored live)
    moving = MovingReference(load_model(sft, torch.float32), 0.6, 2)
    ours = CachedReferenceDPOTrainer(
        model=load_model(sft, torch.float32),
        ref_model=moving.model,
        args=dpo_config(settings(), RUN, tmp_path / "ours", 1, moving),
        train_dataset=stock.train_dataset,
        processing_class=tok,
    )
    for t in (stock, ours):
        t.train()
    theirs = [h["loss"] for h in stock.state.log_history if "loss" in h]
    assert len(theirs) == STEPS
    assert [loss for loss, _ in logged(ours)] == pytest.approx(theirs, rel=1e-5)
    assert theirs[-1] != pytest.approx(math.log(2), abs=1e-3)  # the reference moved away from the policy


def test_a_resumed_run_goes_on_from_the_reference_it_had(pairs, tmp_path):
    """6 steps with a checkpoint every 2 leave checkpoint-4 (the reference moved 4 times by then); a second attempt
    resumes from it and ends with the same weights, which it would not from the SFT reference."""
    sft, tok, _, train = pairs
    cfg = settings(checkpoint_steps=2)

    def attempt(out):
        moving = MovingReference(load_model(sft, torch.float32), 0.6, 1)
        return train_policy(
            load_model(sft, torch.float32), tok, train, None, cfg, RUN, out, tmp_path / "policy", moving
        )

    whole = attempt(tmp_path / "whole")
    assert (tmp_path / "whole" / "checkpoint-4" / REFERENCE_STATE).is_file()
    shutil.copytree(tmp_path / "whole", tmp_path / "again")
    resumed = attempt(tmp_path / "again")
    assert resumed.resumed_from == 4
    weights = zip(resumed.model.parameters(), whole.model.parameters(), strict=True)
    assert max(float((a - b).abs().max()) for a, b in weights) < 1e-6

    shutil.copytree(tmp_path / "whole", tmp_path / "no-reference")
    (tmp_path / "no-reference" / "checkpoint-4" / REFERENCE_STATE).unlink()
    assert attempt(tmp_path / "no-reference").resumed_from is None  # without the reference: started over


def experiment(tmp_path, text: str):
    path = tmp_path / "exp.yaml"
    path.write_text("name: tr\nobjectives: [{name: dpo, betas: [0.1]}]\n" + text)
    return load_experiment(path, [])


def test_moving_references_are_validated_and_named_in_the_plan(tmp_path):
    with pytest.raises(UserError, match="moving reference starts as the policy"):
        experiment(tmp_path, "references: [{name: tr, model: world:strong-same, kind: moving}]\n")
    with pytest.raises(UserError, match="not read by kind: fixed"):
        experiment(tmp_path, "references: [{name: ref, model: world:sft, alpha: 0.5}]\n")
    with pytest.raises(UserError, match="full fine-tuning"):
        experiment(tmp_path, "references: [{name: tr, model: world:sft, kind: moving}]\ntrain: {lora: {r: 4}}\n")
    exp = experiment(tmp_path, "references: [{name: tr, model: world:sft, kind: moving, alpha: 1, sync_steps: 64}]\n")
    from dpo_ref.config import expand

    text = plan_text(exp, expand(exp), ExperimentDir(tmp_path / "out"))
    assert "tr is moving (TR-DPO: ref <- 1 * policy + 0 * ref every 64 steps)" in text
    assert "second copy of the policy in memory" in text


def test_swap_reference_lists_a_moving_reference_beside_fixed_ones(tmp_path, run_study):
    refs = "references=[{name: sft, model: 'world:sft'}, {name: tr, model: 'world:sft', kind: moving, sync_steps: 2}]"
    sets = [refs, "objectives.0.betas=[0.1]", "train.max_steps=4", "eval.max_new_tokens=12"]
    summary, result = run_study("swap-reference", tmp_path, *sets, experiment="rq3_swap_reference")
    rows = {r["run_id"]: r for r in summary["rows"]}
    assert set(rows) == {"sft", "dpo-sft-b0.1-s0", "dpo-tr-b0.1-s0"}
    assert {r["status"] for r in rows.values()} == {"done"}
    # the moving reference's starting point is the SFT policy: scored once for both
    assert sum(summary["reference_scoring"].values()) == 1  # computed here, or served by the session's cache
    sims = summary["similarity"]["references"]
    assert sims["tr"]["sft_ref_kl_k3"] == sims["sft"]["sft_ref_kl_k3"] == pytest.approx(0.0, abs=1e-9)
    fixed, moving = (rows[f"dpo-{r}-b0.1-s0"] for r in ("sft", "tr"))
    assert fixed["win_rate"] != moving["win_rate"] or fixed["kl"] != moving["kl"]  # the reference moved: other runs
