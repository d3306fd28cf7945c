"""The YAML experiment as pydantic models: unknown keys rejected, types strict, ranges checked.

Every field's `description` is its documentation: docs/reference.md (the YAML reference) and `dporef ... --help` are
built from the same text.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..errors import UserError
from .launch import LaunchConfig
from .objective import ObjectiveGrid
from .reference import ReferenceConfig
from .strict import MAX_STEPS, Strict
from .world import WorldConfig

MAX_SEED = 2**32 - 1  # numpy's seeds (transformers.set_seed seeds numpy too) are 0 .. 2**32 - 1


class LoraSettings(Strict):
    """LoRA adapters (peft) on the policy: only they train, the base weights stay the SFT model's."""

    r: int = Field(8, ge=1, le=4096, description="Rank of each LoRA update (the adapter's inner dimension).")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: an update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input while training.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Names of the linear layers given adapters, e.g. [q_proj, v_proj], or `all-linear`. Default "
        "(null): peft's choice for the architecture (q_proj and v_proj for Llama and Mistral).",
    )


class TrainConfig(Strict):
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak learning rate of AdamW (default suits the embedded world; paper: 5e-7 for 7B)."
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the preference pairs (paper: 3).")
    max_steps: int = Field(
        -1, ge=-1, le=MAX_STEPS, description="Stop after this many optimizer steps; -1 uses `epochs`."
    )
    batch_size: int = Field(16, ge=1, description="Pairs per micro-batch of one process (paper: 4 per GPU).")
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step over all processes: the global batch is batch_size x "
        "grad_accum whatever the launcher (paper: 4 x 8 = 32). Under `accelerate launch` with N processes each "
        "accumulates grad_accum / N, so N must divide it.",
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up (paper: 0.1).")
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field("linear", description="LR schedule.")
    max_length: int = Field(1024, ge=8, description="Tokens kept of prompt + response (start kept); paper: 2048.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto`: bf16 on a GPU that supports it, fp32 on CPU."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="`auto`: on for GPU runs of models over 1B parameters, off otherwise."
    )
    logging_steps: int = Field(10, ge=1, le=MAX_STEPS, description="Log training metrics every this many steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        [],
        description="Experiment trackers that receive each run's training metrics, as in TRL scripts: each run is "
        "named by its run id, with the resolved experiment as its config; tensorboard writes to the experiment's "
        "`tracking/` (`tensorboard --logdir <exp>/tracking`), wandb runs offline with `WANDB_MODE=offline`. The "
        "tracker's package must be installed (`pip install dporef[trackers]` for tensorboard). Does not change a "
        "run's result, so finished runs are kept when it changes. Default: none.",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="Checkpoint choice: every N steps compute the objective's loss on the validation pairs and keep "
        "the checkpoint where it is lowest (the paper: DPO loss, every 500 steps); a moving reference's runs measure "
        "it against the reference's fixed starting point. Default (null): keep the final policy.",
    )
    checkpoint_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="Save a full checkpoint (weights, optimizer, scheduler, RNG state) every N optimizer steps in the "
        "run's `trainer/`, so that a run killed or interrupted (Ctrl-C, SIGTERM) resumes from its last checkpoint "
        "when run again, with the same result as an uninterrupted run; each checkpoint step is also a logging step. "
        "Default (null): no periodic checkpoints, an interrupted run starts over.",
    )
    lora: LoraSettings | None = Field(
        None,
        description="Train LoRA adapters instead of every weight (`{r, alpha, dropout, target_modules}`); the run's "
        "`policy/` then holds the adapter, loaded on its base wherever the policy is used. Default (null): full "
        "fine-tuning.",
    )
    quantize: Literal["4bit"] | None = Field(
        None,
        description="`4bit`: QLoRA, the policy's base weights loaded in 4-bit NF4 with bitsandbytes (CUDA GPU only, "
        "`pip install dporef[gpu]`; needs `lora`). Default (null): the weights in `precision`.",
    )

    def accumulation_per_process(self, processes: int) -> int:
        """Micro-batches each of `processes` accumulates per optimizer step, keeping the global batch: a launcher
        never changes what a run computes."""
        if self.grad_accum % processes:
            raise UserError(
                "train.grad_accum",
                f"{self.grad_accum} is not a multiple of the {processes} processes training together (the global "
                f"batch is batch_size x grad_accum, each process accumulating grad_accum / processes); set it to a "
                f"multiple of {processes}",
            )
        return self.grad_accum // processes

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (train for `epochs`) or at least 1 step")
        return v


class EvalConfig(Strict):
    max_new_tokens: int = Field(32, ge=1, description="Generation limit; a response that hits it has no EOS.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(128, ge=1, description="Prompts per generation / scoring batch.")
    n_prompts: int | None = Field(None, ge=1, description="Evaluate on the first N held-out prompts (default: all).")
    prompts: str | None = Field(
        None,
        description="Held-out test prompts the policies are judged on. Default: the data's own (world and "
        "instructions: their evaluation prompts; hub/local data: `data.test_share` of the validation split's "
        "prompts). Or a local file or hub dataset with an `instruction` or `prompt` column, e.g. AlpacaEval's 805 "
        "prompts. Validation pairs on a test prompt are set aside: test and validation prompts never overlap.",
    )
    seed: int = Field(1234, ge=0, le=MAX_SEED, description="Seed of the policies' samples.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="What samples the policies and the SFT baseline: `transformers` (batched generate with the KV "
        "cache, any device) or `vllm` (GPU only, `pip install vllm`; full-weight policies, not LoRA adapters). Same "
        "records either way; scoring always runs in transformers.",
    )
    baseline_seed: int = Field(
        4321, ge=0, le=MAX_SEED, description="Seed of the SFT baseline's samples every policy is judged against."
    )


class InstructionsConfig(Strict):
    n_train_prompts: int = Field(256, ge=1, description="Prompts sampled for training pairs (one pair per prompt).")
    n_validation_prompts: int = Field(32, ge=1, description="Prompts sampled for validation pairs.")
    n_eval_prompts: int = Field(64, ge=1, description="Held-out prompts the policies are judged on.")
    extra_train_prompts: int = Field(
        0,
        ge=0,
        description="Training prompts beyond `n_train_prompts`, drawn after the validation and evaluation prompts, "
        "so that those stay the ones the same settings give without them: a model trained on more pairs (a stronger "
        "reference) is judged on the held-out prompts of the runs trained against it, none of which it trained on.",
    )
    samples_per_prompt: int = Field(
        4, ge=2, description="Policy samples per prompt; `pairing` picks the chosen and the rejected among them."
    )
    max_new_tokens: int = Field(96, ge=1, description="Token budget of each sample (a sample that hits it has no EOS).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the pairs' responses.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the prompts and of the samples.")
    pairing: Literal["best_worst", "both_ended", "length_matched"] = Field(
        "best_worst",
        description="Which two samples of a prompt make its pair. `best_worst`: the best and the worst by the checks "
        "(ending with EOS being one of them). When most worst samples ran out of budget, DPO then mostly learns to "
        "stop sooner (a length confound), so `both_ended` takes the best and the worst of the samples that ended, and "
        "`length_matched` the pair with the largest score gap among pairs of equal ended status whose token lengths "
        "are within `length_tolerance`: in both, the instruction checks decide, not ending. Prompts without such a "
        "pair are skipped, counted by reason in the pairs' stats.json (docs/real-models.md).",
    )
    length_tolerance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="`length_matched` only: the largest relative difference between the token lengths a and b of a "
        "pair's two responses (their text in the policy's tokenizer), abs(a - b) <= tolerance * max(a, b), so that "
        "neither side is preferred for its length. Default: 0.25.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tolerance_for_length_matched(cls, data):
        if not isinstance(data, dict):
            return data
        pairing = data.get("pairing", "best_worst")
        if pairing == "length_matched":  # its default tolerance, as ReferenceConfig fills a kind's own settings
            return {"length_tolerance": 0.25} | {k: v for k, v in data.items() if v is not None}
        if data.get("length_tolerance") is not None:
            raise ValueError(f"length_tolerance: read by pairing: length_matched only, not by pairing: {pairing}")
        return data

    def identity(self) -> dict:
        """The settings that decide the pairs, for cache keys and run hashes: `extra_train_prompts` only when some
        are asked for, so the pairs and runs of experiments written before it keep their keys."""
        return self.model_dump(exclude=None if self.extra_train_prompts else {"extra_train_prompts"})

    @property
    def train_prompts(self) -> int:
        """Every prompt sampled for a training pair."""
        return self.n_train_prompts + self.extra_train_prompts


class DataConfig(Strict):
    source: str = Field(
        "world",
        description="`world` (the embedded world's pairs); `instructions` (pairs dporef builds by sampling the policy "
        "on prompts with checkable instructions, see `instructions`); a hub dataset id read from the local cache; or a "
        "local file or directory (json, jsonl, parquet, csv) with prompt/chosen/rejected as strings or as chat "
        "messages (UltraFeedback-binarized's schema). A plain string `data: X` means `data: {source: X}`.",
    )
    train_split: str = Field("train", description="Split to train on (UltraFeedback: train_prefs).")
    validation_split: str = Field(
        "validation",
        description="Split for checkpoint choice, ranking accuracy and best-beta selection (UltraFeedback: test_prefs);"
        " when the source has none, 5% of the training pairs are held out.",
    )
    max_train_pairs: int | None = Field(None, ge=1, description="Keep the first N training pairs (default: all).")
    max_validation_pairs: int | None = Field(None, ge=1, description="Keep the first N validation pairs (default all).")
    test_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Hub/local data without `eval.prompts`: the share of the validation split's prompts held out as "
        "test prompts, their pairs removed from validation, so that nothing chosen on validation (best beta, "
        "tune-beta, checkpoints) is reported on the prompts it was chosen on.",
    )


class JudgeConfig(Strict):
    kind: Literal["builtin", "instructions", "reward-model"] = Field(
        "builtin",
        description="`builtin`: the data's own programmatic reward (the world's gold reward; the instruction checks of "
        "`data: instructions`); `instructions`: the instruction checks, for any data whose prompts carry dporef's "
        "checkable instructions; win = higher reward, tie 0.5. `reward-model`: a Hugging Face sequence-classification "
        "reward model; win probability sigmoid(r(x, y) - r(x, y_base)).",
    )
    model: str | None = Field(
        None, description="Reward model spec (kind `reward-model`): a local directory or a hub id in the local cache."
    )
    batch_size: int = Field(32, ge=1, description="Responses per reward-model forward pass.")

    @model_validator(mode="after")
    def _model_iff_reward_model(self) -> JudgeConfig:
        if self.kind == "reward-model" and not self.model:
            raise ValueError("kind reward-model needs `model` (a reward model spec)")
        if self.kind != "reward-model" and self.model:
            raise ValueError("`model` is only used with kind reward-model")
        return self


class Experiment(Strict):
    name: str = Field(description="Experiment name: the results directory is `<out>/<name>/`.")
    world: WorldConfig = Field(default_factory=WorldConfig, description="Settings of the embedded world.")
    policy: str = Field("world:sft", description="Model spec of the SFT policy every run starts from.")
    data: DataConfig = Field(default_factory=DataConfig, description="Preference data (see `data`).")
    instructions: InstructionsConfig = Field(
        default_factory=InstructionsConfig, description="Settings of `data: instructions` (see `instructions`)."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, validate_default=True, description="Who judges responses (see `judge`)."
    )
    references: list[ReferenceConfig] = Field(
        default_factory=lambda: [ReferenceConfig(name="sft", model="world:sft")],
        min_length=1,
        description="References to train against; objectives without a reference ignore them.",
    )
    objectives: list[ObjectiveGrid] = Field(min_length=1, description="Objectives, each with its beta grid.")
    seeds: list[int] = Field([0], min_length=1, description="Training seeds; each is a separate run.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings shared by all runs.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings shared by all runs.")
    launch: LaunchConfig = Field(
        default_factory=LaunchConfig, description="Where the runs execute (see `launch`); never part of a run's hash."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return ReferenceConfig._safe_name(v)

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, v):
        return {"source": v} if isinstance(v, str) else v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(not 0 <= s <= MAX_SEED for s in v):
            raise ValueError(f"every seed must be in 0 .. {MAX_SEED}")
        if len(set(v)) < len(v):
            raise ValueError("each seed once: a value repeats (the same runs twice)")
        return v

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, grids: list[ObjectiveGrid]) -> list[ObjectiveGrid]:
        names = [g.label or g.name for g in grids]
        if len(set(names)) < len(names):
            raise ValueError(
                f"each objective once (put all its betas in one grid, or give a second one a `label`); names: {names}"
            )
        return grids

    @field_validator("references")
    @classmethod
    def _unique_references(cls, refs: list[ReferenceConfig]) -> list[ReferenceConfig]:
        names = [r.name for r in refs]
        if len(set(names)) != len(names):
            raise ValueError(f"reference names must be unique, got {names}")
        return refs

    @model_validator(mode="after")
    def _objective_references(self) -> Experiment:
        names = [r.name for r in self.references]
        for i, grid in enumerate(self.objectives):
            unknown = [n for n in grid.references or [] if n not in names]
            if unknown:
                raise ValueError(f"objectives.{i}.references: {unknown} not among the references {names}")
            if grid.references and len(set(grid.references)) < len(grid.references):
                raise ValueError(f"objectives.{i}.references: each reference once, got {grid.references}")
        return self

    @model_validator(mode="after")
    def _mixtures(self) -> Experiment:
        kinds = {r.name: r.kind for r in self.references}
        for i, ref in enumerate(self.references):
            if ref.kind != "mixture":
                continue
            bad = [n for n in ref.mix if kinds.get(n) != "fixed"]
            if bad or len(ref.mix) < 2:
                raise ValueError(f"references.{i}.mix: two or more fixed references listed here, got {sorted(ref.mix)}")
            if min(ref.mix.values()) <= 0 or abs(sum(ref.mix.values()) - 1) > 1e-6:
                raise ValueError(f"references.{i}.mix: weights > 0 that sum to 1, got {ref.mix}")
        return self

    @model_validator(mode="after")
    def _moving_references(self) -> Experiment:
        for i, ref in enumerate(self.references):
            if ref.kind not in ("moving", "bema"):
                continue
            if ref.model != self.policy:
                raise ValueError(
                    f"references.{i}: a {ref.kind} reference starts as the policy (its weights are mixed with the "
                    f"policy's), so its model must be {self.policy!r}, not {ref.model!r}"
                )
            if self.train.lora is not None:
                raise ValueError(
                    f"references.{i}: a {ref.kind} reference needs full fine-tuning (TRL cannot update it "
                    "with LoRA adapters); remove train.lora or use kind: fixed"
                )
            if ref.kind == "bema" and self.train.checkpoint_steps is not None:
                raise ValueError(
                    f"references.{i}: kind: bema does not resume from checkpoints (its running averages are not "
                    "saved in them); remove train.checkpoint_steps"
                )
        return self
