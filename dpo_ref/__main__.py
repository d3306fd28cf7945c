"""`python -m dpo_ref ...` is the same as the `dporef` console script (useful where the package is not installed)."""

from .cli import app

app()
