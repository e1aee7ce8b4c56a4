r"""Probabilistic PCA: a linear-Gaussian latent-variable model with closed forms.

.. math:: z \sim N(0, I_k), \qquad x \mid z \sim N(W z + b,\ \sigma^2 I_D)

(Tipping & Bishop 1999). Everything the inference-gap decomposition needs is
available exactly, which makes the model both a selectable model and the test
oracle for the estimators:

* marginal  :math:`x \sim N(b,\ W W^\top + \sigma^2 I)`;
* posterior :math:`z \mid x \sim N(\Lambda^{-1} W^\top (x - b) / \sigma^2,\ \Lambda^{-1})`
  with precision :math:`\Lambda = I + W^\top W / \sigma^2`;
* best fully factorized Gaussian (minimizing KL(q || posterior)): the posterior
  mean, with variances :math:`1 / \Lambda_{jj}`;
* the ELBO of any diagonal Gaussian q, hence the exact approximation gap
  :math:`\log p(x) - \mathcal{L}[q^*_{FFG}] = \tfrac12 (\sum_j \log \Lambda_{jj} - \log\det \Lambda)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .guides import GAUSSIAN_FAMILIES, gaussian_encoder
from .spec import ModelSpec

LOG_2PI = math.log(2 * math.pi)


class GaussianPosterior(NamedTuple):
    """Exact posterior ``N(loc, covariance)`` per datapoint, with its precision."""

    loc: torch.Tensor  # (N, k)
    covariance: torch.Tensor  # (k, k), shared by all datapoints
    precision: torch.Tensor  # (k, k)


class PPCA(nn.Module):
    """PPCA as a Pyro program following the package convention."""

    def __init__(self, data_dim: int, latent_dim: int, init_scale: float = 1.0):
        super().__init__()
        if latent_dim <= 0 or data_dim <= 0:
            raise ValueError(f"PPCA needs positive sizes, got data_dim={data_dim}, latent_dim={latent_dim}")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.weight = nn.Parameter(torch.randn(data_dim, latent_dim) / math.sqrt(latent_dim))
        self.bias = nn.Parameter(torch.zeros(data_dim))
        self.log_noise = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    @property
    def noise(self) -> torch.Tensor:
        """The observation noise standard deviation sigma."""
        return self.log_noise.exp()

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", len(x)):
            prior = dist.Normal(self.prior_loc, self.prior_scale, validate_args=False).to_event(1)
            z = pyro.sample("z", prior)
            loc = z @ self.weight.T + self.bias
            pyro.sample("x", dist.Normal(loc, self.noise, validate_args=False).expand(loc.shape).to_event(1), obs=x)

    # ---- closed forms -------------------------------------------------------------

    def marginal_covariance(self) -> torch.Tensor:
        """``W W^T + sigma^2 I``, the covariance of p(x)."""
        eye = torch.eye(self.data_dim, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight @ self.weight.T + self.noise**2 * eye

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per datapoint, shape ``(N,)``."""
        mvn = torch.distributions.MultivariateNormal(self.bias, covariance_matrix=self.marginal_covariance())
        return mvn.log_prob(x)

    def posterior(self, x: torch.Tensor) -> GaussianPosterior:
        """Exact posterior p(z|x)."""
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        precision = eye + self.weight.T @ self.weight / self.noise**2
        covariance = torch.linalg.inv(precision)
        loc = (x - self.bias) @ self.weight @ covariance.T / self.noise**2
        return GaussianPosterior(loc, covariance, precision)

    def best_ffg(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the optimal fully factorized Gaussian, each ``(N, k)``."""
        post = self.posterior(x)
        scale = post.precision.diagonal().rsqrt().expand_as(post.loc)
        return post.loc, scale

    def elbo(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        r"""Exact ELBO of a diagonal Gaussian ``q(z) = N(loc, diag(scale^2))`` per datapoint.

        .. math:: E_q[\log N(x; Wz + b, \sigma^2 I)] + E_q[\log N(z; 0, I)] + H[q]
        """
        var_noise = self.noise**2
        resid = x - loc @ self.weight.T - self.bias
        col_norms = (self.weight**2).sum(0)  # ||W_j||^2
        expected_sq = (resid**2).sum(-1) + (scale**2 * col_norms).sum(-1)
        log_lik = -0.5 * self.data_dim * (LOG_2PI + var_noise.log()) - 0.5 * expected_sq / var_noise
        log_prior = -0.5 * self.latent_dim * LOG_2PI - 0.5 * (loc**2 + scale**2).sum(-1)
        entropy = 0.5 * self.latent_dim * (1 + LOG_2PI) + scale.log().sum(-1)
        return log_lik + log_prior + entropy

    def approximation_gap(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x) - L[q*_FFG]`` per datapoint (the same for every x)."""
        precision = self.posterior(x[:1]).precision
        gap = 0.5 * (precision.diagonal().log().sum() - torch.linalg.slogdet(precision)[1])
        return gap.expand(len(x))


def build(config: dict) -> tuple[PPCA, nn.Module]:
    d, k = config["data_dim"], config["latent_dim"]
    return PPCA(d, k), gaussian_encoder(d, k, config)


SPEC = ModelSpec(
    name="ppca",
    description="probabilistic PCA: closed-form log p(x), posterior and best diagonal Gaussian (the test oracle)",
    build=build,
    # A linear encoder contains PPCA's optimal fully factorized Gaussian.
    defaults={"latent_dim": 5, "encoder_hidden": [], "activation": "elu", "flow_layers": 2, "flow_hidden": [100]},
    guides=GAUSSIAN_FAMILIES,
    likelihoods=("gaussian",),
    help={"latent_dim": "latent size"},
)
