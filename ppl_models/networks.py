"""Small building blocks shared by the model and guide programs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "elu") -> nn.Sequential:
    """A fully connected network ``in_dim -> hidden[0] -> ... -> out_dim``.

    An activation follows every hidden layer, none follows the output layer;
    ``hidden=()`` gives a single affine map.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    sizes = [in_dim, *hidden, out_dim]
    for size in sizes:
        if int(size) != size or size <= 0:
            raise ValueError(f"layer sizes must be positive integers, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def check_layer_sizes(sizes: Sequence[int], what: str, example: str) -> list[int]:
    """A non-empty list of positive integer layer sizes, or a ValueError naming ``what`` and the bad list."""
    sizes = list(sizes)
    if not sizes:
        raise ValueError(f"{what} needs at least one latent layer, e.g. {example}")
    for size in sizes:
        if isinstance(size, bool) or int(size) != size or size <= 0:
            raise ValueError(f"{what}: layer sizes must be positive integers, got {sizes}")
    return [int(s) for s in sizes]
