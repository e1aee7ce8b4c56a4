import pytest
import torch

from benchmarks.datasets import DIGITS_TRAIN, load_dataset


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


def test_mnist_from_the_shared_data_folder(mnist_root):
    data = load_dataset("mnist", "bernoulli", data_root=mnist_root)
    assert data.train.shape == (60_000, 784) and data.test.shape == (10_000, 784)
    assert data.train.min() == 0 and data.train.max() == 1 and data.binarization == "dynamic"


def test_missing_mnist_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST not found under data root .*--data-root"):
        load_dataset("mnist", "bernoulli", data_root=str(tmp_path))
