"""Stage 2, run one: train (unless it is the SFT row), save and evaluate one run, reading only what prepare wrote.

    <exp_dir>/<run_id>/run.yaml            the run's spec and config hash
                       status.json         running -> done | degenerate | diverged | failed
                       metrics.json        training history and the evaluation
                       generations.jsonl   the policy's judged samples on the test prompts
                       model_outputs.json  the same in AlpacaEval's format
                       policy/             the trained policy

A run writes nothing outside its own directory, so runs of one experiment can execute at the same time in separate
processes (`dporef run-one EXP_DIR RUN_ID`), on separate GPUs or cluster nodes.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import datasets
import yaml

from ..config import Experiment, RunSpec
from ..errors import UserError
from ..evaluation.alpaca_eval import MODEL_OUTPUTS, export_model_outputs, generator_name
from ..evaluation.evaluate import Benchmark, ImplicitReward, evaluate_policy
from ..models import ModelRef, load_model, load_tokenizer
from ..objectives import OBJECTIVES
from ..plan import find_run, run_hash
from ..precision import regime_for
from ..reference import SampleScorer
from ..store import atomic_dir, atomic_write_json, atomic_write_text, damage, read_json
from ..ui import console
from .prepare import baseline_intact, columns, make_judge, read_baseline, write_generations


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

    def kl_reference(self, run: RunSpec) -> SampleScorer:
        """KL is measured against the run's reference; reference-free runs (and the SFT row) against the SFT policy."""
        policy = self.model("policy")
        ref = policy if run.reference is None else self.model("references", run.reference)
        is_policy = run.objective == "sft" and ref.fingerprint == policy.fingerprint
        tokenizer = load_tokenizer(policy)
        return SampleScorer(ref, tokenizer, self.exp.eval.batch_size, self.exp.train.precision, is_policy)


def _start(run_dir: Path, exp: Experiment, run: RunSpec) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted or stale attempt: start it over
    run_dir.mkdir(parents=True)
    meta = {"experiment": exp.name, "config_hash": run_hash(exp, run), "run": run.model_dump()}
    atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(meta, sort_keys=False))
    atomic_write_json(run_dir / "status.json", {"status": "running", "started": time.time()})


def _train(prepared: Prepared, run: RunSpec, model, tokenizer, validation, run_dir: Path) -> dict:
    """Train the policy in place and save it; the training part of metrics.json."""
    from ..train import train_policy

    t0 = time.time()
    train = prepared.split("train", run)
    history, best_step = train_policy(model, tokenizer, train, validation, prepared.exp.train, run, run_dir / "trainer")
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    with atomic_dir(run_dir / "policy") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "history": history,
        "checkpoint_step": best_step,  # None: the final policy
        "train_seconds": time.time() - t0,
        "steps": max((h.get("step", 0) for h in history), default=0),
        "train_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
    }


def execute(prepared: Prepared, run: RunSpec) -> str:
    """Train (unless it is the SFT row) and evaluate one run; every file lands atomically in its directory. Returns
    the final status."""
    exp, run_dir = prepared.exp, prepared.exp_dir / run.run_id
    _start(run_dir, exp, run)
    policy = prepared.model("policy")
    tokenizer = load_tokenizer(policy)
    regime = regime_for(policy, exp.train.precision)  # the regime its reference columns were scored in
    model = load_model(policy, bf16=regime.bf16_weights)
    metrics: dict = {"run_id": run.run_id, "steps": 0, "train_seconds": 0.0, "train_loss": None, "history": []}
    objective = OBJECTIVES.get(run.objective)  # None for the untrained SFT row
    validation = prepared.split("validation", run)
    if objective is not None:
        metrics.update(_train(prepared, run, model, tokenizer, validation, run_dir))

    t0 = time.time()
    reward = ImplicitReward(objective, run.beta, run.gamma)
    bench = prepared.benchmark()
    with regime.autocast():
        result, gens, rewards = evaluate_policy(model, tokenizer, bench, validation, reward, prepared.kl_reference(run))
    write_generations(run_dir / "generations.jsonl", gens, rewards)
    export_model_outputs(run_dir / MODEL_OUTPUTS, gens, generator_name(exp.name, run.run_id), exp.data.source)
    metrics.update(eval=result.as_dict(), eval_seconds=time.time() - t0)
    atomic_write_json(run_dir / "metrics.json", metrics)
    status = {"status": "degenerate", "reason": result.degenerate} if result.degenerate else {"status": "done"}
    atomic_write_json(run_dir / "status.json", {**status, "finished": time.time()})
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
        atomic_write_json(status_file, {"status": "diverged", "error": str(e)})
        console.print(f"[red]diverged[/]: {run.run_id}: {e}")
        return "diverged"
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted during {run.run_id}; run the same command again to resume")
        raise
    except UserError:
        raise
    except Exception as e:  # its traceback is kept on disk
        atomic_write_json(status_file, {"status": "failed", "error": repr(e), "traceback": traceback.format_exc()})
        console.print(f"[red]failed[/]: {run.run_id}: {e!r}")
        return "failed"


def run_one(exp_dir: Path, run_id: str) -> str:
    """`dporef run-one`: one run of a prepared experiment, from its directory alone; returns its final status."""
    prepared = Prepared.open(exp_dir)
    return execute_safely(prepared, find_run(prepared.exp, run_id, f"{exp_dir}: run {run_id}"))
