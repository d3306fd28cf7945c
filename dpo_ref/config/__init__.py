"""The experiment's configuration: pydantic models of the YAML (`schema`, `world`) and how files are read (`load`)."""

from .launch import AccelerateConfig, LaunchConfig, SlurmConfig
from .load import load_experiment, merge
from .run import RunSpec, expand, find_run, reference_config
from .schema import (
    DataConfig,
    EvalConfig,
    Experiment,
    InstructionsConfig,
    JudgeConfig,
    LoraSettings,
    ObjectiveGrid,
    ReferenceConfig,
    TrainConfig,
)
from .world import WorldConfig

__all__ = [
    "AccelerateConfig",
    "DataConfig",
    "EvalConfig",
    "Experiment",
    "InstructionsConfig",
    "JudgeConfig",
    "LaunchConfig",
    "LoraSettings",
    "ObjectiveGrid",
    "ReferenceConfig",
    "RunSpec",
    "SlurmConfig",
    "TrainConfig",
    "WorldConfig",
    "expand",
    "find_run",
    "load_experiment",
    "merge",
    "reference_config",
]
