"""The docs site's YAML reference (docs/reference.md), generated from the pydantic field descriptions.

`python -m dpo_ref.docs` prints it; `python -m dpo_ref.docs docs/reference.md` rewrites the page's generated part
(between the START and END markers) in place.

A test checks docs/reference.md holds exactly this text, so the documentation cannot drift from the code.
"""

import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import (
    AccelerateConfig,
    DataConfig,
    EvalConfig,
    Experiment,
    InstructionsConfig,
    JudgeConfig,
    LaunchConfig,
    LoraSettings,
    ObjectiveGrid,
    ReferenceConfig,
    SlurmConfig,
    TrainConfig,
    WorldConfig,
)

SECTIONS = [
    ("top level", Experiment),
    ("`references[]`", ReferenceConfig),
    ("`objectives[]`", ObjectiveGrid),
    ("`train`", TrainConfig),
    ("`train.lora`", LoraSettings),
    ("`eval`", EvalConfig),
    ("`data`", DataConfig),
    ("`judge`", JudgeConfig),
    ("`instructions`", InstructionsConfig),
    ("`world`", WorldConfig),
    ("`launch`", LaunchConfig),
    ("`launch.accelerate`", AccelerateConfig),
    ("`launch.slurm`", SlurmConfig),
]


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        items = [item.model_dump(exclude_defaults=True) for item in value]  # what one writes in the YAML
        return "; ".join(", ".join(f"{k}: {v}" for k, v in item.items()) for item in items)
    return f"`{value}`"


def yaml_reference() -> str:
    out = []
    for title, model in SECTIONS:
        out += [f"**{title}**", "", "| key | default | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            out.append(f"| `{name}` | {_default(field)} | {field.description or ''} |")
        out.append("")
    return "\n".join(out)


START, END = "<!-- yaml-reference:start -->\n", "<!-- yaml-reference:end -->"


def update_page(path: Path) -> None:
    """Rewrite the generated part of `path` (docs/reference.md) between START and END."""
    text = path.read_text()
    head, rest = text.split(START, 1)
    path.write_text(head + START + yaml_reference() + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        update_page(Path(sys.argv[1]))
    else:
        print(yaml_reference())
