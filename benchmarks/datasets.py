"""Data sets for the benchmarks: the embedded ``digits`` and torchvision's ``mnist``.

Pixels are scaled to [0, 1]. For a Bernoulli likelihood the images are
binarized in one of three ways:

* ``dynamic`` — a fresh Bernoulli draw with the grey level as probability every
  time a training batch is used (the protocol of Burda et al. 2016, IWAE);
  evaluation points get one fixed draw (seed ``binarize_seed``);
* ``static`` — one Bernoulli draw of the whole data set with seed ``binarize_seed``;
* ``threshold`` — pixel > 0.5.

For a Gaussian likelihood the grey levels are used as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from inference.distributed import launched_world_size
from ppl_models import check_likelihood

DATASETS = ("digits", "mnist")
#: Pixels per image of each data set.
DATA_DIMS = {"digits": 64, "mnist": 784}
BINARIZATIONS = ("dynamic", "static", "threshold")
DEFAULT_DATA_ROOT = os.environ.get("LATENT_DATA_ROOT", os.path.join("..", "shared", "data"))
DIGITS_TRAIN = 1437  # of 1797 images; the rest is the test split


@dataclass(frozen=True)
class Data:
    """A train/test split ready for a likelihood.

    ``train`` and ``test`` are ``(N, D)`` float32 tensors. Under dynamic
    binarization they hold grey levels and :meth:`transform` binarizes each
    training batch; everywhere else they hold the values the likelihood sees.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    likelihood: str
    binarization: str | None
    binarize_seed: int = 0

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}; choose from train, test")
        return self.train if name == "train" else self.test

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        """What a training batch becomes before the model sees it (a fresh draw under dynamic binarization)."""
        return torch.bernoulli(batch) if self.binarization == "dynamic" else batch

    def eval_points(self, split: str, num_points: int) -> torch.Tensor:
        """The first ``num_points`` datapoints of ``split``, as the likelihood sees them (fixed draw if dynamic)."""
        data = self.split(split)
        if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 1:
            raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
        if num_points > len(data):
            raise ValueError(f"num_points={num_points} exceeds the {split} split of {self.name} ({len(data)} points)")
        points = data[:num_points]
        if self.binarization == "dynamic":
            seed = self.binarize_seed + (1 if split == "train" else 2)
            points = torch.bernoulli(points, generator=torch.Generator().manual_seed(seed))
        return points


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    images = images[order]
    return images[:DIGITS_TRAIN], images[DIGITS_TRAIN:]


def _load_mnist(root: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    launched = launched_world_size()
    if download and launched > 1 and not os.path.exists(os.path.join(root, "MNIST", "raw", "t10k-labels-idx1-ubyte")):
        raise ValueError(f"--download under a launch of {launched} processes: they would all write the same files at once; "
                         "download MNIST first in one process (or drop --download and pass --data-root)")
    splits = []
    for train in (True, False):
        try:
            ds = MNIST(root, train=train, download=download)
        except RuntimeError as err:
            expected = os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")
            raise FileNotFoundError(
                f"MNIST not found under data root {root!r} (expected {expected}); "
                "pass --data-root DIR with MNIST/raw inside, or --download"
            ) from err
        splits.append(ds.data.reshape(len(ds.data), -1).float() / 255.0)
    return splits[0], splits[1]


def load_dataset(
    name: str,
    likelihood: str,
    binarization: str | None = None,
    *,
    data_root: str = DEFAULT_DATA_ROOT,
    download: bool = False,
    binarize_seed: int = 0,
) -> Data:
    """Load ``name`` and prepare it for ``likelihood`` (see module docstring)."""

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    check_likelihood(likelihood)
    if likelihood == "bernoulli":
        binarization = binarization or "dynamic"
        if binarization not in BINARIZATIONS:
            raise ValueError(f"unknown binarization {binarization!r}; choose from {', '.join(BINARIZATIONS)}")
    elif binarization is not None:
        raise ValueError(f"binarization {binarization!r} applies to a Bernoulli likelihood, not {likelihood!r}")
    train, test = _load_digits() if name == "digits" else _load_mnist(data_root, download)
    if binarization == "static":
        gen = torch.Generator().manual_seed(binarize_seed)
        train, test = torch.bernoulli(train, generator=gen), torch.bernoulli(test, generator=gen)
    elif binarization == "threshold":
        train, test = (train > 0.5).float(), (test > 0.5).float()
    return Data(name, train.contiguous(), test.contiguous(), likelihood, binarization, binarize_seed)
