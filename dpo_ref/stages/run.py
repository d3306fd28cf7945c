"""Stage 2, run one: train (unless it is the SFT row), save and evaluate one run, reading only what prepare wrote.

    <exp_dir>/<run_id>/run.yaml            the run's spec and config hash
                       status.json         running -> done | degenerate (both with `flags`) | diverged | failed
                                           | interrupted (Ctrl-C, SIGTERM) | stopped (a training callback, such
                                           as tune-beta's pruner, stopped training early; evaluated there); a
                                           finished one, written last, with the sha256 of every file the run wrote
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
import importlib
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import yaml
from peft import PeftModel
from transformers import TrainerCallback

from .. import ranks
from ..config import RunSpec, find_run, reference_config
from ..errors import UserError
from ..evaluation.alpaca_eval import export_model_outputs, generator_name
from ..evaluation.evaluate import EvalSamples, ImplicitReward, evaluate_policy
from ..expdir import (
    ExperimentDir,
    Prepared,
    RunDir,
    clear_attempt,
    finished_status,
    generation_rows,
    read_status,
    run_hash,
    run_state,
)
from ..generation_vllm import engine_sampler
from ..models import ModelRef, is_adapter, load_tokenizer
from ..precision import regime_for
from ..reference import ReferenceEngine
from ..store import (
    Held,
    Unusable,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    lock_file,
    locked,
)
from ..tracking import Tracking
from ..training_guards import run_flags
from ..ui import console, output_to

TRAIN, SKIP = "train", "skip"  # what the main process of a multi-process run tells the others (ranks.tell)
# builds a Trainer callback for a run in every process that trains it (None: none for this run), e.g. tune-beta's
# pruner; a callback that stops training early makes the run `stopped`, evaluated where it stopped
CallbackFactory = Callable[[Prepared, RunSpec], TrainerCallback | None]


def _start(prepared: Prepared, run: RunSpec) -> float:
    """Start the run's directory over (`clear_attempt`) and return the start time. Called under the run's lock
    (`execute_locked`), so what is there is an interrupted, damaged or outdated attempt, never one another process is
    writing."""
    exp, run_dir = prepared.exp, prepared.exp_dir.run(run.run_id)
    config_hash = run_hash(exp, run, prepared.plan["models"])  # the models the runs read (plan.json)
    if run_dir.root.exists():
        clear_attempt(run_dir, config_hash)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    meta = {"experiment": exp.name, "config_hash": config_hash, "run": run.model_dump()}
    atomic_write_text(run_dir.spec, yaml.safe_dump(meta, sort_keys=False))
    started = time.time()
    atomic_write_json(run_dir.status, {"status": "running", "started": started})
    return started


def _train(
    prepared: Prepared, run: RunSpec, model, tokenizer, validation, callbacks: list, trained_ref: dict | None
) -> tuple[object, dict]:
    """Train the policy and save it in policy/ (under `train.lora` the adapter only, its adapter_config.json naming
    the base); the trained model, to evaluate, and the training part of metrics.json. Every process of a multi-process
    run calls it (`follow`); the main process cleans up. `trained_ref`: a trained reference's scores, if any."""
    from ..train import train_policy

    t0 = time.time()
    train = prepared.split("train", run, trained_ref)
    run_dir = prepared.exp_dir.run(run.run_id)
    cfg, moving = prepared.exp.train, _moving_reference(prepared, run)
    try:  # checkpoints stay in trainer/ when training is interrupted or fails: the next attempt resumes from them
        trained = train_policy(
            model, tokenizer, train, validation, cfg, run, run_dir.trainer, run_dir.policy, moving, callbacks,
            _tracking(prepared, run),
        )  # fmt: skip
    except FloatingPointError:  # diverged: a finished run, nothing to resume
        if ranks.is_main():
            shutil.rmtree(run_dir.trainer, ignore_errors=True)
        raise
    if not ranks.is_main():
        return None, {}
    shutil.rmtree(run_dir.trainer, ignore_errors=True)
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
        "stopped_at_step": trained.stopped_at,  # None: it ran to its end; else a callback stopped it there
    }


def _tracking(prepared: Prepared, run: RunSpec) -> Tracking | None:
    """`train.report_to`'s trackers for this run: files under the experiment's tracking/<run_id>, the experiment's
    name as project, and as config what the run ran with (the experiment as validated and the run's settings)."""
    exp = prepared.exp
    if not exp.train.report_to:
        return None
    config = {"experiment": exp.model_dump(mode="json"), "run": run.model_dump(mode="json")}
    return Tracking(exp.train.report_to, prepared.exp_dir.tracking(run.run_id), exp.name, config)


def write_samples(run_dir: RunDir, samples: EvalSamples) -> None:
    """The values a run's numbers are means of (see the module docstring), for intervals and seeds prompt by prompt."""
    kl = {"kl_log_ratio": samples.kl_log_ratio, "kl_sft_log_ratio": samples.kl_sft_log_ratio}
    atomic_write_jsonl(run_dir.generations, generation_rows(samples.test, samples.test_rewards, kl))
    atomic_write_jsonl(run_dir.validation, generation_rows(samples.validation, samples.validation_rewards))
    atomic_write_jsonl(run_dir.ranking, [dict(zip(samples.pairs, v)) for v in zip(*samples.pairs.values())])


def _moving_reference(prepared: Prepared, run: RunSpec):
    """The run's moving reference (`kind: moving` or `bema`): its starting weights loaded beside the policy, or None
    (a fixed reference, read from the prepared columns)."""
    from ..moving import MovingReference

    ref = reference_config(prepared.exp, run.reference)
    if ref is None or ref.kind not in ("moving", "bema"):
        return None
    regime = regime_for(prepared.model("policy"), prepared.exp.train.precision)  # the policy's, to train beside it
    weights = regime.load(prepared.model("references", run.reference))
    return MovingReference(weights, ref.alpha, ref.sync_steps, ref.kind)


def _late_scores(prepared: Prepared, run: RunSpec) -> dict | None:
    """A `trained` reference's log-probs of the prepared pairs, every split: scored once the run it names is done, by
    the first run against it (the content-addressed cache, under its lock: the other runs read that pass), with the
    reference freed before the policy loads. None for every other reference, whose columns prepare wrote."""
    ref = reference_config(prepared.exp, run.reference)
    if ref is None or ref.kind != "trained":
        return None
    exp, engine = prepared.exp, ReferenceEngine()
    args = (load_tokenizer(prepared.model("policy")), exp.train.max_length, exp.eval.batch_size, False)
    scores = engine.pair_scores(prepared.reference_model(run), prepared.pairs, *args, exp.train.precision)
    how = "computed" if engine.computed else "read from the cache"
    console.print(f"reference {ref.name}, the policy of {ref.run}: its scoring pass {how}")
    return scores


def _inputs(prepared: Prepared, run: RunSpec, trained_ref: dict | None):
    """The policy to train (or evaluate, for the SFT row), its tokenizer, the validation split and the precision
    regime its reference columns were scored in."""
    policy = prepared.model("policy")
    regime = regime_for(policy, prepared.exp.train.precision)
    quantize = prepared.exp.train.quantize if run.registered else None
    model = regime.load(policy, quantize=quantize)
    return model, load_tokenizer(policy), prepared.split("validation", run, trained_ref), regime


def _read_back(prepared: Prepared, policy_dir, regime) -> torch.nn.Module:
    """The policy several processes trained, whole on this process's device from what they saved: a full model, or
    under `train.lora` the SFT policy with the adapter's layers in it (as one process evaluates it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if is_adapter(policy_dir):
        base = regime.load(prepared.model("policy"))
        return PeftModel.from_pretrained(base, str(policy_dir)).get_base_model()
    return regime.load(ModelRef(str(policy_dir), str(policy_dir), ""))


def follow(prepared: Prepared, run: RunSpec, callbacks: Sequence[CallbackFactory] = ()) -> str:
    """A process of a multi-process run other than the main one: once the main process holds the run and started
    its directory, train with it (and take part in saving); it writes nothing, evaluates nothing. Returns what the
    main process said, or `diverged` (the guard's decision is the same in every process)."""
    word = ranks.hear()
    if word != TRAIN:
        return word
    trained_ref = _late_scores(prepared, run)
    model, tokenizer, validation, _ = _inputs(prepared, run, trained_ref)
    try:
        _train(prepared, run, model, tokenizer, validation, _built(callbacks, prepared, run), trained_ref)
    except FloatingPointError:
        return "diverged"
    return "trained"


def _built(factories: Sequence[CallbackFactory], prepared: Prepared, run: RunSpec) -> list[TrainerCallback]:
    return [c for c in (factory(prepared, run) for factory in factories) if c is not None]


def _status(result, metrics: dict) -> dict:
    """status.json's outcome: stopped early by a callback (evaluated, never a best beta), degenerate, or done."""
    if metrics.get("stopped_at_step"):
        return {"status": "stopped", "reason": f"a training callback stopped it at step {metrics['stopped_at_step']}"}
    return {"status": "degenerate", "reason": result.degenerate} if result.degenerate else {"status": "done"}


def execute(prepared: Prepared, run: RunSpec, callbacks: Sequence[CallbackFactory] = ()) -> str:
    """Train (unless it is the SFT row) and evaluate one run; every file lands atomically in its directory. Returns
    the final status."""
    exp, run_dir = prepared.exp, prepared.exp_dir.run(run.run_id)
    started = _start(prepared, run)
    objective = run.registered  # None for the untrained SFT row
    ranks.tell(TRAIN if objective is not None else SKIP)  # the other processes of a multi-process run train with it
    trained_ref = _late_scores(prepared, run)
    model, tokenizer, validation, regime = _inputs(prepared, run, trained_ref)
    metrics: dict = {"run_id": run.run_id, "steps": 0, "train_seconds": 0.0, "train_loss": None, "history": []}
    if objective is not None:
        factories = _built(callbacks, prepared, run)
        model, trained = _train(prepared, run, model, tokenizer, validation, factories, trained_ref)
        metrics.update(trained)
        if model is None:
            model = _read_back(prepared, run_dir.policy, regime)

    t0 = time.time()
    reward = ImplicitReward(objective, run.beta, run.gamma, run.params)
    bench = prepared.benchmark()
    location = str(run_dir.policy) if objective is not None else prepared.model("policy").location
    sample = engine_sampler(exp.eval.engine, location, tokenizer, regime.bf16_weights)
    try:
        with regime.autocast():
            kl_ref, kl_sft = prepared.kl_references(run)
            result, samples = evaluate_policy(model, tokenizer, bench, validation, reward, kl_ref, sample, kl_sft)
    finally:
        if sample is not None:
            sample.close()
    write_samples(run_dir, samples)
    export_model_outputs(run_dir.model_outputs, samples.test, generator_name(exp.name, run.run_id), exp.data.source)
    flags = run_flags(metrics["history"], result.kl, result.length)  # name -> why
    metrics.update(eval=result.as_dict(), eval_seconds=time.time() - t0, flags=list(flags), flag_reasons=flags)
    atomic_write_json(run_dir.metrics, metrics)
    status = _status(result, metrics)
    finished = {"flags": list(flags), "started": started, "finished": time.time()}
    # last, with the checksum of every file the run wrote: a later change to any of them makes the run damaged
    atomic_write_json(run_dir.status, finished_status(run_dir, {**status, **finished}, objective is not None))
    for why in flags.values():
        console.print(f"[yellow]flagged[/]: {run.run_id}: {why}")
    if result.degenerate:
        console.print(f"[yellow]degenerate[/]: {run.run_id}: {result.degenerate}")
    return status["status"]


def execute_safely(prepared: Prepared, run: RunSpec, callbacks: Sequence[CallbackFactory] = ()) -> str:
    """`execute`, with a broken run marked on disk (diverged, or failed with its traceback) instead of raised, so one
    run cannot lose the others and a launcher reads the outcome from status.json. Returns the final status. When even
    that mark cannot be written (a full or read-only disk), the first fault is raised (one line naming its file) and
    the run stays `running`, never finished: the next command runs it again."""
    run_dir = prepared.exp_dir.run(run.run_id)
    try:
        return execute(prepared, run, callbacks)
    except FloatingPointError as e:
        diverged = {"status": "diverged", "error": str(e), **getattr(e, "details", {})}
        _mark(run_dir, finished_status(run_dir, diverged, run.registered is not None), e)
        console.print(f"[red]diverged[/]: {run.run_id}: {e}")
        return "diverged"
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (the CLI turns it into one)
        if run_dir.root.is_dir():
            _mark(run_dir, {"status": "interrupted", "interrupted": time.time()}, e)
        resume = f"run the same command again, or `dporef run-one {prepared.exp_dir.root} {run.run_id}`"
        console.print(f"[yellow]interrupted[/]: {run.run_id}; to resume, {resume}", soft_wrap=True)
        raise
    except UserError:
        raise
    except Exception as e:  # its traceback is kept on disk
        _mark(run_dir, {"status": "failed", "error": repr(e), "traceback": traceback.format_exc()}, e)
        console.print(f"[red]failed[/]: {run.run_id}: {e!r}")
        return "failed"


def _mark(run_dir: RunDir, status: dict, fault: BaseException) -> None:
    """Write the run's outcome to status.json. When the disk refuses it too, raise `fault` when it is a disk fault
    (what went wrong first, naming its file) or an interrupt, else the refusal (naming status.json)."""
    try:
        atomic_write_json(run_dir.status, status)
    except OSError as refused:
        raise (fault if isinstance(fault, OSError | KeyboardInterrupt) else refused) from None


def execute_locked(
    prepared: Prepared, run: RunSpec, wait: bool = False, callbacks: Sequence[CallbackFactory] = ()
) -> str:
    """`execute_safely` holding the run's lock (`store.locked`), so no two processes ever write one run directory,
    and checked again under it, so a run another process finished meanwhile is not run twice. Returns the final
    status, or "held" when another process holds the run and `wait` is false (with `wait`: once it is released)."""
    try:
        with locked(prepared.exp_dir.run(run.run_id).root, timeout=-1 if wait else 0, on_wait=console.print):
            state = run_state(prepared.exp_dir, prepared.exp, run, prepared.plan["models"])
            if state.done:
                console.print(f"[green]already done[/]: {run.run_id}")
                return state.status
            prepared.verify(run)  # what it reads is still what prepare wrote: a user error, before anything starts
            t0 = time.time()
            status = execute_safely(prepared, run, callbacks)
            console.print(f"finished {run.run_id}: {status} in {time.time() - t0:.1f}s")
            return status
    except Held:  # only the run's lock is taken without waiting
        return "held"


def callback_factory(spec: str, where: str) -> CallbackFactory:
    """The factory `module:function` names (`dporef run-one --callback`), imported."""
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        factory = None
    if not callable(factory):
        raise UserError(where, f"--callback {spec!r}: no function `module:function` of that name can be imported")
    return factory


def run_one(exp_dir: ExperimentDir, run_id: str, wait: bool = False, callbacks: Sequence[CallbackFactory] = ()) -> str:
    """`dporef run-one`: one run of a prepared experiment, from its directory alone; returns its final status. A
    done run is left as it is; one another process holds is refused (a user error), or with `wait` waited for."""
    ranks.join()  # under `accelerate launch`: before any model is loaded
    prepared = Prepared.open(exp_dir)
    run = find_run(prepared.exp, run_id, f"{exp_dir.root}: run {run_id}")
    prepared.exp.train.accumulation_per_process(ranks.size())  # refused in every process before anything starts
    if not ranks.is_main():
        return follow(prepared, run, callbacks)
    try:
        status = execute_locked(prepared, run, wait, callbacks)
    finally:  # done, held, or failed before training: the other processes have nothing to do
        ranks.tell(SKIP)
    if status == "held":
        lock = lock_file(exp_dir.run(run_id).root)
        raise UserError(
            f"{exp_dir.root}: run {run_id}", f"another process is running it (lock {lock}); pass --wait to wait"
        )
    return status


def run_several(
    exp_dir: ExperimentDir, run_ids: list[str], log_each: bool = False, callbacks: Sequence[CallbackFactory] = ()
) -> list[str]:
    """`dporef run-one EXP RUN RUN ...`: several runs in turn in this one process (the imports and the shared
    inputs paid once), a run another process holds left and come back to at the end, so processes given the same
    runs share them out between them (the local launcher's workers). A run that fails, or a mistake that concerns
    one run only, does not stop the others. `log_each`: each run's output in its log (logs/<run_id>.log). Returns
    the final statuses, in order."""
    if ranks.size() > 1:
        raise UserError("run-one", "several runs are run by one process; under `accelerate launch` give one run")
    began = time.time()
    prepared = Prepared.open(exp_dir)
    runs = [find_run(prepared.exp, run_id, f"{exp_dir.root}: run {run_id}") for run_id in run_ids]
    statuses: dict[str, str] = {}
    for wait in (False, True):  # a first pass over every run, then the ones another process held
        for run in (r for r in runs if r.run_id not in statuses):
            ended = _ended_since(exp_dir.run(run.run_id), began)
            if ended:  # another process sharing these runs tried it meanwhile: a failed run is not run twice
                statuses[run.run_id] = ended
                continue
            with output_to(exp_dir.log(run.run_id)) if log_each else nullcontext():
                try:
                    status = execute_locked(prepared, run, wait, callbacks)
                except (UserError, Unusable, OSError) as e:  # this run's directory or inputs: the next may run
                    console.print(f"error: {run.run_id}: {e}", markup=False)
                    status = "failed"
            if status != "held":
                statuses[run.run_id] = status
    return [statuses[run_id] for run_id in run_ids]


def _ended_since(run_dir: RunDir, began: float) -> str | None:
    """The status another process gave the run since `began` (None: none, or still running)."""
    try:
        if run_dir.status.stat().st_mtime < began:
            return None
    except OSError:
        return None
    status = read_status(run_dir)
    return None if status in ("running", "pending") else status
