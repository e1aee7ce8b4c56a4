r"""Sigmoid belief networks: layers of binary latent units (Neal 1992).

With layers :math:`h_1, \dots, h_L` (``h_1`` next to the data),

.. math::
    p(h_L) = \prod_j \mathrm{Bern}(\sigma(b_L)), \qquad
    p(h_l \mid h_{l+1}) = \prod_j \mathrm{Bern}(\sigma(W_l h_{l+1} + b_l)), \qquad
    p(x \mid h_1) = \prod_d \mathrm{Bern}(\sigma(W_0 h_1 + b_0)),

and the amortized guide computes factorized Bernoulli layers bottom-up,
:math:`q(h_1|x) q(h_2|h_1) \cdots`, as in Mnih & Gregor (2014), *Neural
Variational Inference and Learning in Belief Networks* (NVIL). Nothing is
reparameterizable, so training uses score-function gradients
(``TraceGraph_ELBO``); the guide attaches NVIL's variance reduction to every
layer through ``infer={"baseline": ...}``: a decaying average of the learning
signal and/or a neural baseline :math:`b_\psi(x)` (an MLP of the datapoint).
Reference sizes: SBN-200, SBN-200-200, SBN-200-200-200.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .networks import check_layer_sizes, mlp
from .spec import ModelSpec

BASELINES = ("none", "decaying", "neural", "nvil")


def check_layers(layers: Sequence[int]) -> list[int]:
    return check_layer_sizes(layers, "a sigmoid belief net", "layers=[200]")


class SigmoidBeliefNet(nn.Module):
    """Top-down generative SBN with latent sites ``h1`` (bottom) ... ``hL`` (top), all in the data plate."""

    def __init__(self, data_dim: int, layers: Sequence[int] = (200,)):
        super().__init__()
        self.layers = check_layers(layers)
        self.data_dim = data_dim
        self.top_logits = nn.Parameter(torch.zeros(self.layers[-1]))
        sizes = [data_dim, *self.layers]
        # decoders[l] maps layer l+1 (1-based h_{l+1}) to the logits of the layer below it
        self.decoders = nn.ModuleList([nn.Linear(sizes[l + 1], sizes[l]) for l in range(len(self.layers))])

    def forward(self, x: torch.Tensor) -> None:
        depth = len(self.layers)
        with pyro.plate("data", len(x)):
            h = pyro.sample(f"h{depth}", dist.Bernoulli(logits=self.top_logits, validate_args=False).to_event(1))
            for l in range(depth - 1, 0, -1):
                h = pyro.sample(f"h{l}", dist.Bernoulli(logits=self.decoders[l](h), validate_args=False).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoders[0](h), validate_args=False).to_event(1), obs=x)


class SBNEncoder(nn.Module):
    """Bottom-up factorized Bernoulli guide ``q(h1|x) q(h2|h1) ...`` with NVIL baselines.

    ``baseline``: ``"none"``, ``"decaying"`` (Pyro's decaying average of the learning
    signal), ``"neural"`` (an MLP ``b(x)`` per layer, fitted by Pyro to the learning
    signal) or ``"nvil"`` (both; the default).
    """

    def __init__(self, data_dim: int, layers: Sequence[int] = (200,), baseline: str = "nvil", baseline_hidden: Sequence[int] = (100,)):
        super().__init__()
        self.layers = check_layers(layers)
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")
        self.baseline = baseline
        sizes = [data_dim, *self.layers]
        self.encoders = nn.ModuleList([nn.Linear(sizes[l], sizes[l + 1]) for l in range(len(self.layers))])
        if baseline in ("neural", "nvil"):
            self.baselines = nn.ModuleList([_ScalarNet(data_dim, baseline_hidden) for _ in self.layers])

    def _infer(self, l: int, x: torch.Tensor) -> dict:
        options: dict = {}
        if self.baseline in ("decaying", "nvil"):
            options["use_decaying_avg_baseline"] = True
        if self.baseline in ("neural", "nvil"):
            options["nn_baseline"] = self.baselines[l]
            options["nn_baseline_input"] = x
        return {"baseline": options} if options else {}

    @property
    def local_family(self) -> str | None:
        """One layer: per datapoint, free factorized Bernoulli logits. Deeper: see :meth:`variational_params`."""
        return "bernoulli" if len(self.layers) == 1 else None

    @property
    def family_name(self) -> str:
        return "bernoulli" if len(self.layers) == 1 else "sbn"

    def variational_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the guide computes from x: the logits of q(h1 | x). The upper conditionals take no x and stay as trained."""
        return {"logits1": self.encoders[0](x)}

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> None:
        h = x
        with pyro.plate("data", len(x)):
            for l, encoder in enumerate(self.encoders):
                logits = (self.variational_params(x) if params is None else params)["logits1"] if l == 0 else encoder(h)
                fn = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
                h = pyro.sample(f"h{l + 1}", fn, infer=self._infer(l, x))


class _ScalarNet(nn.Module):
    """An MLP with one output, squeezed: a per-datapoint baseline of shape ``(N,)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp(in_dim, hidden, 1, "tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build(config: dict) -> tuple[SigmoidBeliefNet, SBNEncoder]:
    d = config["data_dim"]
    return SigmoidBeliefNet(d, config["layers"]), SBNEncoder(d, config["layers"], config["baseline"], config["baseline_hidden"])


SPEC = ModelSpec(
    name="sbn",
    description="sigmoid belief net: layers of binary latents, exact log p(x) by enumeration when small",
    build=build,
    # Mnih & Gregor (2014): SBN-200 (also 200-200, 200-200-200), NVIL baselines.
    defaults={"layers": [200], "baseline": "nvil", "baseline_hidden": [100]},
    guides=("bernoulli",),
    likelihoods=("bernoulli",),
    help={
        "layers": "latent layer sizes bottom-up, e.g. 200,200", "baseline": "nvil, neural, decaying or none",
        "baseline_hidden": "hidden sizes of the neural baseline",
    },
    train={"objective": "tracegraph", "kl_warmup_epochs": 0.0, "lr": 3e-4},
    discrete=True,
)
