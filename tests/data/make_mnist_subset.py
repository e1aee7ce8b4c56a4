"""Regenerate ``mnist_subset.npz``: the first 2000 training and first 500 test images of MNIST.

Usage::

    python tests/data/make_mnist_subset.py /path/to/data/MNIST/raw [--out tests/data/mnist_subset.npz]

The raw folder holds the four uncompressed IDX files in torchvision's layout
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``). Not run by the tests; they read the committed ``.npz``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

NUM_TRAIN = 2000
NUM_TEST = 500
HERE = os.path.dirname(os.path.abspath(__file__))


def read_idx(path: str) -> np.ndarray:
    """An uncompressed IDX file of unsigned bytes (magic 0x0000080N, N dims) as a uint8 array."""
    with open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#010x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="folder with the raw MNIST IDX files (e.g. ../shared/data/MNIST/raw)")
    parser.add_argument("--out", default=os.path.join(HERE, "mnist_subset.npz"))
    args = parser.parse_args(argv)
    arrays = {}
    for split, prefix, n in (("train", "train", NUM_TRAIN), ("test", "t10k", NUM_TEST)):
        images = read_idx(os.path.join(args.raw, f"{prefix}-images-idx3-ubyte"))[:n]
        labels = read_idx(os.path.join(args.raw, f"{prefix}-labels-idx1-ubyte"))[:n]
        assert images.shape == (n, 28, 28) and labels.shape == (n,), (images.shape, labels.shape)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.copy(), labels.copy()
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
