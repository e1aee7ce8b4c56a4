r"""The true posterior of a 2-D latent, normalized on a grid: the reference of the 2-D posterior figure.

For a pair whose only per-datapoint latent is one site of 2 dimensions (Cremer, Li &
Duvenaud 2018, Fig. 2), the joint :math:`\log p(x_i, z)` is evaluated on a
:math:`P \times P` grid of cell centres :math:`z_c` covering ``bounds`` and normalized by
the midpoint rule,

.. math:: \log p(x_i) \approx \log \sum_c p(x_i, z_c)\, \Delta, \qquad
          \log p(z_c \mid x_i) \approx \log p(x_i, z_c) - \log p(x_i),

with :math:`\Delta` the cell area, all in float64 with ``logsumexp``. The guide's
:math:`\log q(z_c \mid x_i)` on the same grid comes from the same scoring, so each panel of
the figure is a density on the same axes. A grid that cuts off posterior mass is refused:
:attr:`GridPosterior.edge_mass` is the posterior mass in the outermost ring of cells, and
more than ``max_edge_mass`` means ``bounds`` is too narrow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .enumeration import expand_grid
from .memory import chunk_size_for
from .program import Program, check_data, inspect_program, score_configurations
from .validation import positive_int


class GridPosterior(NamedTuple):
    """Log densities on a ``P x P`` grid for each of ``N`` datapoints."""

    axis: torch.Tensor  #: (P,) cell centres along each latent dimension (the same for both)
    log_joint: torch.Tensor  #: (N, P, P) log p(x_i, z) at the cell centres, [i, a, b] at z = (axis[a], axis[b])
    log_px: torch.Tensor  #: (N,) the grid estimate of log p(x_i)
    edge_mass: torch.Tensor  #: (N,) posterior mass in the outermost ring of cells

    @property
    def log_posterior(self) -> torch.Tensor:
        """(N, P, P) log p(z | x_i), a density (integrates to 1 over the grid)."""
        return self.log_joint - self.log_px[:, None, None]

    def mean(self) -> torch.Tensor:
        """(N, 2) the posterior mean on the grid."""
        weights = self.log_joint.flatten(1).softmax(1).reshape(self.log_joint.shape)  # each cell's posterior mass
        za = (weights.sum(2) * self.axis).sum(1)
        zb = (weights.sum(1) * self.axis).sum(1)
        return torch.stack([za, zb], 1)

    def std(self) -> torch.Tensor:
        """(N, 2) the posterior standard deviation of each coordinate on the grid."""
        weights = self.log_joint.flatten(1).softmax(1).reshape(self.log_joint.shape)
        mean = self.mean()
        va = (weights.sum(2) * (self.axis - mean[:, :1]) ** 2).sum(1)
        vb = (weights.sum(1) * (self.axis - mean[:, 1:]) ** 2).sum(1)
        return torch.stack([va, vb], 1).sqrt()


def grid_points(bounds: tuple[float, float], points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell centres of ``points`` equal cells on ``bounds`` (float64), and the 2-D grid ``(points**2, 2)``, row-major."""
    low, high = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite with low < high, got {bounds}")
    points = positive_int(points, "points")
    width = (high - low) / points
    axis = low + width * (torch.arange(points, dtype=torch.float64) + 0.5)
    return axis, torch.cartesian_prod(axis, axis)


def _latent_site(model: Program, guide: Program, x: torch.Tensor):
    info = inspect_program(model, guide, x)
    if info.global_latents or len(info.local_latents) != 1 or info.enumerated or info.auxiliary:
        raise ValueError(f"the grid posterior needs exactly one per-datapoint latent site and no others; this pair has "
                         f"local {info.local_latents}, global {info.global_latents}")
    return info, info.local_latents[0]


def _score_on_grid(program: Program, x: torch.Tensor, info, site: str, grid: torch.Tensor, sites: tuple[str, ...],
                   size: int) -> torch.Tensor:
    parts = []
    with torch.no_grad():
        for start in range(0, len(grid), size):
            values = expand_grid({site: grid[start : start + size].to(x.device, x.dtype)}, len(x), info)
            parts.append(score_configurations(program, x, values, info, sites))
    return torch.cat(parts)  # (C, N)


def grid_posterior(
    model: Program, guide: Program, x: torch.Tensor, bounds: tuple[float, float] = (-4.0, 4.0), points: int = 200, *,
    max_edge_mass: float = 1e-3, max_elements: int | None = None,
) -> GridPosterior:
    """The posterior of the pair's one 2-D latent site on a ``points x points`` grid over ``bounds``, for every row of ``x``."""
    x = check_data(x)
    info, site = _latent_site(model, guide, x)
    axis, grid = grid_points(bounds, points)
    axis = axis.to(x.device)
    size = chunk_size_for(info, x, model, guide, max_elements)
    log_joint = _score_on_grid(model, x, info, site, grid, info.local_latents + info.observed, size)
    if log_joint.shape[0] != points * points:
        raise ValueError(f"site {site!r} is not 2-dimensional")
    cell = 2 * math.log((float(bounds[1]) - float(bounds[0])) / points)  # log of the cell area
    log_px = torch.logsumexp(log_joint, 0) + cell
    log_joint = log_joint.T.reshape(len(x), points, points)
    posterior = (log_joint - log_px[:, None, None] + cell).exp()
    inner = posterior[:, 1:-1, 1:-1].sum((1, 2)) if points > 2 else torch.zeros(len(x), dtype=torch.float64, device=x.device)
    edge = (posterior.sum((1, 2)) - inner).clamp(min=0)
    if bool((edge > max_edge_mass).any()):
        worst = int(edge.argmax())
        raise ValueError(f"the grid over {bounds} cuts off posterior mass: {float(edge[worst]):.3g} of datapoint {worst}'s "
                         f"posterior lies in the outermost cells (more than {max_edge_mass}); widen the bounds")
    return GridPosterior(axis, log_joint, log_px, edge)


def guide_on_grid(guide: Program, model: Program, x: torch.Tensor, axis: torch.Tensor, *, max_elements: int | None = None) -> torch.Tensor:
    """(N, P, P) the guide's log q(z | x_i) at the cell centres of ``axis`` (the grid of :func:`grid_posterior`)."""
    x = check_data(x)
    info, site = _latent_site(model, guide, x)
    grid = torch.cartesian_prod(axis, axis)
    size = chunk_size_for(info, x, model, guide, max_elements)
    log_q = _score_on_grid(guide, x, info, site, grid, (site,), size)
    return log_q.T.reshape(len(x), len(axis), len(axis))
