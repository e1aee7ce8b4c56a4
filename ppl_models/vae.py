r"""The variational autoencoder's generative model as a Pyro program.

With a Gaussian decoder the VAE is an *infinite mixture of Gaussians*

.. math:: p(x) = \int N\big(x;\, g_\mu(z),\, \mathrm{diag}\, g_{\sigma}(z)^2\big)\, N(z; 0, I)\, dz,

one Gaussian component per latent code ``z``, its mean and per-dimension
standard deviation produced by the decoder network (the standard deviation
has a floor ``min_scale`` so the density stays bounded). For binary data the
decoder instead gives Bernoulli logits.

Kingma & Welling (2014), *Auto-Encoding Variational Bayes*; the default sizes
follow Cremer, Li & Duvenaud (2018), *Inference Suboptimality in VAEs*
(latent 50, decoder 50-200-200-784, ELU).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .guides import GAUSSIAN_FAMILIES, GaussianEncoder, gaussian_encoder
from .networks import mlp
from .spec import ModelSpec

LIKELIHOODS = ("bernoulli", "gaussian")
DECODERS = ("mlp", "autoregressive")


def check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
    return likelihood


class AutoregressiveBernoulli(dist.TorchDistribution):
    r"""Binary vectors with :math:`p(x) = \prod_d \mathrm{Bern}\big(x_d;\ \sigma(a_d + \sum_{j<d} W_{dj} x_j)\big)`.

    ``base_logits`` :math:`a` (batch shape + ``(D,)``) carry the latent code; ``weight`` :math:`W`
    ``(D, D)`` must be strictly lower triangular (pixel d sees only the pixels before it), so the
    product is a normalized distribution over :math:`\{0, 1\}^D`. Sampling is sequential, pixel by pixel.
    """

    arg_constraints: dict = {}
    support = dist.constraints.independent(dist.constraints.boolean, 1)
    has_rsample = False

    def __init__(self, base_logits: torch.Tensor, weight: torch.Tensor):
        self.base_logits, self.weight = base_logits, weight
        super().__init__(base_logits.shape[:-1], base_logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return AutoregressiveBernoulli(self.base_logits.expand(batch_shape + self.event_shape), self.weight)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.base_logits + value @ self.weight.T
        return -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none").sum(-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        base = self.base_logits.expand(shape)
        x = base.new_zeros(shape)
        with torch.no_grad():
            for d in range(shape[-1]):
                x[..., d] = torch.bernoulli(torch.sigmoid(base[..., d] + x @ self.weight[d]))
        return x


class VAE(nn.Module):
    """Generative model ``p(z) p(x|z)`` with an MLP decoder.

    ``model(x)`` follows the package convention: the latent ``z`` and the
    observation ``x`` of each datapoint are sampled inside
    ``pyro.plate("data", len(x))``. The decoder broadcasts over any leading
    sample dimensions of ``z``, so the program can be vectorized over samples.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "elu",
        min_scale: float = 1e-2,
        decoder: str = "mlp",
    ):
        super().__init__()
        self.likelihood = check_likelihood(likelihood)
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
        if decoder == "autoregressive" and likelihood != "bernoulli":
            raise ValueError("decoder 'autoregressive' is a Bernoulli decoder: use it with likelihood 'bernoulli'")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.min_scale = float(min_scale)
        out_dim = data_dim if likelihood == "bernoulli" else 2 * data_dim
        self.decoder = mlp(latent_dim, hidden, out_dim, activation)
        self.autoregressive = decoder == "autoregressive"
        if self.autoregressive:  # pixel d sees pixels 0..d-1: a strictly lower triangular weight
            self.context = nn.Parameter(torch.zeros(data_dim, data_dim))
            self.register_buffer("context_mask", torch.ones(data_dim, data_dim).tril(-1), persistent=False)
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """``p(x|z)`` as a distribution with event shape ``(data_dim,)``."""
        out = self.decoder(z)
        if self.autoregressive:
            return AutoregressiveBernoulli(out, self.context * self.context_mask)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = self.min_scale + F.softplus(raw_scale)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", len(x)):
            prior = dist.Normal(self.prior_loc, self.prior_scale, validate_args=False).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood_dist(z), obs=x)


def build(config: dict) -> tuple[VAE, GaussianEncoder]:
    d, k = config["data_dim"], config["latent_dim"]
    model = VAE(d, k, config["hidden"], config["likelihood"], config["activation"], config["min_scale"], config.get("decoder", "mlp"))
    return model, gaussian_encoder(d, k, config)


SPEC = ModelSpec(
    name="vae",
    description="the VAE as an infinite mixture: N(0, I) latent, MLP decoder with Bernoulli or Gaussian (learned variance) output",
    build=build,
    # Cremer, Li & Duvenaud (2018): latent 50, encoder D-200-200-100, decoder 50-200-200-D, ELU.
    defaults={
        "latent_dim": 50, "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "elu", "min_scale": 1e-2,
        "flow_layers": 2, "flow_hidden": [100], "decoder": "mlp",
    },
    guides=GAUSSIAN_FAMILIES,
    likelihoods=LIKELIHOODS,
    help={"latent_dim": "latent size", "decoder": "mlp (p(x|z) factorizes over pixels) or autoregressive (Bernoulli only: each pixel "
          "also sees the pixels before it, a strong decoder that can ignore z)"},
)
