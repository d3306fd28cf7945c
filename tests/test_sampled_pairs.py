"""`data: instructions`: pairs sampled from the policy and labelled by the instruction checks, built once and cached,
then a sweep on them end to end. The policy is a tiny Llama built from a config with an English byte-level
tokenizer (`models.write_config_model`, which bench/config_model_sweep.py uses too), so sampling takes seconds."""

import json

import pytest
import torch

from dpo_ref.config import InstructionsConfig
from dpo_ref.data import instructions
from dpo_ref.data.sampled_pairs import build_instruction_pairs
from dpo_ref.generation import generate
from dpo_ref.models import load_tokenizer, resolve, write_config_model

CFG = InstructionsConfig(n_train_prompts=24, n_validation_prompts=8, n_eval_prompts=6, max_new_tokens=12)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("init-model")
    texts = instructions.make_prompts(64, seed=5) + ["hello, this is a simple answer", "- one\n- two"]
    write_config_model(path, texts, hidden=64, layers=2, heads=4, mlp=128)
    return path


def test_pairs_are_best_and_worst_by_the_checks_and_built_once(init_model):
    policy = resolve(f"init:{init_model}")
    tok = load_tokenizer(policy)
    pairs, prompts, stats = build_instruction_pairs(CFG, policy, tok, batch_size=16, precision="fp32")
    for split, n in (("train", CFG.n_train_prompts), ("validation", CFG.n_validation_prompts)):
        rows = pairs[split]
        assert len(rows) + stats["prompts_all_tied"][split] == n  # every prompt is a pair or counted as tied
        for r in rows:
            assert r["chosen_score"] == instructions.score(r["prompt"], r["chosen"], r["chosen_ended"])
            assert r["rejected_score"] == instructions.score(r["prompt"], r["rejected"], r["rejected_ended"])
            assert r["chosen_score"] > r["rejected_score"]
    assert len(pairs["train"]) > 0
    assert len(prompts) == CFG.n_eval_prompts
    assert not set(prompts) & (set(pairs["train"]["prompt"]) | set(pairs["validation"]["prompt"]))
    # built once: a second call reads the cache (the recorded build time is the first build's)
    again = build_instruction_pairs(CFG, policy, tok, batch_size=16, precision="fp32")
    assert again[2] == stats and again[0]["train"]["chosen"] == pairs["train"]["chosen"]


def test_extra_training_prompts_leave_the_held_out_prompts_as_they_were(init_model):
    """A reference trained on more pairs must be judged on the prompts of the runs against it and never have trained
    on them: the extra training prompts come after the held-out ones in the seed's order of prompts."""
    policy = resolve(f"init:{init_model}")
    tok = load_tokenizer(policy)
    n_train, n_val, n_eval, extra = CFG.n_train_prompts, CFG.n_validation_prompts, CFG.n_eval_prompts, 48
    more = CFG.model_copy(update={"extra_train_prompts": extra})
    pairs, prompts, stats = build_instruction_pairs(more, policy, tok, batch_size=16, precision="fp32")
    seed_order = instructions.make_prompts(n_train + n_val + n_eval + extra, CFG.seed)
    assert prompts == seed_order[n_train + n_val : n_train + n_val + n_eval]
    assert prompts == build_instruction_pairs(CFG, policy, tok, batch_size=16, precision="fp32")[1]  # as without
    assert set(pairs["validation"]["prompt"]) <= set(seed_order[n_train : n_train + n_val])
    train = set(pairs["train"]["prompt"])
    assert train <= set(seed_order[:n_train] + seed_order[n_train + n_val + n_eval :])
    assert train & set(seed_order[n_train + n_val + n_eval :])  # some pairs come from the extra prompts
    assert stats["splits"]["train"]["prompts"] == n_train + extra
    assert stats["splits"]["validation"]["prompts"] == n_val


def test_pairs_are_sampled_in_the_policy_regime_which_keys_the_cache(init_model, monkeypatch):
    """Under bf16 the small policy samples with fp32 weights under bf16 autocast, as it trains and is evaluated; the
    regime is part of the cache key, so pairs sampled under fp32 are not reused under bf16."""
    from dpo_ref.data import sampled_pairs
    from dpo_ref.store import cache_root

    seen = []

    def recording(model, *args, **kwargs):
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen.append((next(model.parameters()).dtype, autocast))
        return generate(model, *args, **kwargs)

    monkeypatch.setattr(sampled_pairs, "generate", recording)
    policy = resolve(f"init:{init_model}")
    tok = load_tokenizer(policy)
    cfg = CFG.model_copy(update={"n_train_prompts": 4, "n_validation_prompts": 2, "n_eval_prompts": 1})
    before = set((cache_root() / "pairs").glob("instructions-*"))
    build_instruction_pairs(cfg, policy, tok, batch_size=16, precision="fp32")
    build_instruction_pairs(cfg, policy, tok, batch_size=16, precision="bf16")
    assert seen == [(torch.float32, None), (torch.float32, torch.bfloat16)]  # fp32 weights, then under autocast
    assert len(set((cache_root() / "pairs").glob("instructions-*")) - before) == 2  # one entry per regime


@pytest.mark.slow
def test_sweep_on_instruction_pairs(run_study, init_model, tmp_path):
    spec = f"init:{init_model}"
    results, _ = run_study(
        "sweep-beta",
        tmp_path,
        f"policy={spec}",
        f"references.0.model={spec}",
        "data=instructions",
        "instructions.n_train_prompts=24",
        "instructions.n_validation_prompts=8",
        "instructions.n_eval_prompts=6",
        "instructions.max_new_tokens=12",
        "objectives.0.betas=[0.1]",
        "train.max_steps=2",
        "eval.max_new_tokens=12",
        experiment="rq1_sweep_beta",
    )
    assert [r["run_id"] for r in results["rows"]] == ["sft", "dpo-sft-b0.1-s0"]
    assert all(r["status"] in ("done", "degenerate") for r in results["rows"])
    exp = tmp_path / "rq1_sweep_beta"
    assert "instruction checks" in (exp / "results.md").read_text()
    # the experiment says on what pairs it trained: the build's statistics, kept in plan.json
    sampled = json.loads((exp / "prepared" / "plan.json").read_text())["sampled_pairs"]
    for split, n in (("train", 24), ("validation", 8)):
        stats = sampled["splits"][split]
        assert stats["prompts"] == n == stats["kept"] + sum(stats["skipped"].values())
    assert sampled["pairing"] == "best_worst"  # the default, with no pairing set
    base = [json.loads(x) for x in (exp / "baseline" / "test.jsonl").read_text().splitlines()]
    assert [b["reward"] for b in base] == [instructions.score(b["prompt"], b["response"], b["ended"]) for b in base]
    for row in results["rows"]:
        gens = [json.loads(x) for x in (exp / row["run_id"] / "generations.jsonl").read_text().splitlines()]
        assert [g["prompt"] for g in gens] == [b["prompt"] for b in base]
        assert [g["reward"] for g in gens] == [instructions.score(g["prompt"], g["response"], g["ended"]) for g in gens]
        # the win rate by hand from the two files: 1 win, 0.5 tie, 0 loss against the baseline's sample
        wins = [
            1.0 if g["reward"] > b["reward"] else 0.5 if g["reward"] == b["reward"] else 0.0 for g, b in zip(gens, base)
        ]
        assert row["win_rate"] == pytest.approx(sum(wins) / len(wins), abs=1e-12), row["run_id"]
        assert row["eos_rate"] == sum(g["ended"] for g in gens) / len(gens)
