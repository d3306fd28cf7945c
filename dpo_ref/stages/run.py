"""Stage 2, run one: train (unless it is the SFT row), save and evaluate one run, reading only what prepare wrote.

    <exp_dir>/<run_id>/run.yaml            the run's spec and config hash
                       status.json         running -> done | degenerate (both with `flags`) | diverged | failed
                                           | interrupted (Ctrl-C, SIGTERM) | pruned (a tune-beta trial stopped early)
                       metrics.json        training history and the evaluation
                       generations.jsonl   the policy's judged samples on the test prompts, with the log-ratios
                                           behind its KL estimates (to the reference and to the SFT policy)
                       validation.jsonl    its judged samples on the validation prompts (val_win_rate)
                       ranking.jsonl       per validation pair: implicit rewards and log-probs (ranking accuracy)
                       model_outputs.json  the same in AlpacaEval's format
                       policy/             the trained policy
                       trainer/            checkpoints while it trains, kept for a rerun to resume from

A run writes nothing outside its own directory, so runs of one experiment can execute at the same time in separate
processes (`dporef run-one EXP_DIR RUN_ID`), on separate GPUs or cluster nodes.
"""

from __future__ import annotations

import gc
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import yaml
from peft import PeftModel

from .. import ranks
from ..config import Experiment, RunSpec
from ..errors import UserError
from ..evaluation.alpaca_eval import MODEL_OUTPUTS, export_model_outputs, generator_name
from ..evaluation.evaluate import Benchmark, EvalSamples, ImplicitReward, evaluate_policy
from ..models import ModelRef, is_adapter, load_model, load_tokenizer
from ..objectives import OBJECTIVES
from ..plan import find_run, prepared_models, reference_config, run_hash, run_state
from ..precision import regime_for
from ..reference import ReferenceScorer
from ..store import Held, atomic_write_json, atomic_write_jsonl, atomic_write_text, damage, lock_file, locked, read_json
from ..training_guards import run_flags
from ..ui import console
from .prepare import baseline_intact, columns, engine_sampler, make_judge, read_baseline, write_generations
from .pruning import trial_pruning

TRAIN, SKIP = "train", "skip"  # what the main process of a multi-process run tells the others (ranks.tell)


@dataclass
class Prepared:
    """What prepare wrote for an experiment, opened for its runs."""

    exp_dir: Path
    exp: Experiment
    plan: dict
    pairs: datasets.DatasetDict

    @classmethod
    def open(cls, exp_dir: Path) -> Prepared:
        exp_dir = Path(exp_dir)
        spec, plan = exp_dir / "experiment.yaml", exp_dir / "prepared" / "plan.json"
        if not (spec.is_file() and plan.is_file()):
            raise UserError(str(exp_dir), "not a prepared experiment (no experiment.yaml or prepared/plan.json)")
        exp = Experiment.model_validate(yaml.safe_load(spec.read_text()))
        problem = damage(exp_dir / "prepared") or next(
            (f"baseline/{n}.jsonl changed" for n in ("test", "validation") if not baseline_intact(exp_dir, n)), None
        )
        if problem:
            raise UserError(str(exp_dir / "prepared"), f"prepared inputs are damaged ({problem}); run the study again")
        pairs = datasets.load_from_disk(str(exp_dir / "prepared" / "pairs"))
        return cls(exp_dir, exp, read_json(plan), pairs)

    def model(self, role: str, name: str | None = None) -> ModelRef:
        entry = self.plan["models"][role] if name is None else self.plan["models"][role][name]
        return ModelRef(entry["spec"], entry["location"], entry["fingerprint"])

    def split(self, split: str, run: RunSpec) -> datasets.Dataset:
        """The tokenized split with `ref_chosen_logps` / `ref_rejected_logps` of the run's objective (zeros for
        reference-free objectives), the columns TRL's DPOTrainer reads."""
        ds = self.pairs[split]
        extra = [c for c in ds.column_names if c.startswith(("ref:", "p_lm:"))]
        mode = OBJECTIVES[run.objective].reference if run.objective in OBJECTIVES else None
        if mode is None:
            return ds.remove_columns(extra)
        if mode == "none":
            zeros = [0.0] * len(ds)
            ds = ds.remove_columns(extra).add_column("ref_chosen_logps", zeros)
            return ds.add_column("ref_rejected_logps", zeros)
        chosen, rejected = columns(run.reference, mode == "unconditional")
        if chosen not in ds.column_names:
            raise UserError(str(self.exp_dir), f"prepared data has no scores for {run.run_id}; run the study again")
        keep = [c for c in extra if c not in (chosen, rejected)]
        ds = ds.remove_columns(keep)
        return ds.rename_columns({chosen: "ref_chosen_logps", rejected: "ref_rejected_logps"})

    def benchmark(self) -> Benchmark:
        exp = self.exp
        judge = make_judge(exp, self.model("judge") if self.plan["models"]["judge"] else None)
        test, val = read_baseline(self.exp_dir, "test"), read_baseline(self.exp_dir, "validation")
        return Benchmark(test, val, judge, exp.eval)

    def kl_references(self, run: RunSpec) -> tuple[ReferenceScorer, ReferenceScorer | None]:
        """The scorers of the two KLs: against the run's reference (reference-free runs and the SFT row: the SFT
        policy), and against the SFT policy when that is another model (else None: the first KL is that one)."""
        policy = self.model("policy")
        ref = policy if run.reference is None else self.model("references", run.reference)
        is_policy = run.objective == "sft" and ref.fingerprint == policy.fingerprint
        tokenizer = load_tokenizer(policy)
        args = (tokenizer, self.exp.eval.batch_size, self.exp.train.precision)
        sft = None if ref.fingerprint == policy.fingerprint else ReferenceScorer(policy, *args)
        return ReferenceScorer(ref, *args, is_policy), sft


def _clear_attempt(run_dir: Path, config_hash: str) -> None:
    """Remove an earlier attempt of the run, except the checkpoints in its `trainer/` when it ran with the same config
    hash: an interrupted run resumes from them (train.resume_point)."""
    try:
        same = yaml.safe_load((run_dir / "run.yaml").read_text())["config_hash"] == config_hash
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        same = False
    if not same:
        shutil.rmtree(run_dir)
        return
    for entry in (e for e in run_dir.iterdir() if e.name != "trainer"):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _start(run_dir: Path, exp: Experiment, run: RunSpec) -> float:
    """Start the run's directory over (`_clear_attempt`) and return the start time. Called under the run's lock
    (`execute_locked`), so what is there is an interrupted, damaged or outdated attempt, never one another process is
    writing."""
    config_hash = run_hash(exp, run, prepared_models(run_dir.parent))  # the models the runs read (plan.json)
    if run_dir.exists():
        _clear_attempt(run_dir, config_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"experiment": exp.name, "config_hash": config_hash, "run": run.model_dump()}
    atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(meta, sort_keys=False))
    started = time.time()
    atomic_write_json(run_dir / "status.json", {"status": "running", "started": started})
    return started


def _train(prepared: Prepared, run: RunSpec, model, tokenizer, validation, run_dir: Path) -> tuple[object, dict]:
    """Train the policy and save it in policy/ (under `train.lora` the adapter only, its adapter_config.json naming
    the base); the trained model, to evaluate, and the training part of metrics.json. Every process of a multi-process
    run calls it (`follow`); the main process cleans up."""
    from ..train import train_policy

    t0 = time.time()
    train = prepared.split("train", run)
    trainer_dir, policy_dir = run_dir / "trainer", run_dir / "policy"
    cfg, moving = prepared.exp.train, _moving_reference(prepared, run)
    # a tune-beta trial's pruner judges the policy mid-training; one process alone evaluates, so not across several
    pruning = trial_pruning(prepared, run, tokenizer) if ranks.size() == 1 else None
    try:  # checkpoints stay in trainer/ when training is interrupted or fails: the next attempt resumes from them
        trained = train_policy(
            model, tokenizer, train, validation, cfg, run, trainer_dir, policy_dir, moving, [pruning] if pruning else []
        )
    except FloatingPointError:  # diverged: a finished run, nothing to resume
        if ranks.is_main():
            shutil.rmtree(trainer_dir, ignore_errors=True)
        raise
    if not ranks.is_main():
        return None, {}
    shutil.rmtree(trainer_dir, ignore_errors=True)
    history = trained.history
    # evaluated as the plain transformers model dporef's scorers patch: peft's base model, its adapters active (None:
    # trained by several processes, read back from policy/ by the caller once the training copy is gone)
    policy = trained.model.get_base_model() if isinstance(trained.model, PeftModel) else trained.model
    return policy, {
        "history": history,
        "checkpoint_step": trained.checkpoint_step,  # None: the final policy
        "resumed_from_step": trained.resumed_from,  # None: trained from step 0 in one go
        "train_seconds": time.time() - t0,
        "train_processes": ranks.size(),  # processes that trained it together (accelerate launch); 1 otherwise
        "steps": max((h.get("step", 0) for h in history), default=0),
        "train_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
        "validation_checks": pruning.checks if pruning else [],  # tune-beta: the values its pruner saw
        "pruned_at_step": pruning.pruned_at if pruning else None,
    }


def write_samples(run_dir: Path, samples: EvalSamples) -> None:
    """The values a run's numbers are means of (see the module docstring), for intervals and seeds prompt by prompt."""
    kl = {"kl_log_ratio": samples.kl_log_ratio, "kl_sft_log_ratio": samples.kl_sft_log_ratio}
    write_generations(run_dir / "generations.jsonl", samples.test, samples.test_rewards, kl)
    write_generations(run_dir / "validation.jsonl", samples.validation, samples.validation_rewards)
    atomic_write_jsonl(run_dir / "ranking.jsonl", [dict(zip(samples.pairs, v)) for v in zip(*samples.pairs.values())])


def _moving_reference(prepared: Prepared, run: RunSpec):
    """The run's TR-DPO reference (`kind: moving`): its starting weights loaded beside the policy, or None (a fixed
    reference, read from the prepared columns)."""
    from ..moving import MovingReference

    ref = reference_config(prepared.exp, run.reference)
    if ref is None or ref.kind != "moving":
        return None
    regime = regime_for(prepared.model("policy"), prepared.exp.train.precision)
    weights = load_model(prepared.model("references", run.reference), bf16=regime.bf16_weights)
    return MovingReference(weights, ref.alpha, ref.sync_steps)


def _inputs(prepared: Prepared, run: RunSpec):
    """The policy to train (or evaluate, for the SFT row), its tokenizer, the validation split and the precision
    regime its reference columns were scored in."""
    policy = prepared.model("policy")
    regime = regime_for(policy, prepared.exp.train.precision)
    quantize = prepared.exp.train.quantize if run.objective in OBJECTIVES else None
    model = load_model(policy, bf16=regime.bf16_weights, quantize=quantize)
    return model, load_tokenizer(policy), prepared.split("validation", run), regime


def _read_back(prepared: Prepared, policy_dir: Path, regime) -> torch.nn.Module:
    """The policy several processes trained, whole on this process's device from what they saved: a full model, or
    under `train.lora` the SFT policy with the adapter's layers in it (as one process evaluates it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if is_adapter(policy_dir):
        base = load_model(prepared.model("policy"), bf16=regime.bf16_weights)
        return PeftModel.from_pretrained(base, str(policy_dir)).get_base_model()
    return load_model(ModelRef(str(policy_dir), str(policy_dir), ""), bf16=regime.bf16_weights)


def follow(prepared: Prepared, run: RunSpec) -> str:
    """A process of a multi-process run other than the main one: once the main process holds the run and started
    its directory, train with it (and take part in saving); it writes nothing, evaluates nothing. Returns what the
    main process said, or `diverged` (the guard's decision is the same in every process)."""
    word = ranks.hear()
    if word != TRAIN:
        return word
    model, tokenizer, validation, _ = _inputs(prepared, run)
    try:
        _train(prepared, run, model, tokenizer, validation, prepared.exp_dir / run.run_id)
    except FloatingPointError:
        return "diverged"
    return "trained"


def execute(prepared: Prepared, run: RunSpec) -> str:
    """Train (unless it is the SFT row) and evaluate one run; every file lands atomically in its directory. Returns
    the final status."""
    exp, run_dir = prepared.exp, prepared.exp_dir / run.run_id
    started = _start(run_dir, exp, run)
    objective = OBJECTIVES.get(run.objective)  # None for the untrained SFT row
    ranks.tell(TRAIN if objective is not None else SKIP)  # the other processes of a multi-process run train with it
    model, tokenizer, validation, regime = _inputs(prepared, run)
    metrics: dict = {"run_id": run.run_id, "steps": 0, "train_seconds": 0.0, "train_loss": None, "history": []}
    if objective is not None:
        model, trained = _train(prepared, run, model, tokenizer, validation, run_dir)
        metrics.update(trained)
        if model is None:
            model = _read_back(prepared, run_dir / "policy", regime)

    t0 = time.time()
    reward = ImplicitReward(objective, run.beta, run.gamma)
    bench = prepared.benchmark()
    location = str(run_dir / "policy") if objective is not None else prepared.model("policy").location
    sample = engine_sampler(exp, location, tokenizer, regime.bf16_weights)
    try:
        with regime.autocast():
            kl_ref, kl_sft = prepared.kl_references(run)
            result, samples = evaluate_policy(model, tokenizer, bench, validation, reward, kl_ref, sample, kl_sft)
    finally:
        if sample is not None:
            sample.close()
    write_samples(run_dir, samples)
    gens = samples.test
    export_model_outputs(run_dir / MODEL_OUTPUTS, gens, generator_name(exp.name, run.run_id), exp.data.source)
    flags = run_flags(metrics["history"], result.kl, result.length)  # name -> why
    metrics.update(eval=result.as_dict(), eval_seconds=time.time() - t0, flags=list(flags), flag_reasons=flags)
    atomic_write_json(run_dir / "metrics.json", metrics)
    status = {"status": "degenerate", "reason": result.degenerate} if result.degenerate else {"status": "done"}
    if metrics.get("pruned_at_step"):  # stopped early by tune-beta's pruner: evaluated, never a best beta
        status = {"status": "pruned", "reason": f"stopped at step {metrics['pruned_at_step']} by the pruner"}
    finished = {"flags": list(flags), "started": started, "finished": time.time()}
    atomic_write_json(run_dir / "status.json", {**status, **finished})
    for why in flags.values():
        console.print(f"[yellow]flagged[/]: {run.run_id}: {why}")
    if result.degenerate:
        console.print(f"[yellow]degenerate[/]: {run.run_id}: {result.degenerate}")
    return status["status"]


def execute_safely(prepared: Prepared, run: RunSpec) -> str:
    """`execute`, with a broken run marked on disk (diverged, or failed with its traceback) instead of raised, so one
    run cannot lose the others and a launcher reads the outcome from status.json. Returns the final status."""
    status_file = prepared.exp_dir / run.run_id / "status.json"
    try:
        return execute(prepared, run)
    except FloatingPointError as e:
        atomic_write_json(status_file, {"status": "diverged", "error": str(e), **getattr(e, "details", {})})
        console.print(f"[red]diverged[/]: {run.run_id}: {e}")
        return "diverged"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one)
        if status_file.parent.is_dir():
            atomic_write_json(status_file, {"status": "interrupted", "interrupted": time.time()})
        resume = f"run the same command again, or `dporef run-one {prepared.exp_dir} {run.run_id}`"
        console.print(f"[yellow]interrupted[/]: {run.run_id}; to resume, {resume}", soft_wrap=True)
        raise
    except UserError:
        raise
    except Exception as e:  # its traceback is kept on disk
        atomic_write_json(status_file, {"status": "failed", "error": repr(e), "traceback": traceback.format_exc()})
        console.print(f"[red]failed[/]: {run.run_id}: {e!r}")
        return "failed"


def execute_locked(prepared: Prepared, run: RunSpec, wait: bool = False) -> str:
    """`execute_safely` holding the run's lock (`store.locked`), so no two processes ever write one run directory,
    and checked again under it, so a run another process finished meanwhile is not run twice. Returns the final
    status, or "held" when another process holds the run and `wait` is false (with `wait`: once it is released)."""
    run_dir = prepared.exp_dir / run.run_id
    try:
        with locked(run_dir, timeout=-1 if wait else 0, on_wait=console.print):
            state = run_state(prepared.exp_dir, prepared.exp, run, prepared.plan["models"])
            if state.done:
                console.print(f"[green]already done[/]: {run.run_id}")
                return state.status
            t0 = time.time()
            status = execute_safely(prepared, run)
            console.print(f"finished {run.run_id}: {status} in {time.time() - t0:.1f}s")
            return status
    except Held:  # only the run's lock is taken without waiting
        return "held"


def run_one(exp_dir: Path, run_id: str, wait: bool = False) -> str:
    """`dporef run-one`: one run of a prepared experiment, from its directory alone; returns its final status. A
    done run is left as it is; one another process holds is refused (a user error), or with `wait` waited for."""
    ranks.join()  # under `accelerate launch`: before any model is loaded
    prepared = Prepared.open(exp_dir)
    run = find_run(prepared.exp, run_id, f"{exp_dir}: run {run_id}")
    prepared.exp.train.accumulation_per_process(ranks.size())  # refused in every process before anything starts
    if not ranks.is_main():
        return follow(prepared, run)
    try:
        status = execute_locked(prepared, run, wait)
    finally:  # done, held, or failed before training: the other processes have nothing to do
        ranks.tell(SKIP)
    if status == "held":
        lock = lock_file(prepared.exp_dir / run_id)
        raise UserError(f"{exp_dir}: run {run_id}", f"another process is running it (lock {lock}); pass --wait to wait")
    return status
