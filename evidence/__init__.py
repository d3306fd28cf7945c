"""Figures from a command, never by hand: runs the studies whose figures the docs quote (through the real `dporef`
commands), keeps what they wrote in docs/results/data/, and renders docs/results/*.md and the docs' generated
blocks from those files alone (`python -m evidence`, `make evidence`). It sits above dpo_ref and imports none of it."""
