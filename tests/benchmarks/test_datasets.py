import hashlib
import os

import numpy as np
import pytest
import torch

from benchmarks.datasets import DIGITS_TRAIN, load_dataset
from tests.conftest import MNIST_SUBSET

# sha256 of the raw bytes of the first 28x28 image of the MNIST training and test sets
MNIST_TRAIN_0_SHA256 = "23ceaef5eb61f0e70d64ac18fdf0f60df3d5971cf30bbadac7b6ebf07f782d2c"
MNIST_TEST_0_SHA256 = "8f6a418c9a639f9e14e96feca47a97df2a35a0a68ae2875431c5c80e05536941"


def test_digits_split_is_fixed_and_scaled():
    a = load_dataset("digits", "gaussian")
    b = load_dataset("digits", "gaussian")
    assert a.train.shape == (DIGITS_TRAIN, 64) and a.test.shape == (1797 - DIGITS_TRAIN, 64)
    assert torch.equal(a.train, b.train) and a.train.min() >= 0 and a.train.max() <= 1
    assert a.binarization is None and torch.equal(a.transform(a.train[:3]), a.train[:3])


def test_binarizations():
    dynamic = load_dataset("digits", "bernoulli")
    assert dynamic.binarization == "dynamic"
    grey = dynamic.train[:50]
    first, second = dynamic.transform(grey), dynamic.transform(grey)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    # evaluation points: one fixed draw, the same every time
    assert torch.equal(dynamic.eval_points("test", 20), dynamic.eval_points("test", 20))
    assert set(dynamic.eval_points("train", 20).unique().tolist()) <= {0.0, 1.0}
    static = load_dataset("digits", "bernoulli", "static")
    assert torch.equal(static.train, load_dataset("digits", "bernoulli", "static").train)
    assert set(static.train.unique().tolist()) == {0.0, 1.0} and torch.equal(static.transform(static.train), static.train)
    threshold = load_dataset("digits", "bernoulli", "threshold")
    assert torch.equal(threshold.train, (dynamic.train > 0.5).float())


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "bernoulli")
    with pytest.raises(ValueError, match="unknown binarization 'otsu'"):
        load_dataset("digits", "bernoulli", "otsu")
    with pytest.raises(ValueError, match="applies to a Bernoulli likelihood"):
        load_dataset("digits", "gaussian", "static")
    data = load_dataset("digits", "bernoulli")
    with pytest.raises(ValueError, match="num_points=1000 exceeds the test split of digits \\(360 points\\)"):
        data.eval_points("test", 1000)
    with pytest.raises(ValueError, match="unknown split"):
        data.eval_points("valid", 3)


def test_mnist_root_fixture_is_the_first_mnist_images_in_torchvision_layout(mnist_root):
    """The fixture's IDX files load with torchvision and hold the start of the real MNIST, in order."""
    from torchvision.datasets import MNIST

    train, test = MNIST(mnist_root, train=True, download=False), MNIST(mnist_root, train=False, download=False)
    assert (len(train), len(test)) == (2000, 500)
    assert train.data.shape == (2000, 28, 28) and train.data.dtype == torch.uint8
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # the first images of the real MNIST training and test sets, byte for byte
    assert hashlib.sha256(train.data[0].numpy().tobytes()).hexdigest() == MNIST_TRAIN_0_SHA256
    assert hashlib.sha256(test.data[0].numpy().tobytes()).hexdigest() == MNIST_TEST_0_SHA256
    with open(os.path.join(mnist_root, "MNIST", "raw", "t10k-labels-idx1-ubyte"), "rb") as f:
        assert f.read(8) == bytes.fromhex("00000801") + (500).to_bytes(4, "big")


def test_mnist_loads_scaled_and_binarized_from_a_data_root(mnist_root):
    with np.load(MNIST_SUBSET) as subset:
        first_train, first_test = subset["train_images"][0], subset["test_images"][0]
    data = load_dataset("mnist", "bernoulli", data_root=mnist_root)
    assert data.train.shape == (2000, 784) and data.test.shape == (500, 784) and data.data_dim == 784
    assert data.train.dtype == torch.float32 and data.binarization == "dynamic"
    # dynamic: grey levels in [0, 1] are kept, batches and evaluation points are 0/1
    assert data.train.min() == 0 and data.train.max() == 1 and data.test.min() == 0 and data.test.max() == 1
    assert torch.equal(data.train[0], torch.as_tensor(first_train, dtype=torch.float32).reshape(784) / 255)
    assert torch.equal(data.test[0], torch.as_tensor(first_test, dtype=torch.float32).reshape(784) / 255)
    assert len(data.train.unique()) > 2  # grey levels, not yet binarized
    assert set(data.transform(data.train[:50]).unique().tolist()) == {0.0, 1.0}
    assert set(data.eval_points("test", 20).unique().tolist()) == {0.0, 1.0}
    threshold = load_dataset("mnist", "bernoulli", "threshold", data_root=mnist_root)
    assert torch.equal(threshold.train, (data.train > 0.5).float()) and torch.equal(threshold.test[0], (data.test[0] > 0.5).float())
    static = load_dataset("mnist", "bernoulli", "static", data_root=mnist_root)
    assert set(static.train.unique().tolist()) == {0.0, 1.0} and static.train.shape == (2000, 784)
    assert torch.equal(static.train[data.train == 0], torch.zeros_like(static.train[data.train == 0]))
    assert torch.equal(static.train[data.train == 1], torch.ones_like(static.train[data.train == 1]))
    gaussian = load_dataset("mnist", "gaussian", data_root=mnist_root)
    assert gaussian.binarization is None and torch.equal(gaussian.train, data.train)


def test_missing_mnist_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST not found under data root .*--data-root"):
        load_dataset("mnist", "bernoulli", data_root=str(tmp_path))


def test_a_download_by_every_process_of_a_launch_at_once_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--download under a launch of 2 processes: they would all write the same files at once"):
        load_dataset("mnist", "bernoulli", "dynamic", data_root=str(tmp_path), download=True)
