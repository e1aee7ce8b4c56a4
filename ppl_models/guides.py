"""Amortized guides (approximate posteriors) for the models in this package.

Every guide follows the package convention: ``guide(x)`` takes a batch and
samples each per-datapoint latent inside ``pyro.plate("data", len(x))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .networks import mlp


class FFGEncoder(nn.Module):
    r"""Amortized fully factorized Gaussian :math:`q(z|x) = \prod_j N(z_j; \mu_j(x), \sigma_j(x)^2)`.

    One network maps ``x`` to the means and log standard deviations of the
    latent site ``site``: the "FFG" family of Cremer, Li & Duvenaud (2018),
    *Inference Suboptimality in Variational Autoencoders*, with its encoder
    ``data_dim -> hidden -> 2 * latent_dim``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: str = "elu",
        site: str = "z",
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.site = site
        self.net = mlp(data_dim, hidden, 2 * latent_dim, activation)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x), each of shape ``(len(x), latent_dim)``."""
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()

    def forward(self, x: torch.Tensor) -> None:
        loc, scale = self.posterior_params(x)
        with pyro.plate("data", len(x)):
            pyro.sample(self.site, dist.Normal(loc, scale, validate_args=False).to_event(1))
