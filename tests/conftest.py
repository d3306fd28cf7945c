"""Hermetic test setup: offline hub, a temporary dporef cache, quiet progress bars, fixed seeds."""

import os
import random

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DPOREF_QUIET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One dporef cache for the whole session (the tiny world is built once), never the user's own."""
    path = tmp_path_factory.mktemp("dporef-cache")
    os.environ["DPOREF_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _seeded(cache_dir):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
