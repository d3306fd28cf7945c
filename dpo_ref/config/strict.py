"""The base of every experiment model: what "strict" means for a YAML setting, and what a name may hold."""

import re

from pydantic import BaseModel, ConfigDict

MAX_NAME = 64  # characters of a name: it becomes a directory and part of every run id
MAX_STEPS = 10**7  # more optimizer steps (or a step interval this long) than any run can take: a typo


class Strict(BaseModel):
    # a NaN or infinite number is never a setting (quoted ones included: pydantic would parse "nan"); types are
    # strict: a boolean or a string is never a number (`true` is not 1, "3" not 3), a number never a boolean; an
    # integer is still a float (`learning_rate: 1`)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True)


def safe_name(v: str) -> str:
    """A name that becomes a directory and part of run ids: no path separator, no leading dot, not too long."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
        raise ValueError("must be letters, digits, '-', '_' or '.', starting with a letter or digit")
    if len(v) > MAX_NAME:
        raise ValueError(f"is {len(v)} characters long; at most {MAX_NAME}")
    return v
