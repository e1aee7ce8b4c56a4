r"""Finite Gaussian mixture with a discrete assignment per datapoint.

.. math::
    z_i \sim \mathrm{Categorical}(\pi), \qquad x_i \mid z_i = k \sim N(\mu_k, \Sigma_k),
    \qquad \log p(x_i) = \operatorname{logsumexp}_k \big[\log \pi_k + \log N(x_i; \mu_k, \Sigma_k)\big].

The mixing weights, means and covariances (diagonal, or full through a Cholesky
factor) are global parameters fitted as point estimates: maximum likelihood, or
maximum a posteriori with the optional priors :math:`\mu_k \sim N(0, s^2 I)`
(``prior_scale`` = s) and :math:`\pi \sim \mathrm{Dirichlet}(\alpha)`
(``concentration`` = α), whose log density :meth:`GaussianMixture.log_prior`
the ``enum`` objective adds to the marginal likelihood.
``z`` is marked for parallel enumeration, so ``TraceEnum_ELBO`` with a guide
that leaves ``z`` out maximizes the exact marginal likelihood. Standard
deviations (and Cholesky diagonals) have a floor ``min_scale`` so the
likelihood stays bounded.

:class:`CategoricalEncoder` is an amortized guide q(z|x); the exact posterior
:meth:`GaussianMixture.posterior_logits` lies in its family, so its
approximation gap is exactly zero and everything it loses is amortization.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .networks import mlp
from .spec import ModelSpec

COVARIANCES = ("diag", "full")


class GaussianMixture(nn.Module):
    """``K`` Gaussian components in ``data_dim`` dimensions; ``covariance`` is ``"diag"`` or ``"full"``."""

    def __init__(
        self,
        data_dim: int,
        num_components: int,
        covariance: str = "diag",
        min_scale: float = 1e-3,
        prior_scale: float | None = None,
        concentration: float | None = None,
    ):
        super().__init__()
        if isinstance(num_components, bool) or int(num_components) != num_components or num_components < 1:
            raise ValueError(f"a mixture needs num_components >= 1, got {num_components!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"unknown covariance {covariance!r}; choose from {', '.join(COVARIANCES)}")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        for name, value in (("prior_scale", prior_scale), ("concentration", concentration)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None for no prior), got {value}")
        self.prior_scale, self.concentration = prior_scale, concentration
        self.data_dim, self.num_components, self.covariance = data_dim, int(num_components), covariance
        self.min_scale = float(min_scale)
        k, d = self.num_components, data_dim
        self.mixing_logits = nn.Parameter(torch.zeros(k))
        self.means = nn.Parameter(torch.randn(k, d))
        self.raw_scales = nn.Parameter(torch.zeros(k, d))  # softplus -> diagonal scales
        if covariance == "full":
            self.raw_offdiag = nn.Parameter(torch.zeros(k, d, d))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None, iterations: int = 20) -> None:
        """Start where EM implementations usually start: k-means (k-means++ seeding, Lloyd iterations).

        Means at the cluster centres, diagonal scales at each cluster's standard deviation,
        mixing weights at the cluster sizes.
        """
        if len(x) < self.num_components:
            raise ValueError(f"need at least num_components={self.num_components} datapoints to initialize, got {len(x)}")
        centres, assign = kmeans(x, self.num_components, generator, iterations)
        counts = torch.bincount(assign, minlength=self.num_components).to(x.dtype)
        overall = x.std(0)
        scales = torch.stack([
            x[assign == k].std(0) if counts[k] > 1 else overall for k in range(self.num_components)
        ]).nan_to_num(1.0).clamp(min=2 * self.min_scale)
        self.means.copy_(centres)
        self.raw_scales.copy_(_softplus_inv(scales - self.min_scale))
        self.mixing_logits.copy_(counts.clamp(min=1).log())
        if self.covariance == "full":
            self.raw_offdiag.zero_()

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors of the component covariances, ``(K, D, D)`` (diagonal for ``"diag"``)."""
        diag = self.min_scale + F.softplus(self.raw_scales)
        tril = torch.diag_embed(diag)
        if self.covariance == "full":
            tril = tril + self.raw_offdiag.tril(-1)
        return tril

    def component_dist(self, z: torch.Tensor) -> dist.Distribution:
        """``p(x | z)`` for assignments ``z`` of any shape."""
        if self.covariance == "diag":
            scale = self.min_scale + F.softplus(self.raw_scales)
            return dist.Normal(self.means[z], scale[z], validate_args=False).to_event(1)
        return dist.MultivariateNormal(self.means[z], scale_tril=self.scale_tril()[z], validate_args=False)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x_i; mu_k, Sigma_k)`` for every datapoint and component: ``(N, K)``."""
        k = torch.arange(self.num_components, device=x.device)
        log_lik = self.component_dist(k).log_prob(x.unsqueeze(-2))
        return log_lik + self.mixing_logits.log_softmax(-1)

    def log_prior(self) -> torch.Tensor:
        """``log p(mu) + log p(pi)`` of the current point estimates (0 without priors)."""
        total = self.means.new_zeros(())
        if self.prior_scale is not None:
            total = total + torch.distributions.Normal(0.0, self.prior_scale).log_prob(self.means).sum()
        if self.concentration is not None:
            alpha = self.means.new_full((self.num_components,), self.concentration)
            total = total + torch.distributions.Dirichlet(alpha).log_prob(self.mixing_logits.softmax(-1))
        return total

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_i)``, shape ``(N,)``."""
        return self.component_log_prob(x).logsumexp(-1)

    def posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(z = k | x_i)``, shape ``(N, K)``."""
        joint = self.component_log_prob(x)
        return joint - joint.logsumexp(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> None:
        weights = self.mixing_logits
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(logits=weights, validate_args=False), infer={"enumerate": "parallel"})
            pyro.sample("x", self.component_dist(z), obs=x)


class CategoricalEncoder(nn.Module):
    """Amortized ``q(z|x) = Categorical(softmax(f(x)))`` with an MLP ``f`` (linear when ``hidden`` is empty)."""

    def __init__(self, data_dim: int, num_components: int, hidden: Sequence[int] = (100,), activation: str = "elu", site: str = "z"):
        super().__init__()
        self.site = site
        self.net = mlp(data_dim, hidden, num_components, activation)

    #: per datapoint, free logits: the family holds the exact posterior
    local_family = "categorical"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> None:
        logits = self.logits(x)
        with pyro.plate("data", len(x)):
            pyro.sample(self.site, dist.Categorical(logits=logits, validate_args=False))


def _softplus_inv(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator | None = None, iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd iterations; returns (centres, assignments)."""
    first = torch.randint(len(x), (1,), generator=generator).item()
    centres = [x[first]]
    d2 = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, k):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        i = torch.multinomial(weights.cpu(), 1, generator=generator).item()
        centres.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(-1))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(x, c).argmin(-1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(-1).to(x.dtype)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c, torch.cdist(x, c).argmin(-1)


def build(config: dict) -> tuple[GaussianMixture, CategoricalEncoder]:
    d, k = config["data_dim"], config["components"]
    model = GaussianMixture(d, k, config["covariance"], config["min_scale"], config["prior_scale"], config["concentration"])
    return model, CategoricalEncoder(d, k, config["encoder_hidden"], config["activation"])


SPEC = ModelSpec(
    name="gmm",
    description="Gaussian mixture, its assignment enumerated: exact log p(x); maximum likelihood or MAP point estimates",
    build=build,
    defaults={
        "components": 10, "covariance": "diag", "min_scale": 1e-2, "encoder_hidden": [100], "activation": "elu",
        "prior_scale": None, "concentration": None,  # None: maximum likelihood; numbers: MAP with those priors
    },
    guides=("categorical",),
    likelihoods=("gaussian",),
    help={
        "components": "number of components K", "covariance": "diag or full",
        "prior_scale": "MAP with means ~ N(0, s^2) (default: no prior, maximum likelihood)",
        "concentration": "MAP with weights ~ Dirichlet(alpha) (default: no prior)",
        "min_scale": "floor on the standard deviations",
    },
    types={"prior_scale": float, "concentration": float},
    train={"objective": "enum", "kl_warmup_epochs": 0.0, "lr": 1e-2},
    discrete=True,
)
