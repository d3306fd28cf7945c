"""`launch:` in an experiment: where each run's `dporef run-one` executes. Launchers change where runs execute,
never what they compute, so nothing here enters a run's config hash."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LAUNCHERS = ("local", "accelerate", "slurm")
RESERVED_SBATCH = ("array", "dependency", "output", "error", "job-name")  # set by the slurm launcher itself
SBATCH_VALUE = str | int | float | bool


class _Strict(BaseModel):
    # as config.schema.Strict: no unknown key, no NaN, strict types (a boolean or a string is never a number)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True)


class AccelerateConfig(_Strict):
    config: str = Field(
        "ddp",
        description="accelerate's config for each run: one dporef ships in experiments/accelerate/ by name (`ddp`: "
        "DDP across the node's GPUs; `zero3`: DeepSpeed ZeRO-3 in bf16, as the paper; `fsdp`: FSDP2; `cpu`: 2 "
        "processes on CPU with gloo) or the path of your own (`accelerate config` writes one).",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Processes (GPUs) that train each run together; default: the config's `num_processes`. "
        "`train.grad_accum` must be a multiple of it (the global batch stays batch_size x grad_accum).",
    )
    args: list[str] = Field(
        default_factory=list,
        description="Further `accelerate launch` options, e.g. `[--main_process_port, '29501']`.",
    )


class SlurmConfig(_Strict):
    cluster: Literal["slurm", "local"] = Field(
        "slurm",
        description="`slurm`: submit with sbatch (run on a login node). `local`: submitit's local executor runs the "
        "same jobs as processes of this machine, one stage after the other, and waits for them (to try a setup "
        "without a cluster).",
    )
    partition: str | None = Field(None, description="SLURM partition (`--partition`); default: the cluster's.")
    account: str | None = Field(None, description="Account the jobs are charged to (`--account`).")
    gpus_per_node: int = Field(1, ge=0, le=64, description="GPUs of each run job (the report takes none).")
    prepare_gpus_per_node: int | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs of the prepare job, which scores every reference: more than a run needs for a reference "
        "too big for one GPU (scored across all of them, see `references`); default: `gpus_per_node`.",
    )
    accelerate: bool = Field(
        False,
        description="Each run job trains its run under `accelerate launch` with `launch.accelerate` (its "
        "`num_processes` defaulting to `gpus_per_node`): one run across all the GPUs of its node.",
    )
    nodes: int = Field(1, ge=1, description="Nodes per job; `run-one` uses one (more need a multi-node engine).")
    cpus_per_task: int | None = Field(8, ge=1, description="CPU cores per job (`--cpus-per-task`).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per job in GB (`--mem`); default: the cluster's.")
    time: int = Field(
        1440,
        ge=1,
        description="Time limit of a job in minutes. A run that reaches it is requeued (up to 3 times), resuming from "
        "its checkpoints when `train.checkpoint_steps` is set, otherwise starting over.",
    )
    array_parallelism: int = Field(64, ge=1, description="Array tasks (runs) that may run at the same time.")
    extra: dict[str, SBATCH_VALUE] = Field(
        default_factory=dict,
        description="Further sbatch options, name -> value (`true` for a flag), e.g. `{qos: high, constraint: a100}`.",
    )
    folder: str | None = Field(
        None,
        description="Where the sbatch scripts, pickled jobs and logs go (default `<out>/<name>/slurm`); it must be "
        "visible from the compute nodes.",
    )

    @field_validator("nodes")
    @classmethod
    def _one_node(cls, v: int) -> int:
        if v > 1:
            raise ValueError("run-one uses one node; more nodes need a multi-node engine (not yet available)")
        return v

    @field_validator("extra")
    @classmethod
    def _sbatch_options(cls, v: dict) -> dict:
        for name, value in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
                raise ValueError(f"{name!r} is not an sbatch option name (lower-case letters, digits, '-', '_')")
            if name.replace("_", "-") in RESERVED_SBATCH:
                raise ValueError(f"{name!r} is set by dporef itself; reserved: {', '.join(RESERVED_SBATCH)}")
            if "\n" in str(value) or "\r" in str(value):
                raise ValueError(f"the value of {name!r} holds a line break")
        return v


class LaunchConfig(_Strict):
    launcher: str = Field(
        "local",
        description="Where each run's `dporef run-one` executes: `local` (this machine: in this process, or in "
        "processes pinned to `gpus` or `workers` at once), `accelerate` (this machine, one run after another, each "
        "through `accelerate launch` across its GPUs, see `launch.accelerate`) or `slurm` (the prepare stage, the "
        "runs and the report as SLURM jobs through submitit, see `launch.slurm`). The study commands' `--launcher` "
        "overrides it.",
    )
    gpus: list[int] | Literal["auto"] | None = Field(
        None,
        description="`local`: one `run-one` process per listed GPU at a time (ids as CUDA_VISIBLE_DEVICES takes "
        "them), each pinned to its GPU, a finished run freeing its GPU for the next; `auto`: every visible CUDA "
        "device. Default (null): no pinning.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="`local` without `gpus`: this many `run-one` worker processes, which share the pending runs out "
        "between them and split the machine's cores (each torch gets cores / workers threads, unless "
        "OMP_NUM_THREADS is set); 1: the runs execute in this process, one after another. On 2 cores, 2 workers "
        "ran the default RQ1 sweep in 0.78x the time of 1 (bench/workers.py).",
    )
    accelerate: AccelerateConfig = Field(
        default_factory=AccelerateConfig, description="How `accelerate launch` starts each run (see below)."
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="Settings of the slurm launcher (see below).")

    @field_validator("launcher")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in LAUNCHERS:
            raise ValueError(f"unknown launcher {v!r}; available: {', '.join(LAUNCHERS)}")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("list at least one GPU id, or use `auto` or null")
            if any(i < 0 for i in v) or len(set(v)) < len(v):
                raise ValueError("GPU ids are distinct integers >= 0")
        return v

    @model_validator(mode="after")
    def _gpus_or_workers(self) -> LaunchConfig:
        if self.gpus is not None and self.workers > 1:
            raise ValueError("set `gpus` (one process per GPU) or `workers` (processes without GPUs), not both")
        return self

    @property
    def in_process(self) -> bool:
        """The runs execute in the study command's own process, one after another (no launcher at work)."""
        return self.launcher == "local" and self.gpus is None and self.workers == 1
