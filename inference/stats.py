"""Small numerical helpers: the log of a mean of weights, and a mean with its standard error."""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log (1/K) sum_k exp(log_w_k)`` along ``dim`` (K = its size), by ``logsumexp``."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` and its standard error ``sd / sqrt(n)`` (NaN for one value)."""
    values = values.double().reshape(-1)
    n = len(values)
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.nan
