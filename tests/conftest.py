import os

import numpy as np
import pyro
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_SUBSET = os.path.join(REPO, "tests", "data", "mnist_subset.npz")


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data root holding the committed MNIST subset (tests/data/mnist_subset.npz) in torchvision's raw layout.

    ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``: the first 2000 training and
    first 500 test images of MNIST, so ``torchvision.datasets.MNIST(root, download=False)`` and
    ``load_dataset("mnist", ..., data_root=root)`` load it. Needs no ../shared folder.
    """
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with np.load(MNIST_SUBSET) as subset:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", subset[f"{split}_images"])
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", subset[f"{split}_labels"])
    return str(root)


def _write_idx(path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file: big-endian magic 0x0000080N (N = number of dims), the dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.tobytes())
