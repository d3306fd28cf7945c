"""Expand an experiment, score each reference once, train and evaluate every pending run, rebuild the report.

Each run is a self-contained unit of work with inputs on disk and outputs in `<out>/<experiment>/<run-id>/`:
`run.yaml` (spec + config hash), `status.json` (pending -> running -> done | diverged | failed), `metrics.json`,
`generations.jsonl`, `policy/`. A run is skipped when its status is `done` and its config hash matches, so re-running a
command resumes after a crash and a finished experiment only rebuilds its tables.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from . import data as data_mod
from . import instructions
from .alpaca import MODEL_OUTPUTS, export_model_outputs, generator_name
from .config import Experiment, RunSpec, expand
from .errors import UserError
from .evaluate import Generations, PromptSet, evaluate_policy, generate
from .judges import Judge, RewardModelJudge, RuleJudge
from .models import ModelRef, load_model, load_tokenizer, resolve, use_bf16
from .objectives import OBJECTIVES
from .reference import ReferenceEngine, sequence_logps, similarity
from .report import (
    BEST_COLUMNS,
    BEST_RULE,
    SIMILARITY_COLUMNS,
    best_per_method,
    collect,
    rich_table,
    shown_columns,
    write_report,
)
from .store import atomic_dir, atomic_write_json, atomic_write_text, content_hash, read_json
from .ui import console, stdout
from .world import build_world


@dataclass(frozen=True)
class Study:
    title: str
    default: str  # the embedded default experiment, relative to the repository root
    tables: tuple[str, ...]  # study-specific views in results.md (see report.write_report)
    similarity: bool = False  # measure how alike each reference is to the policy (similarity.json)


STUDIES = {
    "sweep-beta": Study("RQ1: DPO across beta for one reference", "experiments/rq1_sweep_beta/default.yaml", ("grid",)),
    "compare-objectives": Study(
        "RQ2: DPO vs objectives without a reference or with an unconditional one",
        "experiments/rq2_compare_objectives/default.yaml",
        ("grid", "best"),
    ),
    "swap-reference": Study(
        "RQ3: references of other strength, family and tokenizer, across beta",
        "experiments/rq3_swap_reference/default.yaml",
        ("grid", "best"),
        similarity=True,
    ),
}


def check_study(exp: Experiment, study: str, source: str) -> None:
    """Each command studies one axis; refuse experiments that do not fit it, naming the key."""
    if study in ("sweep-beta", "compare-objectives") and len(exp.references) != 1:
        raise UserError(f"{source}: references", f"{study} takes exactly one reference, got {len(exp.references)}")


FINISHED = ("done", "degenerate", "diverged")  # statuses a rerun skips; their numbers are reported as they are


def run_hash(exp: Experiment, run: RunSpec) -> str:
    """Hash of everything that determines a run's result; a finished run with another hash is run again."""
    ref = next((r.model for r in exp.references if r.name == run.reference), None)
    # the untrained SFT row depends on the training settings only through max_length (validation truncation)
    train = exp.train.max_length if run.objective == "sft" else exp.train.model_dump()
    parts = [
        exp.world.model_dump() if exp.uses_world() else None,
        exp.policy,
        exp.data.model_dump(),
        exp.instructions.model_dump() if exp.data.source == "instructions" else None,
        exp.judge.model_dump(),
        ref,
        train,
        exp.eval.model_dump(),
        run.model_dump(),
    ]
    return content_hash(parts)


def is_done(exp_dir: Path, exp: Experiment, run: RunSpec) -> bool:
    run_dir = exp_dir / run.run_id
    try:
        status = read_json(run_dir / "status.json")
        meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return status.get("status") in FINISHED and meta.get("config_hash") == run_hash(exp, run)


def estimated_steps(exp: Experiment, n_pairs: int) -> int:
    if exp.train.max_steps > 0:
        return exp.train.max_steps
    per_epoch = math.ceil(n_pairs / (exp.train.batch_size * exp.train.grad_accum))
    return math.ceil(per_epoch * exp.train.epochs)


def plan_text(exp: Experiment, runs: list[RunSpec], exp_dir: Path) -> str:
    """The expanded plan `--dry-run` prints: runs, references to score, steps per run."""
    n_pairs = {"world": exp.world.n_train_pairs, "instructions": exp.instructions.n_train_prompts}
    steps = estimated_steps(exp, n_pairs[exp.data.source]) if exp.data.source in n_pairs else None
    judge = exp.judge.kind + (f" {exp.judge.model}" if exp.judge.model else "")
    lines = [
        f"experiment {exp.name} -> {exp_dir}",
        f"policy: {exp.policy}   data: {exp.data.source}   judge: {judge}",
        "references to score:",
    ]
    needed = set()
    for run in runs:
        mode = OBJECTIVES[run.objective].reference if run.objective != "sft" else "none"
        if mode == "conditional":
            needed.add(
                (
                    run.reference,
                    next(r.model for r in exp.references if r.name == run.reference),
                    "p_ref(y|x)",
                )
            )
        elif mode == "unconditional":
            needed.add(("policy", exp.policy, "p_LM(y), no prompt"))
    lines += [f"  {name}: {spec} [{mode}]" for name, spec, mode in sorted(needed)] or ["  (none)"]
    lines.append(f"runs ({len(runs)}, ~{steps if steps is not None else '?'} optimizer steps each):")
    for run in runs:
        state = "done" if is_done(exp_dir, exp, run) else "pending"
        lines.append(
            f"  {run.run_id:<32} objective={run.objective:<10} reference={run.reference or '-':<8} "
            f"beta={'-' if run.beta is None else f'{run.beta:g}':<7} seed={run.seed}  [{state}]"
        )
    return "\n".join(lines)


@dataclass(eq=False)  # hashed by identity: `reference` memoizes per Context
class Context:
    """What every run of one command shares: the data, its tokenization, the judge, reference scores and the SFT
    baseline."""

    exp: Experiment
    exp_dir: Path
    engine: ReferenceEngine = field(default_factory=ReferenceEngine)
    world: object = None  # the embedded world, built only when the experiment uses it
    policy: ModelRef | None = None
    tokenizer: object = None
    tokenized: object = None
    pairs_fp: str = ""
    pairs: object = None
    judge: Judge | None = None
    test: PromptSet | None = None  # held-out evaluation prompts + SFT baseline rewards
    val: PromptSet | None = None  # validation pairs' prompts + SFT baseline rewards (for model selection only)

    def setup(self) -> None:
        exp = self.exp
        if exp.uses_world():
            t0 = time.time()
            self.world = build_world(exp.world)
            console.print(f"world ready in {time.time() - t0:.1f}s: {self.world.root}")
        self.policy = resolve(exp.policy, self.world, where="policy")
        self.tokenizer = load_tokenizer(self.policy)
        data = data_mod.load_data(exp, self.world, self.policy, self.tokenizer)
        for note in data.notes:
            console.print(note)
        self.pairs = data.pairs
        self.pairs_fp = data_mod.pairs_fingerprint(self.pairs)
        if exp.judge.kind == "builtin":
            self.judge = RuleJudge(exp.data.source, data.scorer)
        elif exp.judge.kind == "instructions":
            self.judge = RuleJudge("instructions", instructions.score)
        else:
            model = resolve(exp.judge.model, self.world, where="judge.model")
            self.judge = RewardModelJudge(model, exp.judge.batch_size, exp.train.precision)
        self.tokenized, report = data_mod.tokenize_pairs(self.pairs, self.tokenizer, exp.train.max_length)
        for split in self.tokenized:
            console.print(
                f"pairs ({split}): {report.kept[split]} kept, {report.truncated[split]} truncated to "
                f"max_length, {report.dropped_prompt_too_long[split]} dropped (prompt fills max_length)"
            )
        prompts = data_mod.load_prompts(exp.eval.prompts) if exp.eval.prompts else data.eval_prompts
        self.test = self._baseline("test", prompts[: exp.eval.n_prompts] if exp.eval.n_prompts else prompts)
        self.val = self._baseline("validation", data_mod.unique_prompts(self.pairs["validation"]["prompt"]))

    def _baseline(self, name: str, prompts: list) -> PromptSet:
        """The SFT model's samples (baseline seed) on `prompts`, judged once per experiment, judge and config."""
        exp = self.exp
        key = content_hash([self.policy.fingerprint, exp.eval.model_dump(), self.judge.key, prompts])
        path = self.exp_dir / "baseline" / f"{name}.jsonl"
        meta_path = self.exp_dir / "baseline" / f"{name}.meta.json"
        if meta_path.is_file() and read_json(meta_path).get("key") == key:
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            return PromptSet(prompts, [r["reward"] for r in rows], [r["length"] for r in rows])
        model = load_model(self.policy, bf16=use_bf16(exp.train.precision))
        gens = generate(model, self.tokenizer, prompts, exp.eval, exp.eval.baseline_seed, desc=f"sampling SFT ({name})")
        del model
        rewards = self.judge.rewards(gens.prompts, gens.responses, gens.ended).tolist()
        write_generations(path, gens, rewards)
        atomic_write_json(meta_path, {"key": key, "policy": exp.policy, "seed": exp.eval.baseline_seed})
        return PromptSet(prompts, rewards, gens.lengths)

    def reference_columns(self, run: RunSpec) -> dict | None:
        """Cached reference scores this run's objective reads, scoring them now if no cache entry exists."""
        mode = OBJECTIVES[run.objective].reference
        if mode == "none":
            return None
        ref = self.policy if mode == "unconditional" else self.reference(run.reference)
        return self.scores(ref, unconditional=mode == "unconditional")

    def scores(self, ref: ModelRef, unconditional: bool = False) -> dict:
        """{split: {chosen, rejected}} of `ref` over the pairs, from the engine (computed once per command)."""
        return self.engine.pair_scores(
            ref,
            self.pairs,
            self.pairs_fp,
            self.exp.train.max_length,
            self.exp.eval.batch_size,
            unconditional=unconditional,
            precision=self.exp.train.precision,
        )

    @functools.cache  # noqa: B019 - one Context per command; resolving hashes the model's files
    def reference(self, name: str) -> ModelRef:
        spec = next(r.model for r in self.exp.references if r.name == name)
        return resolve(spec, self.world, where=f"references.{name}")

    def similarity(self) -> dict[str, dict]:
        """For each reference: how alike it is to the SFT policy on the training pairs, before any training."""
        policy = self.scores(self.policy)["train"]
        return {
            r.name: {"model": r.model, **similarity(policy, self.scores(self.reference(r.name))["train"])}
            for r in self.exp.references
        }

    def with_reference(self, split: str, run: RunSpec):
        """The tokenized split with `ref_chosen_logps` / `ref_rejected_logps` joined by pair index (zeros if none)."""
        ds = self.tokenized[split]
        cols = self.reference_columns(run)
        idx = np.asarray(list(ds["pair_index"]))
        chosen = cols[split]["chosen"][idx] if cols else np.zeros(len(ds))
        rejected = cols[split]["rejected"][idx] if cols else np.zeros(len(ds))
        ds = ds.remove_columns([c for c in ("ref_chosen_logps", "ref_rejected_logps") if c in ds.column_names])
        return ds.add_column("ref_chosen_logps", chosen.tolist()).add_column("ref_rejected_logps", rejected.tolist())

    def kl_reference(self, run: RunSpec) -> ModelRef:
        """KL is measured against the run's reference; reference-free runs (and the SFT row) against the SFT policy."""
        return self.policy if run.reference is None else self.reference(run.reference)


def write_generations(path: Path, gens: Generations, rewards: list[float]) -> None:
    lines = [json.dumps({**row, "reward": r}) for row, r in zip(gens.rows(), rewards)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def execute(ctx: Context, run: RunSpec) -> None:
    """Train (unless it is the SFT row) and evaluate one run; every file lands atomically in its directory."""
    exp, run_dir = ctx.exp, ctx.exp_dir / run.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted or stale attempt: start it over
    run_dir.mkdir(parents=True)
    atomic_write_text(
        run_dir / "run.yaml",
        yaml.safe_dump(
            {"experiment": exp.name, "config_hash": run_hash(exp, run), "run": run.model_dump()},
            sort_keys=False,
        ),
    )
    atomic_write_json(run_dir / "status.json", {"status": "running", "started": time.time()})
    bf16 = use_bf16(exp.train.precision)
    model = load_model(ctx.policy, bf16=bf16)
    if bf16 and run.objective != "sft" and sum(p.numel() for p in model.parameters()) < 1e9:
        model.float()  # small models train with fp32 master weights under bf16 autocast; large ones stay in bf16
    metrics: dict = {
        "run_id": run.run_id,
        "steps": 0,
        "train_seconds": 0.0,
        "train_loss": None,
        "history": [],
    }
    objective = OBJECTIVES.get(run.objective)  # None for the untrained SFT row
    validation = ctx.with_reference("validation", run) if objective else ctx.tokenized["validation"]
    if objective is not None:
        from .train import train_policy

        train = ctx.with_reference("train", run)
        t0 = time.time()
        history, best_step = train_policy(model, ctx.tokenizer, train, validation, exp.train, run, run_dir / "trainer")
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
        metrics.update(
            history=history,
            checkpoint_step=best_step,  # None: the final policy
            train_seconds=time.time() - t0,
            steps=max((h.get("step", 0) for h in history), default=0),
            train_loss=next((h["train_loss"] for h in history if "train_loss" in h), None),
        )
        with atomic_dir(run_dir / "policy") as tmp:
            model.save_pretrained(tmp)
            ctx.tokenizer.save_pretrained(tmp)

    def implicit_rewards(chosen, rejected, chosen_len, rejected_len):
        if objective is None:  # the SFT row has no implicit reward: r = 0 for every response
            return np.zeros_like(chosen), np.zeros_like(rejected)
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
        _, c, r = objective.fn(
            t(chosen),
            t(rejected),
            t(list(validation["ref_chosen_logps"])),
            t(list(validation["ref_rejected_logps"])),
            t(chosen_len),
            t(rejected_len),
            run.beta,
            gamma=run.gamma,
        )
        return c.numpy(), r.numpy()

    kl_ref = ctx.kl_reference(run)

    def ref_logps_of(gens: Generations) -> np.ndarray:
        if kl_ref.fingerprint == ctx.policy.fingerprint and run.objective == "sft":
            return sequence_logps(model, gens.sequences(), exp.eval.batch_size, desc="scoring samples under reference")
        ref_tok = load_tokenizer(kl_ref)
        if ref_tok.get_vocab() == ctx.tokenizer.get_vocab() and ref_tok.chat_template == ctx.tokenizer.chat_template:
            ref_model = load_model(kl_ref, bf16=bf16)  # loaded only now, after training, and freed right after
            return sequence_logps(
                ref_model, gens.sequences(), exp.eval.batch_size, desc="scoring samples under reference"
            )
        return ctx.engine.text_scores(
            kl_ref, gens.prompts, gens.responses, gens.ended, exp.eval.batch_size, exp.train.precision
        )

    t0 = time.time()
    result, gens, rewards = evaluate_policy(
        model,
        ctx.tokenizer,
        ctx.test,
        ctx.val,
        ctx.judge,
        ref_logps_of,
        implicit_rewards,
        validation,
        exp.eval,
        exp.train.max_length,
    )
    write_generations(run_dir / "generations.jsonl", gens, rewards)
    export_model_outputs(run_dir / MODEL_OUTPUTS, gens, generator_name(exp.name, run.run_id), exp.data.source)
    metrics.update(eval=result.as_dict(), eval_seconds=time.time() - t0)
    atomic_write_json(run_dir / "metrics.json", metrics)
    status = {"status": "degenerate", "reason": result.degenerate} if result.degenerate else {"status": "done"}
    atomic_write_json(run_dir / "status.json", {**status, "finished": time.time()})
    if result.degenerate:
        console.print(f"[yellow]degenerate[/]: {run.run_id}: {result.degenerate}")


def judge_description(exp: Experiment) -> str:
    if exp.judge.kind == "reward-model":
        return f"the reward model {exp.judge.model} (sigmoid of the reward difference)"
    source = "instructions" if exp.judge.kind == "instructions" else exp.data.source
    own = {"world": "the world's gold reward", "instructions": "the instruction checks"}[source]
    return f"{own} (higher reward wins, ties 0.5)"


def report(exp_dir: Path, exp: Experiment, study: str, extra: dict | None = None) -> None:
    """Rebuild the results files from the run directories on disk and print the tables."""
    rows = collect(exp_dir, [r.run_id for r in expand(exp)])
    sim_path = exp_dir / "similarity.json"
    sim = read_json(sim_path) if sim_path.is_file() else None
    write_report(
        exp_dir,
        rows,
        f"{exp.name} ({STUDIES[study].title})",
        STUDIES[study].tables,
        extra=extra,
        similarity=sim,
        judge=judge_description(exp),
    )
    stdout.print(rich_table(rows, shown_columns(rows), f"{exp.name}: {STUDIES[study].title}"))
    if "best" in STUDIES[study].tables:
        best = best_per_method(rows, sim)
        columns = BEST_COLUMNS + (SIMILARITY_COLUMNS if sim else [])
        stdout.print(rich_table(best, columns, f"best beta per method ({BEST_RULE})"))


def run_experiment(exp: Experiment, out: Path, study: str, source: str, dry_run: bool = False) -> int:
    """Run every pending run of `exp` and rebuild its report; returns the number of runs that failed."""
    check_study(exp, study, source)
    exp_dir = Path(out) / exp.name
    runs = expand(exp)
    if dry_run:
        stdout.print(plan_text(exp, runs, exp_dir), markup=False, soft_wrap=True)
        return 0
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir / "experiment.yaml", yaml.safe_dump(exp.model_dump(), sort_keys=False))
    atomic_write_json(exp_dir / "command.json", {"study": study, "experiment_file": source})
    pending = [r for r in runs if not is_done(exp_dir, exp, r)]
    for r in runs:
        if r not in pending:
            console.print(f"[green]already done[/]: {r.run_id}")
    ctx = Context(exp, exp_dir)
    failed = 0
    t_start = time.time()
    if pending:
        ctx.setup()
        for i, run in enumerate(pending, 1):
            console.rule(f"[bold]{run.run_id}[/] ({i}/{len(pending)})")
            try:
                execute(ctx, run)
            except FloatingPointError as e:
                atomic_write_json(exp_dir / run.run_id / "status.json", {"status": "diverged", "error": str(e)})
                console.print(f"[red]diverged[/]: {run.run_id}: {e}")
            except KeyboardInterrupt:
                console.print(f"[yellow]interrupted during {run.run_id}; run the same command again to resume")
                raise
            except UserError:
                raise
            except Exception as e:  # one broken run must not lose the others; its traceback is kept on disk
                failed += 1
                atomic_write_json(
                    exp_dir / run.run_id / "status.json",
                    {"status": "failed", "error": repr(e), "traceback": traceback.format_exc()},
                )
                console.print(f"[red]failed[/]: {run.run_id}: {e!r}")
    if STUDIES[study].similarity and (pending or not (exp_dir / "similarity.json").is_file()):
        if ctx.policy is None:
            ctx.setup()
        atomic_write_json(exp_dir / "similarity.json", ctx.similarity())
    scoring = {"computed": ctx.engine.computed, "from_cache": ctx.engine.cached}
    report(exp_dir, exp, study, extra={"reference_scoring": scoring, "wall_seconds": time.time() - t_start})
    console.print(
        f"reference scoring passes: {scoring['computed']} computed, {scoring['from_cache']} from cache; "
        f"{len(runs) - len(pending)} of {len(runs)} runs already done; "
        f"wall time {time.time() - t_start:.1f}s; results in {exp_dir}"
    )
    return failed
