import os

import pyro
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture(scope="session")
def mnist_root() -> str:
    """../shared/data: tests that need MNIST fail (never skip) when it is missing."""
    raw = os.path.join(SHARED_DATA, "MNIST", "raw", "train-images-idx3-ubyte")
    assert os.path.exists(raw), f"MNIST is required at {raw} (the shared data folder beside the checkout)"
    return SHARED_DATA
