"""`dporef tune-beta`: the best beta of one experiment without paying for a grid (search.py), its Optuna study on
disk (study.py), the pruner a trial trains with (pruning.py) and the summary of the search (summary.py)."""

from .search import tune_beta
from .study import TuneSettings

__all__ = ["TuneSettings", "tune_beta"]
