"""What the stages hand each other through an experiment directory: the experiment and command that made it, the
prepared pairs and plan, the SFT baseline's judged samples, and the judged samples of a run.

Prepare writes these (stages/prepare.py), every run reads them (`Prepared`), and the report reads what the runs wrote;
no stage imports another, they meet here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import datasets
import yaml

from .. import data
from ..config import Experiment, RunSpec
from ..errors import UserError
from ..evaluation.evaluate import Benchmark, PromptSet
from ..evaluation.judges import Judge, RewardModelJudge, RuleJudge
from ..generation import Generations
from ..models import ModelRef, load_tokenizer
from ..objectives import OBJECTIVES
from ..reference import ReferenceScorer
from ..store import atomic_write_json, atomic_write_jsonl, atomic_write_text, damage, file_hash, read_json, read_jsonl
from ..ui import console
from .layout import ExperimentDir

BASELINES = ("test", "validation")  # the SFT baseline's prompt sets: reported on, chosen on


def write_spec(exp_dir: ExperimentDir, exp: Experiment, study: str, source: str, extra: dict | None = None) -> None:
    """experiment.yaml and command.json: what every later stage, process and job reads the experiment from (`extra`:
    more of the command's settings, such as tune-beta's)."""
    exp_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir.spec, yaml.safe_dump(exp.model_dump(), sort_keys=False))
    command = {"study": study, "experiment_file": source, "argv": sys.argv, **(extra or {})}
    atomic_write_json(exp_dir.command, command)


def read_spec(exp_dir: ExperimentDir) -> tuple[Experiment, dict]:
    """(experiment, command) of a results directory, from the files the command that made it wrote."""
    if not (exp_dir.spec.is_file() and exp_dir.command.is_file()):
        raise UserError(str(exp_dir.root), "not an experiment results directory (no experiment.yaml / command.json)")
    return Experiment.model_validate(yaml.safe_load(exp_dir.spec.read_text())), read_json(exp_dir.command)


def columns(name: str, unconditional: bool) -> tuple[str, str]:
    """The (chosen, rejected) column names of one reference scoring pass in prepared/pairs."""
    prefix = "p_lm" if unconditional else f"ref:{name}"
    return f"{prefix}:chosen", f"{prefix}:rejected"


def make_judge(exp: Experiment, judge_model: ModelRef | None) -> Judge:
    rule = data.judge_scorer(exp)
    if rule is not None:
        return RuleJudge(*rule)
    return RewardModelJudge(judge_model, exp.judge.batch_size, exp.train.precision)


def generation_rows(gens: Generations, rewards: list[float], extra: dict | None = None) -> list[dict]:
    """One judged sample per row; `extra` (name -> one value per sample) adds columns."""
    extra = extra or {}
    return [
        {**row, "reward": r, **{k: v[i] for k, v in extra.items()}}
        for i, (row, r) in enumerate(zip(gens.rows(), rewards))
    ]


def write_baseline(exp_dir: ExperimentDir, name: str, rows: list[dict], meta: dict) -> None:
    """A baseline file, then its meta file with the content key and the file's checksum (written last: a baseline
    without one is sampled again)."""
    atomic_write_jsonl(exp_dir.baseline(name), rows)
    atomic_write_json(exp_dir.baseline_meta(name), {**meta, "sha256": file_hash(exp_dir.baseline(name), 64)})


def baseline_intact(exp_dir: ExperimentDir, name: str, key: str | None = None) -> bool:
    """Whether a baseline file is there with the checksum its meta file recorded (and, given, the content key); a
    changed one is named in one line (the caller samples it again)."""
    path, meta_path = exp_dir.baseline(name), exp_dir.baseline_meta(name)
    if not (path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = read_json(meta_path)
    except ValueError:
        meta = {}
    if key is not None and meta.get("key") != key:
        return False
    if meta.get("sha256") != file_hash(path, 64):
        console.print(f"[yellow]baseline {path} does not match its checksum; sampling it again")
        return False
    return True


def read_baseline(exp_dir: ExperimentDir, name: str) -> PromptSet:
    """The prompts of one baseline file and the SFT baseline's judged rewards and lengths on them."""
    rows = read_jsonl(exp_dir.baseline(name))
    return PromptSet([r["prompt"] for r in rows], [r["reward"] for r in rows], [r["length"] for r in rows])


@dataclass
class Prepared:
    """What prepare wrote for an experiment, opened for its runs."""

    exp_dir: ExperimentDir
    exp: Experiment
    plan: dict
    pairs: datasets.DatasetDict

    @classmethod
    def open(cls, exp_dir: ExperimentDir) -> Prepared:
        if not (exp_dir.spec.is_file() and exp_dir.plan.is_file()):
            raise UserError(str(exp_dir.root), "not a prepared experiment (no experiment.yaml or prepared/plan.json)")
        exp = Experiment.model_validate(yaml.safe_load(exp_dir.spec.read_text()))
        problem = damage(exp_dir.prepared) or next(
            (f"baseline/{n}.jsonl changed" for n in BASELINES if not baseline_intact(exp_dir, n)), None
        )
        if problem:
            raise UserError(str(exp_dir.prepared), f"prepared inputs are damaged ({problem}); run the study again")
        pairs = datasets.load_from_disk(str(exp_dir.pairs))
        return cls(exp_dir, exp, read_json(exp_dir.plan), pairs)

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
            raise UserError(
                str(self.exp_dir.root), f"prepared data has no scores for {run.run_id}; run the study again"
            )
        keep = [c for c in extra if c not in (chosen, rejected)]
        ds = ds.remove_columns(keep)
        return ds.rename_columns({chosen: "ref_chosen_logps", rejected: "ref_rejected_logps"})

    def benchmark(self) -> Benchmark:
        exp = self.exp
        judge = make_judge(exp, self.model("judge") if self.plan["models"]["judge"] else None)
        test, val = (read_baseline(self.exp_dir, name) for name in BASELINES)
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
