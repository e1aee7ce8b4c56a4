r"""Hierarchical VAEs: stacked Gaussian latent layers, with bottom-up or ladder inference.

Generative model with latent layers :math:`z_1` (next to the data) to :math:`z_L`:

.. math::
    p(z_L) = N(0, I), \qquad p(z_l \mid z_{l+1}) = N(\mu_l(z_{l+1}), \mathrm{diag}\,\sigma_l(z_{l+1})^2),
    \qquad p(x \mid z_1) \text{ Bernoulli or Gaussian},

the two-layer model of Burda, Grosse & Salakhutdinov (2016), *Importance Weighted
Autoencoders* (latents 100 and 50; deterministic hidden layers [200, 200]
between x and z1 and [100, 100] between z1 and z2; guide mirrored).

Two guides:

* :class:`HierarchicalEncoder` — bottom-up :math:`q(z_1|x) q(z_2|z_1) \cdots`, each
  conditional in any Gaussian family of :mod:`ppl_models.guides`;
* :class:`LadderEncoder` — the ladder VAE of Sønderby et al. (2016): a deterministic
  bottom-up pass gives :math:`(\hat\mu_l, \hat\sigma_l)`, then sampling runs top-down and
  merges them with the generative prior's :math:`(\mu^p_l, \sigma^p_l)` by precision weighting,
  :math:`\sigma_l^{-2} = \hat\sigma_l^{-2} + (\sigma^p_l)^{-2}`,
  :math:`\mu_l = (\hat\mu_l \hat\sigma_l^{-2} + \mu^p_l (\sigma^p_l)^{-2})\, \sigma_l^2`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .guides import GAUSSIAN_FAMILIES, GaussianHead, features
from .networks import check_layer_sizes, mlp
from .spec import ModelSpec
from .vae import LIKELIHOODS, check_likelihood


def check_latent_dims(latent_dims: Sequence[int]) -> list[int]:
    return check_layer_sizes(latent_dims, "a hierarchical VAE", "latent_dims=[100, 50]")


class HierarchicalVAE(nn.Module):
    """Latent sites ``z1`` (bottom) ... ``zL`` (top), all inside the data plate."""

    def __init__(
        self,
        data_dim: int,
        latent_dims: Sequence[int] = (100, 50),
        hidden: Sequence[int] = (200, 200),
        upper_hidden: Sequence[int] = (100, 100),
        likelihood: str = "bernoulli",
        activation: str = "elu",
        min_scale: float = 1e-2,
    ):
        super().__init__()
        self.latent_dims = check_latent_dims(latent_dims)
        self.likelihood = check_likelihood(likelihood)
        if not min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        self.data_dim, self.min_scale = data_dim, float(min_scale)
        out_dim = data_dim if likelihood == "bernoulli" else 2 * data_dim
        self.decoder = mlp(self.latent_dims[0], hidden, out_dim, activation)
        # top_down[l] gives the parameters of p(z_{l+1} | z_{l+2}) (0-based layers)
        self.top_down = nn.ModuleList(
            [mlp(self.latent_dims[l + 1], upper_hidden, 2 * self.latent_dims[l], activation) for l in range(len(self.latent_dims) - 1)]
        )
        top = self.latent_dims[-1]
        self.register_buffer("prior_loc", torch.zeros(top), persistent=False)
        self.register_buffer("prior_scale", torch.ones(top), persistent=False)

    def prior_params(self, layer: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of ``p(z_{layer+1} | z_{layer+2})`` (``layer`` 0-based, below the top)."""
        loc, raw = self.top_down[layer](z_above).chunk(2, dim=-1)
        return loc, self.min_scale + F.softplus(raw)

    def likelihood_dist(self, z1: torch.Tensor) -> dist.Distribution:
        out = self.decoder(z1)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        loc, raw = out.chunk(2, dim=-1)
        return dist.Normal(loc, self.min_scale + F.softplus(raw), validate_args=False).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        depth = len(self.latent_dims)
        with pyro.plate("data", len(x)):
            z = pyro.sample(f"z{depth}", dist.Normal(self.prior_loc, self.prior_scale, validate_args=False).to_event(1))
            for l in range(depth - 2, -1, -1):
                loc, scale = self.prior_params(l, z)
                z = pyro.sample(f"z{l + 1}", dist.Normal(loc, scale, validate_args=False).to_event(1))
            pyro.sample("x", self.likelihood_dist(z), obs=x)


class HierarchicalEncoder(nn.Module):
    """Bottom-up guide ``q(z1|x) q(z2|z1) ...``; every conditional is a :class:`GaussianHead` of ``family``."""

    def __init__(
        self,
        data_dim: int,
        latent_dims: Sequence[int] = (100, 50),
        hidden: Sequence[int] = (200, 200),
        upper_hidden: Sequence[int] = (100, 100),
        activation: str = "elu",
        family: str = "ffg",
        flow_layers: int = 2,
        flow_hidden: Sequence[int] = (100,),
    ):
        super().__init__()
        dims = check_latent_dims(latent_dims)
        inputs = [data_dim, *dims[:-1]]
        sizes = [list(hidden)] + [list(upper_hidden)] * (len(dims) - 1)
        self.features = nn.ModuleList([features(i, s, activation) for i, s in zip(inputs, sizes)])
        self.heads = nn.ModuleList(
            [GaussianHead(s[-1] if s else i, d, family, flow_layers, flow_hidden) for i, s, d in zip(inputs, sizes, dims)]
        )

    #: per datapoint: q(z1) with free parameters in place of what the encoder computes from x; the upper
    #: conditionals q(z_{l+1} | z_l) take no x and stay the trained networks
    family_name = "hierarchical"

    def variational_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the guide computes from x: the parameters of q(z1 | x) (see :meth:`GaussianHead.params`)."""
        return self.heads[0].params(self.features[0](x))

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> None:
        h = x
        with pyro.plate("data", len(x)):
            for l, (feat, head) in enumerate(zip(self.features, self.heads)):
                if l == 0:
                    fn = head.distribution(self.variational_params(x) if params is None else params)
                else:
                    fn = head(feat(h))
                h = pyro.sample(f"z{l + 1}", fn)


class LadderEncoder(nn.Module):
    """Ladder inference (Sønderby et al. 2016) for a :class:`HierarchicalVAE`.

    It shares the model's top-down networks; they are used, not owned, so they
    appear in the model's ``state_dict`` only.
    """

    def __init__(
        self,
        model: HierarchicalVAE,
        hidden: Sequence[int] = (200, 200),
        upper_hidden: Sequence[int] = (100, 100),
        activation: str = "elu",
    ):
        super().__init__()
        dims = model.latent_dims
        self._model = (model,)  # a reference, not a submodule
        sizes = [list(hidden)] + [list(upper_hidden)] * (len(dims) - 1)
        self.up = nn.ModuleList()
        self.stats = nn.ModuleList()
        in_dim = model.data_dim
        for size, d in zip(sizes, dims):
            self.up.append(features(in_dim, size, activation))
            in_dim = size[-1] if size else in_dim
            self.stats.append(nn.Linear(in_dim, 2 * d))
        self.min_scale = model.min_scale

    #: per datapoint: free bottom-up statistics (means and pre-softplus scales of every layer) in place of the
    #: deterministic upward pass, merged top-down with the model's prior networks as the guide does
    family_name = "ladder"

    def variational_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The bottom-up pass: ``loc{l}`` and ``raw_scale{l}`` (scale = min_scale + softplus(raw)) of every layer l."""
        params, h = {}, x
        for l, (up, head) in enumerate(zip(self.up, self.stats)):
            h = up(h)
            loc, raw = head(h).chunk(2, dim=-1)
            params[f"loc{l + 1}"], params[f"raw_scale{l + 1}"] = loc, raw
        return params

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> None:
        model = self._model[0]
        params = self.variational_params(x) if params is None else params
        stats = [(params[f"loc{l + 1}"], self.min_scale + F.softplus(params[f"raw_scale{l + 1}"])) for l in range(len(self.stats))]
        depth = len(stats)
        with pyro.plate("data", len(x)):
            loc, scale = stats[-1]
            z = pyro.sample(f"z{depth}", dist.Normal(loc, scale, validate_args=False).to_event(1))
            for l in range(depth - 2, -1, -1):
                prior_loc, prior_scale = model.prior_params(l, z)
                loc, scale = precision_weighted(stats[l][0], stats[l][1], prior_loc, prior_scale)
                z = pyro.sample(f"z{l + 1}", dist.Normal(loc, scale, validate_args=False).to_event(1))


def precision_weighted(loc1, scale1, loc2, scale2) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of two Gaussians' densities, renormalized: precision-weighted mean and its scale."""
    p1, p2 = scale1.pow(-2), scale2.pow(-2)
    var = 1.0 / (p1 + p2)
    return (loc1 * p1 + loc2 * p2) * var, var.sqrt()


def build_hvae(config: dict) -> tuple[HierarchicalVAE, HierarchicalEncoder]:
    sizes = (config["latent_dims"], config["hidden"], config["upper_hidden"])
    model = HierarchicalVAE(config["data_dim"], *sizes, config["likelihood"], config["activation"], config["min_scale"])
    guide = HierarchicalEncoder(
        config["data_dim"], *sizes, config["activation"], config["guide"], flow_layers=config["flow_layers"], flow_hidden=config["flow_hidden"],
    )
    return model, guide


def build_ladder(config: dict) -> tuple[HierarchicalVAE, LadderEncoder]:
    sizes = (config["latent_dims"], config["hidden"], config["upper_hidden"])
    model = HierarchicalVAE(config["data_dim"], *sizes, config["likelihood"], config["activation"], config["min_scale"])
    return model, LadderEncoder(model, config["hidden"], config["upper_hidden"], config["activation"])


# Burda et al. (2016): latents 100 and 50, hidden [200, 200] and [100, 100].
_HIERARCHICAL = {"latent_dims": [100, 50], "hidden": [200, 200], "upper_hidden": [100, 100], "activation": "elu", "min_scale": 1e-2}
_HELP = {
    "latent_dims": "latent sizes bottom-up", "hidden": "decoder hidden sizes (hvae, ladder: between x and z1)",
    "upper_hidden": "hidden sizes between latent layers",
}
SPECS = (
    ModelSpec(
        name="hvae", description="hierarchical VAE with two stochastic layers, bottom-up inference (Burda et al. 2016)",
        build=build_hvae, defaults={**_HIERARCHICAL, "flow_layers": 2, "flow_hidden": [100]}, guides=GAUSSIAN_FAMILIES,
        likelihoods=LIKELIHOODS, help=_HELP,
    ),
    ModelSpec(
        name="ladder", description="the same hierarchical VAE with ladder (top-down) inference sharing the model's networks (Sønderby et al. 2016)",
        build=build_ladder, defaults=dict(_HIERARCHICAL), guides=("ffg",), likelihoods=LIKELIHOODS, help=_HELP,
    ),
)
