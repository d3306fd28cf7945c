"""The accelerate launcher: each pending run as `accelerate launch --config_file C -m dpo_ref run-one EXP RUN`, one
after another, so that one run trains across all the GPUs of the node (DDP, DeepSpeed ZeRO-3 or FSDP, as the
config says). The processes of a run share its work through `ranks`: the main one holds the run and evaluates.

The configs dporef ships are in experiments/accelerate/; any file `accelerate config` writes works, provided it
saves whole policies (FSDP FULL_STATE_DICT; ZeRO-3 zero3_save_16bit_model), which evaluation and later runs load.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from functools import partial
from pathlib import Path

import yaml

from ..config import AccelerateConfig, Experiment, RunSpec
from ..errors import UserError, one_line
from ..expdir import ExperimentDir, not_done
from ..ui import console
from . import local

SHIPPED = Path(__file__).resolve().parent.parent.parent / "experiments" / "accelerate"  # ddp, zero3, fsdp, cpu


def config_file(cfg: AccelerateConfig, where: str) -> Path:
    """The config's file: a name of SHIPPED, or a path (relative to the working directory)."""
    path = SHIPPED / f"{cfg.config}.yaml" if "/" not in cfg.config and not cfg.config.endswith(".yaml") else None
    path = path if path and path.is_file() else Path(cfg.config)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
        raise UserError(f"{where}: launch.accelerate.config", f"{cfg.config!r} is neither a file nor one of {shipped}")
    return path.absolute()


def _read(path: Path) -> dict:
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(str(path), f"not a readable YAML file: {one_line(str(e), 200)}") from None
    if not isinstance(settings, dict):
        raise UserError(str(path), "holds no accelerate settings (a mapping of `accelerate config` keys)")
    return settings


def processes(cfg: AccelerateConfig, settings: dict) -> int:
    return cfg.num_processes or int(settings.get("num_processes", 1))


def _problem(settings: dict) -> str | None:
    """What in an accelerate config dporef cannot run with, or None."""
    kind = settings.get("distributed_type", "NO")
    if settings.get("use_cpu") and kind != "MULTI_GPU":
        return "use_cpu: true starts one process without MPI; for several CPU processes use `cpu` (torchrun, gloo)"
    if int(settings.get("num_machines", 1)) != 1:
        return "num_machines must be 1: a run uses the GPUs of one node"
    fsdp = settings.get("fsdp_config") or {}
    if kind == "FSDP" and fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT") != "FULL_STATE_DICT":
        return "fsdp_state_dict_type must be FULL_STATE_DICT, so that the run saves its policy whole"
    zero = settings.get("deepspeed_config") or {}
    if kind == "DEEPSPEED" and int(zero.get("zero_stage", 0)) == 3 and not zero.get("zero3_save_16bit_model"):
        return "ZeRO-3 needs zero3_save_16bit_model: true, so that the run saves its policy whole"
    return None


def check(exp: Experiment, where: str, installed: bool = True, processes_: int | None = None) -> int:
    """Refuse, in one line, an accelerate setup that cannot run this experiment's runs (with `installed`, also one
    whose engine is not installed here); returns the processes per run. `processes_` overrides the config's count
    (the slurm launcher's GPUs per node)."""
    cfg = exp.launch.accelerate
    path = config_file(cfg, where)
    settings = _read(path)
    problem = _problem(settings)
    if problem:
        raise UserError(f"{path}", problem)
    if installed and settings.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"{path}", "uses DeepSpeed, which is not installed here: pip install '.[gpu]' (GPU machines)")
    n = processes_ or processes(cfg, settings)
    try:
        exp.train.accumulation_per_process(n)
    except UserError as e:
        raise UserError(f"{where}: {e.where}", e.message) from None
    return n


def command(
    cfg: AccelerateConfig, n: int, where: str, exp_dir: ExperimentDir, run: RunSpec, callback: str | None = None
) -> list[str]:
    """The `accelerate launch` of one run (the same Python, so the same environment); the untrained SFT row, which
    only evaluates, as a plain `run-one`."""
    if run.registered is None:
        return local.command(exp_dir, run, callback)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(cfg, where))]
    return [*launch, "--num_processes", str(n), *cfg.args, *local.command(exp_dir, run, callback)[1:]]


def dry_run(exp: Experiment, exp_dir: ExperimentDir, study: str, source: str) -> str:
    n = check(exp, source, installed=False)
    cfg = exp.launch.accelerate
    lines = [
        f"launcher accelerate: each pending run across {n} processes, one run after another; output in "
        f"{local.log_path(exp_dir, '<run>')}:"
    ]
    lines += [f"  {shlex.join(command(cfg, n, source, exp_dir, r))}" for r in not_done(exp, exp_dir)]
    return "\n".join(lines)


def run(
    exp: Experiment, exp_dir: ExperimentDir, pending: list[RunSpec], source: str, callback: str | None = None
) -> int:
    """Run the pending runs one after another, each through `accelerate launch`; returns how many failed."""
    n = check(exp, source)
    console.print(f"running {len(pending)} runs one after another, each across {n} processes (accelerate launch)")
    # No core split from dporef: `accelerate launch` gives each process OMP_NUM_THREADS=1 unless it is set
    # (accelerate 1.16: commands/launch.py defaults num_cpu_threads_per_process to $OMP_NUM_THREADS or 1, and
    # utils/launch.py writes it into every process's environment; torchrun does the same), so its processes never
    # oversubscribe the cores, and a split set here would be read as the threads of each of the n processes.
    at_once = local.Processes(
        exp_dir,
        [f"{n} processes"],
        pinned=False,
        command=partial(command, exp.launch.accelerate, n, source, callback=callback),
        split_cores=False,
    )
    return local.execute(at_once, pending)
