"""What the stages hand each other through an experiment directory: the experiment and command that made it, the
prepared pairs and plan, the SFT baseline's judged samples, and the judged samples of a run.

Prepare writes these (stages/prepare.py), every run reads them (`Prepared`), and the report reads what the runs wrote;
no stage imports another, they meet here.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import yaml
from pydantic import ValidationError

from .. import data
from ..config import Experiment, RunSpec, find_run, reference_config
from ..errors import UserError
from ..evaluation.evaluate import Benchmark, PromptSet
from ..evaluation.judges import Judge, RewardModelJudge, RuleJudge
from ..generation import Generations
from ..models import ModelRef, load_tokenizer, resolve
from ..reference import MixtureScorer, ReferenceScorer
from ..store import (
    Unusable,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_file,
    damage,
    jsonl_rows,
    read_checked,
    sha256_bytes,
)
from ..ui import console
from .layout import ExperimentDir
from .runs import EVALUATED, is_plan, run_state

BASELINES = ("test", "validation")  # the SFT baseline's prompt sets: reported on, chosen on
SPEC_TODO = "run the study command again (it writes experiment.yaml and command.json anew)"
PREPARE_TODO = "run the study again"
WHY = {"does not match its checksum": "changed", "invalid": "does not hold what prepare writes"}


def _is_dict(value) -> bool:
    return isinstance(value, dict)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def write_spec(exp_dir: ExperimentDir, exp: Experiment, study: str, source: str, extra: dict | None = None) -> None:
    """experiment.yaml and command.json: what every later stage, process and job reads the experiment from (`extra`:
    more of the command's settings, such as tune-beta's)."""
    exp_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir.spec, yaml.safe_dump(exp.model_dump(), sort_keys=False))
    command = {"study": study, "experiment_file": source, "argv": sys.argv, **(extra or {})}
    atomic_write_json(exp_dir.command, command)


def checked(path: Path, parse, valid, what_to_do: str, invalid: str = "does not hold what dporef writes"):
    """A file dporef wrote, read back through `store.read_checked`: when it is missing, unreadable or not what dporef
    writes, a user error (one line, exit code 2) naming it, what is wrong and `what_to_do`."""
    try:
        return read_checked(path, parse, valid, what_to_do, invalid)
    except Unusable as e:
        raise UserError(e.where, e.message) from None


def read_experiment(exp_dir: ExperimentDir) -> Experiment:
    """experiment.yaml, validated (a broken or edited one: a user error naming it and its first wrong key)."""
    data = checked(exp_dir.spec, yaml.safe_load, _is_dict, SPEC_TODO, "does not hold an experiment (not a mapping)")
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = f"does not hold a valid experiment ({key}: {first['msg']}); {SPEC_TODO}"
        raise UserError(str(exp_dir.spec), message) from None


def read_spec(exp_dir: ExperimentDir) -> tuple[Experiment, dict]:
    """(experiment, command) of a results directory, from the files the command that made it wrote."""
    if not (exp_dir.spec.is_file() and exp_dir.command.is_file()):
        raise UserError(str(exp_dir.root), "not an experiment results directory (no experiment.yaml / command.json)")
    exp = read_experiment(exp_dir)
    return exp, checked(exp_dir.command, json.loads, lambda c: isinstance(_dict(c).get("study"), str), SPEC_TODO)


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
    atomic_write_json(exp_dir.baseline_meta(name), {**meta, "sha256": sha256_bytes(exp_dir.baseline(name))})


def _baseline(exp_dir: ExperimentDir, name: str, key: str | None = None) -> tuple[list | None, str | None]:
    """(rows, None) of a baseline file, read once and hashed in full against the checksum its meta file recorded (and,
    given, with that content key), or (None, what is wrong) naming the file."""
    path, meta_path = exp_dir.baseline(name), exp_dir.baseline_meta(name)
    label = {p: p.relative_to(exp_dir.root).as_posix() for p in (path, meta_path)}  # baseline/NAME.jsonl ...
    meta, problem = check_file(meta_path, json.loads, lambda m: _is_dict(m) and isinstance(m.get("sha256"), str))
    if problem:
        return None, f"{label[meta_path]} {WHY.get(problem, problem)}"
    if key is not None and meta.get("key") != key:
        return None, f"{label[path]} is for other settings"
    rows, problem = check_file(path, jsonl_rows, _samples, meta["sha256"])
    return rows, (None if problem is None else f"{label[path]} {WHY.get(problem, problem)}")


def _samples(rows) -> bool:
    """Judged samples, as the report and the runs read them: a prompt, and a finite reward and length in each row."""
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return bool(rows) and all(
        isinstance(r, dict) and isinstance(r.get("prompt"), str) and number(r.get("reward")) and number(r.get("length"))
        for r in rows
    )


def baseline_intact(exp_dir: ExperimentDir, name: str, key: str | None = None) -> bool:
    """Whether a baseline file is there with the checksum its meta file recorded (and, given, the content key); a
    changed or broken one is named in one line (the caller samples it again)."""
    _, problem = _baseline(exp_dir, name, key)
    if problem and problem.endswith("changed"):
        console.print(f"[yellow]baseline {exp_dir.baseline(name)} does not match its checksum; sampling it again")
    elif problem and not problem.endswith(("missing", "is for other settings")):
        console.print(f"[yellow]{exp_dir.root}: {problem}; sampling it again")
    return problem is None


def baseline_rows(exp_dir: ExperimentDir, name: str) -> list[dict]:
    """The SFT baseline's judged samples of one baseline file, as its checksum says prepare wrote them; `Unusable`
    (a ValueError) when they are not."""
    rows, problem = _baseline(exp_dir, name)
    if problem:
        raise Unusable(str(exp_dir.baseline(name)), f"{problem}; {PREPARE_TODO}")
    return rows


def read_baseline(exp_dir: ExperimentDir, name: str) -> PromptSet:
    """The prompts of one baseline file and the SFT baseline's judged rewards and lengths on them (checked in full as
    they are read: a user error when they are not what prepare wrote)."""
    try:
        rows = baseline_rows(exp_dir, name)
    except Unusable as e:
        raise UserError(e.where, e.message) from None
    return PromptSet([r["prompt"] for r in rows], [r["reward"] for r in rows], [r["length"] for r in rows])


def _damaged(exp_dir: ExperimentDir) -> str | None:
    """Why prepare's outputs (prepared/, the baselines) are not what it wrote, each byte read again, or None."""
    problems = (_baseline(exp_dir, name)[1] for name in BASELINES)
    return damage(exp_dir.prepared) or next((p for p in problems if p), None)


@dataclass
class Prepared:
    """What prepare wrote for an experiment, opened for its runs."""

    exp_dir: ExperimentDir
    exp: Experiment
    plan: dict
    pairs: datasets.DatasetDict

    checked_by_open: bool = field(default=True, repr=False)  # prepared/ and baselines hashed since the last run

    @classmethod
    def open(cls, exp_dir: ExperimentDir) -> Prepared:
        """prepare's outputs for the runs: experiment.yaml and plan.json checked, prepared/ and the baselines hashed
        in full against their checksums (an in-place edit that keeps sizes and dates is found), pairs/ opened."""
        if not (exp_dir.spec.is_file() and exp_dir.plan.is_file()):
            raise UserError(str(exp_dir.root), "not a prepared experiment (no experiment.yaml or prepared/plan.json)")
        exp = read_experiment(exp_dir)
        problem = _damaged(exp_dir)
        if problem:
            raise UserError(str(exp_dir.prepared), f"prepared inputs are damaged ({problem}); {PREPARE_TODO}")
        plan = checked(exp_dir.plan, json.loads, is_plan, PREPARE_TODO, "does not hold what prepare writes")
        return cls(exp_dir, exp, plan, datasets.load_from_disk(str(exp_dir.pairs)))

    def verify(self, run: RunSpec) -> None:
        """Before `run` starts: the models it loads are where prepare found them, and prepared/ and the baselines are
        still what prepare wrote (hashed in full again, unless `open` just did: a study's runs take hours, and each
        reads them anew). A user error otherwise, before the run writes anything."""
        self.model("policy")
        ref = reference_config(self.exp, run.reference)
        if ref is not None and ref.kind == "trained":
            self.reference_model(run)  # the run it names is done and its policy loads
        for name in (ref.mix or [ref.name]) if ref is not None and ref.kind != "trained" else []:  # a mixture: each
            self.model("references", name)
        if self.plan["models"]["judge"] is not None:
            self.model("judge")
        problem = None if self.checked_by_open else _damaged(self.exp_dir)
        self.checked_by_open = False
        if problem:
            raise UserError(str(self.exp_dir.prepared), f"prepared inputs are damaged ({problem}); {PREPARE_TODO}")

    def model(self, role: str, name: str | None = None) -> ModelRef:
        """A model prepare resolved (`role`: policy, references (with `name`) or judge), where it still is."""
        what = {"references": "reference"}.get(role, role)
        entry = self.plan["models"][role] if name is None else self.plan["models"][role].get(name)
        if entry is None:
            raise UserError(str(self.exp_dir.plan), f"records no {what} model {name}; {PREPARE_TODO}")
        if not Path(entry["location"]).exists():  # deleted, or a cache cleaned, since prepare
            where = f"the {what} model {entry['spec']} ({entry['location']})"
            raise UserError(str(self.exp_dir.plan), f"{where} no longer exists; {PREPARE_TODO}")
        return ModelRef(entry["spec"], entry["location"], entry["fingerprint"])

    def reference_model(self, run: RunSpec) -> ModelRef | None:
        """The model `run` trains against (None: reference-free, or a mixture, which has several): a fixed or moving
        reference as prepare resolved it, or a `trained` one's policy, once the run that trains it is done."""
        ref = reference_config(self.exp, run.reference)
        if ref is None or ref.kind == "mixture":
            return None
        if ref.kind != "trained":
            return self.model("references", ref.name)
        named = find_run(self.exp, ref.run, str(self.exp_dir.spec))
        where = f"{self.exp_dir.root}: run {run.run_id}"
        state = run_state(self.exp_dir, self.exp, named, self.plan["models"])
        if state.status not in EVALUATED:
            raise UserError(
                where,
                f"trains against {ref.name}, the policy of run {ref.run}, which is {state.status}; run {ref.run} "
                "first (the study command runs it in an earlier wave)",
            )
        return resolve(str(self.exp_dir.run(ref.run).policy), where=f"{where} (reference {ref.name})")

    def split(self, split: str, run: RunSpec, trained: dict | None = None) -> datasets.Dataset:
        """The tokenized split with `ref_chosen_logps` / `ref_rejected_logps` of the run's objective (zeros for
        reference-free objectives), the columns TRL's DPOTrainer reads. `trained`: a `trained` reference's scores of
        these pairs ({split: {"chosen": ..., "rejected": ...}}, in row order), which prepare could not compute."""
        ds = self.pairs[split]
        extra = [c for c in ds.column_names if c.startswith(("ref:", "p_lm:"))]
        mode = run.registered.reference if run.registered else None
        if mode is None:
            return ds.remove_columns(extra)
        if mode == "none":
            zeros = [0.0] * len(ds)
            ds = ds.remove_columns(extra).add_column("ref_chosen_logps", zeros)
            return ds.add_column("ref_rejected_logps", zeros)
        ref = reference_config(self.exp, run.reference)  # None: the unconditional p_LM(y) (likelihood)
        if ref is not None and ref.kind == "trained":
            if trained is None:
                raise ValueError(f"{run.run_id}: a trained reference's scores are computed by the run, not prepare")
            ds = ds.remove_columns(extra).add_column("ref_chosen_logps", trained[split]["chosen"].tolist())
            return ds.add_column("ref_rejected_logps", trained[split]["rejected"].tolist())
        weights = ref.mix if ref is not None and ref.mix else {run.reference: 1.0}  # a mixture: several passes
        parts = {name: columns(name, mode == "unconditional") for name in weights}
        if any(chosen not in ds.column_names for chosen, _ in parts.values()):
            raise UserError(
                str(self.exp_dir.root), f"prepared data has no scores for {run.run_id}; run the study again"
            )
        if len(parts) == 1:
            chosen, rejected = parts[run.reference]
            ds = ds.remove_columns([c for c in extra if c not in (chosen, rejected)])
            return ds.rename_columns({chosen: "ref_chosen_logps", rejected: "ref_rejected_logps"})
        mixed = {
            f"ref_{side}_logps": sum(w * np.asarray(ds[parts[n][i]], dtype=np.float64) for n, w in weights.items())
            for i, side in enumerate(("chosen", "rejected"))
        }
        ds = ds.remove_columns(extra)
        return ds.add_column("ref_chosen_logps", mixed["ref_chosen_logps"].tolist()).add_column(
            "ref_rejected_logps", mixed["ref_rejected_logps"].tolist()
        )

    def benchmark(self) -> Benchmark:
        exp = self.exp
        judge = make_judge(exp, self.model("judge") if self.plan["models"]["judge"] else None)
        test, val = (read_baseline(self.exp_dir, name) for name in BASELINES)
        return Benchmark(test, val, judge, exp.eval)

    def kl_references(self, run: RunSpec) -> tuple[ReferenceScorer, ReferenceScorer | None]:
        """The scorers of the two KLs: against the run's reference (reference-free runs and the SFT row: the SFT
        policy), and against the SFT policy when that is another model (else None: the first KL is that one)."""
        policy = self.model("policy")
        tokenizer = load_tokenizer(policy)
        args = (tokenizer, self.exp.eval.batch_size, self.exp.train.precision)
        ref_config = reference_config(self.exp, run.reference)
        mix = ref_config.mix if ref_config is not None else None
        if mix:  # KL against the mixture: its log-probs are the weighted sum of its components'
            parts = [(ReferenceScorer(self.model("references", n), *args), w) for n, w in mix.items()]
            return MixtureScorer(parts), ReferenceScorer(policy, *args)
        ref = self.reference_model(run) or policy
        is_policy = run.objective == "sft" and ref.fingerprint == policy.fingerprint
        sft = None if ref.fingerprint == policy.fingerprint else ReferenceScorer(policy, *args)
        return ReferenceScorer(ref, *args, is_policy), sft
