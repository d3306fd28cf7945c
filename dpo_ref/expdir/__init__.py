"""The experiment directory, the one owner of what lies in it: its layout (`layout`), the runs' hash, statuses and
files (`runs`), and what the stages hand each other (`prepared`). Stages never import each other; they meet here."""

from .layout import REPORT_FILES, ExperimentDir, PreparedDir, RunDir
from .prepared import (
    BASELINES,
    Prepared,
    baseline_intact,
    columns,
    generation_rows,
    make_judge,
    read_baseline,
    read_spec,
    write_baseline,
    write_spec,
)
from .runs import (
    EVALUATED,
    FINISHED,
    RunFiles,
    RunState,
    is_done,
    not_done,
    prepared_models,
    read_run,
    read_status,
    run_hash,
    run_state,
)

__all__ = [
    "BASELINES",
    "EVALUATED",
    "FINISHED",
    "REPORT_FILES",
    "ExperimentDir",
    "Prepared",
    "PreparedDir",
    "RunDir",
    "RunFiles",
    "RunState",
    "baseline_intact",
    "columns",
    "generation_rows",
    "is_done",
    "make_judge",
    "not_done",
    "prepared_models",
    "read_baseline",
    "read_run",
    "read_spec",
    "read_status",
    "run_hash",
    "run_state",
    "write_baseline",
    "write_spec",
]
