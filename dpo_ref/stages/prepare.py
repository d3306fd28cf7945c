"""Stage 1, prepare: everything the runs of an experiment share, computed once and written under the experiment
directory, so that any run can then execute in any process (`dporef run-one`), on any GPU or cluster node.

    <exp_dir>/prepared/plan.json     the resolved models (location, fingerprint), what tokenization dropped, scoring
                                     counts, and the content key the whole directory was built for
    <exp_dir>/prepared/pairs/        the tokenized pairs (datasets.save_to_disk) with one pair of columns per
                                     reference scoring pass (`ref:<name>:chosen` ..., `p_lm:chosen` ...)
    <exp_dir>/baseline/              the SFT baseline's samples on the test and validation prompts, judged
    <exp_dir>/similarity.json        how alike each reference is to the policy (swap-reference)

Idempotent: when plan.json holds the same content key (models' fingerprints, data, settings), nothing is redone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial

import numpy as np

from .. import data
from ..cache import intact_dir
from ..config import Experiment, expand
from ..data.tokenize import prompt_key, tokenize_pairs, unique_prompts
from ..evaluation.evaluate import PromptSet, sampling, win_rate
from ..evaluation.judges import Judge
from ..evaluation.metrics import kl_estimates
from ..expdir import (
    BASELINES,
    ExperimentDir,
    PreparedDir,
    baseline_intact,
    columns,
    generation_rows,
    is_plan,
    make_judge,
    read_baseline,
    write_baseline,
)
from ..generation import generate
from ..generation_vllm import engine_sampler
from ..logprobs import sequence_logps
from ..models import ModelRef, load_tokenizer
from ..plan import STUDIES, scoring_needs
from ..precision import regime_for
from ..reference import ReferenceEngine, ReferenceScorer, similarity
from ..store import atomic_dir, atomic_write_json, check_file, clean_stale, content_hash, locked
from ..ui import console
from ..validate import Models, check_pairs, resolve_models

PREPARE_VERSION = "4"  # bump when what prepare writes changes, so old directories are rebuilt (4: sampled_pairs)


def prepare_key(exp: Experiment, models: Models, study: str) -> str:
    """Content key of everything prepare writes: a change in any part rebuilds the directory."""
    return content_hash(
        [
            PREPARE_VERSION,
            models.as_dict(),
            exp.world.model_dump() if models.world else None,
            *data.source(exp).hash_parts(exp),
            exp.judge.model_dump(),
            exp.train.max_length,
            regime_for(models.policy, exp.train.precision).key,  # auto: fp32 on CPU, bf16 on GPU
            exp.eval.model_dump(),
            scoring_needs(exp, expand(exp)),
            STUDIES[study].similarity,
        ]
    )


def baseline(exp: Experiment, exp_dir: ExperimentDir, name: str, prompts: list, policy: ModelRef, judge: Judge) -> None:
    """The SFT model's samples (baseline seed) on `prompts`, judged once per experiment, judge and config."""
    regime = regime_for(policy, exp.train.precision)
    key = content_hash([policy.fingerprint, regime.key, exp.eval.model_dump(), judge.key, prompts])
    if baseline_intact(exp_dir, name, key):
        return
    seed, tokenizer = exp.eval.baseline_seed, load_tokenizer(policy)
    sample = engine_sampler(exp.eval.engine, policy.location, tokenizer, regime.bf16_weights)
    model = regime.load(policy) if sample is None else None
    with regime.autocast():
        gens = (sample or partial(generate, model, tokenizer))(
            prompts, sampling(exp.eval), seed, desc=f"sampling SFT ({name})"
        )
    if sample is not None:
        sample.close()
    del model
    rewards = judge.rewards(gens.prompts, gens.responses, gens.ended).tolist()
    write_baseline(exp_dir, name, generation_rows(gens, rewards), {"key": key, "policy": exp.policy, "seed": seed})


def _print_counts(split: str, report, engine: ReferenceEngine, dropped: int) -> None:
    console.print(
        f"pairs ({split}): {report.kept[split] - dropped} kept, {report.truncated[split]} with a response cut to "
        f"max_length, {report.dropped_prompt_too_long[split]} dropped (prompt fills max_length), "
        f"{report.unfinished[split]} responses that never ended (scored without end-of-turn)"
    )
    for name, r in engine.reports.items():
        console.print(
            f"  reference {name}: scores the policy's kept text; {r.beyond_max_length[split]} responses longer than "
            f"max_length in its tokens (scored whole), {r.over_context[split]} pairs dropped (longer than its context)"
        )


def _tokenized_with_references(exp: Experiment, models: Models, pairs, engine: ReferenceEngine, tokenizer):
    """The policy's tokenized pairs with one pair of columns per needed scoring pass; pairs some reference cannot
    score (longer than its context) are dropped and counted."""
    tokenized, report = tokenize_pairs(pairs, tokenizer, exp.train.max_length)
    for name, _, unconditional in scoring_needs(exp, expand(exp)):
        ref = models.policy if unconditional else models.references[name]
        scores = engine.pair_scores(
            ref, tokenized, tokenizer, exp.train.max_length, exp.eval.batch_size, unconditional, exp.train.precision
        )
        chosen, rejected = columns(name, unconditional)
        for split in tokenized:
            ds = tokenized[split].add_column(chosen, scores[split]["chosen"].tolist())
            tokenized[split] = ds.add_column(rejected, scores[split]["rejected"].tolist())
    dropped = {}
    for split, ds in tokenized.items():
        score_columns = [c for c in ds.column_names if c.startswith(("ref:", "p_lm:"))]
        ok = [all(np.isfinite(row)) for row in zip(*(ds[c] for c in score_columns))] if score_columns else []
        dropped[split] = ok.count(False)
        if dropped[split]:
            tokenized[split] = ds.select([i for i, good in enumerate(ok) if good])
        _print_counts(split, report, engine, dropped[split])
    counts = {k: getattr(report, k) for k in ("truncated", "dropped_prompt_too_long", "unfinished")}
    counts |= {"kept": {s: len(ds) for s, ds in tokenized.items()}, "dropped_over_reference_context": dropped}
    counts["references"] = {name: asdict(r) for name, r in engine.reports.items()}
    return tokenized, counts


def _strength(exp: Experiment, ref: ModelRef, prompts: list, judge: Judge, baseline: PromptSet) -> float:
    """The reference's own win rate against the SFT baseline: its samples (its tokenizer and chat template, the
    evaluation's sampling and seed) on the test prompts, judged as a policy's are."""
    regime = regime_for(ref, exp.train.precision)
    model, tokenizer = regime.load(ref), load_tokenizer(ref)
    with regime.autocast():
        gens = generate(model, tokenizer, prompts, sampling(exp.eval), exp.eval.seed, desc=f"sampling {ref.spec}")
    del model
    return win_rate(judge, gens, baseline)


def _similarity(
    exp: Experiment, exp_dir: ExperimentDir, models: Models, pairs, engine: ReferenceEngine, tokenizer, judge
) -> dict:
    """For each reference: how alike it is to the SFT policy before any training: on the training pairs, per policy
    token (`similarity`), and as KL(SFT || ref) estimated on the SFT policy's own samples at temperature 1 on the test
    prompts (`sft_ref_kl` by k1, `sft_ref_kl_k3` by k3, each with its standard error, over `sft_ref_kl_n` samples; k3
    runs low when the samples miss the log-ratio's heavy tail); and how strong it is (`_strength`)."""
    test = read_baseline(exp_dir, "test")
    prompts = test.prompts

    def scores(ref: ModelRef) -> dict:
        args = (exp.train.max_length, exp.eval.batch_size, False, exp.train.precision)
        return engine.pair_scores(ref, pairs, tokenizer, *args)["train"]

    regime = regime_for(models.policy, exp.train.precision)
    model = regime.load(models.policy)
    with regime.autocast():
        kl_sampling = sampling(exp.eval, temperature=1.0, top_p=1.0)
        gens = generate(model, tokenizer, prompts, kl_sampling, exp.eval.baseline_seed + 1, desc="sampling SFT for KL")
        policy_logps = sequence_logps(model, gens.sequences(), exp.eval.batch_size, desc="scoring SFT samples")
    del model  # no policy in memory while the references are scored (a large one may need every GPU)
    policy = scores(models.policy)
    tokens = {side: np.array([len(ids) for ids in pairs["train"][f"{side}_ids"]]) for side in ("chosen", "rejected")}
    out = {}
    for r in (r for r in exp.references if r.model is not None):  # a mixture has no model to compare
        ref = models.references[r.name]
        ref_logps = ReferenceScorer(ref, tokenizer, exp.eval.batch_size, exp.train.precision).logps(gens, None)
        out[r.name] = {"model": r.model, "kind": r.kind, **similarity(policy, scores(ref), tokens)}
        out[r.name] |= {f"sft_ref_{k}": v for k, v in kl_estimates(policy_logps, ref_logps).items()}
        out[r.name] |= {"sft_ref_kl_n": len(policy_logps), "strength": _strength(exp, ref, prompts, judge, test)}
    return out


def prepare(exp: Experiment, exp_dir: ExperimentDir, study: str, models: Models | None = None) -> dict:
    """Write everything the runs of `exp` read (see the module docstring), under the experiment's prepare lock: a
    second process waits, then reuses what the first wrote. `models`: resolved already (`resolve_models`). Returns
    what it did: `status` (built or reused) and the reference scoring passes computed and served from the cache."""
    models = models or resolve_models(exp)
    with locked(exp_dir.prepared, on_wait=console.print):  # which also removes stale temporaries beside prepared/
        clean_stale(exp_dir.baseline(BASELINES[0]).parent)  # and those of baselines killed while they were written
        return _prepare(exp, exp_dir, study, models)


def _prepare(exp: Experiment, exp_dir: ExperimentDir, study: str, models: Models) -> dict:
    key = prepare_key(exp, models, study)
    intact = intact_dir(exp_dir.prepared, "prepared data")  # first: a damaged plan.json is never read
    plan, _ = check_file(exp_dir.plan, json.loads, is_plan) if intact else (None, None)
    similar = check_file(exp_dir.similarity, json.loads, lambda s: isinstance(s, dict))[1] is None
    same_key = plan is not None and plan["key"] == key and (similar or not STUDIES[study].similarity)
    baselines = all([baseline_intact(exp_dir, name) for name in BASELINES])
    if same_key and baselines:
        console.print(f"prepared inputs reused: {exp_dir.prepared}")
        return {"status": "reused", "computed": 0, "from_cache": 0}
    tokenizer = load_tokenizer(models.policy)
    loaded = data.load_data(exp, models.world, models.policy, tokenizer)
    check_pairs(exp, models, loaded)  # instruction pairs exist only now: every split must keep a pair
    for note in loaded.notes:
        console.print(note)
    engine = ReferenceEngine()
    pairs, tokenization = _tokenized_with_references(exp, models, loaded.pairs, engine, tokenizer)
    judge = make_judge(exp, models.judge)
    test_prompts, val_prompts = loaded.eval_prompts, unique_prompts(loaded.pairs["validation"]["prompt"])
    # what every table's claim rests on: nothing chosen on validation prompts is reported on them
    assert not {prompt_key(p) for p in test_prompts} & {prompt_key(p) for p in val_prompts}
    for name, prompt_list in (("test", test_prompts), ("validation", val_prompts)):
        baseline(exp, exp_dir, name, prompt_list, models.policy, judge)
    if STUDIES[study].similarity:
        sims = _similarity(exp, exp_dir, models, pairs, engine, tokenizer, judge)
        atomic_write_json(exp_dir.similarity, sims)
    plan = {
        "key": key,
        "models": models.as_dict(),
        "tokenization": tokenization,
        "prompts": loaded.prompt_counts,  # test and validation prompts: disjoint, and how
        "sampled_pairs": loaded.sampling,  # data: instructions: prompts kept and skipped by reason, lengths, ended
        "reference_scoring": {"computed": engine.computed, "from_cache": engine.cached},
    }
    with atomic_dir(exp_dir.prepared, replace=True) as tmp:
        staged = PreparedDir(tmp)
        pairs.save_to_disk(str(staged.pairs))
        atomic_write_json(staged.plan, plan)
    return {"status": "built", "computed": engine.computed, "from_cache": engine.cached}
