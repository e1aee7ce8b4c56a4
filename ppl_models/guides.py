"""Amortized guides (approximate posteriors) for the models in this package.

Every guide follows the package convention: ``guide(x)`` takes a batch and
samples each per-datapoint latent inside ``pyro.plate("data", len(x))``.

Each guide also says what its own variational family is *per datapoint*, so that the
local optimum q* of the gap decomposition is sought in that family (see
:func:`inference.families.own_family`). Either

* ``local_family`` names a per-datapoint family of :mod:`inference.families` that is the
  guide's family (``"ffg"``, ``"categorical"``, ``"bernoulli"``; ``"iaf"``/``"coupling"``
  with ``local_flow = (layers, hidden sizes)``, a per-datapoint flow of the same size), or
* ``variational_params(x)`` returns the per-datapoint outputs of the encoder (a dict of
  tensors whose first dim is the datapoint) and ``forward(x, params)`` runs the guide with
  those outputs replaced by ``params``: free per-datapoint parameters, started from the
  encoder's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive, ConditionalAffineCoupling, Permute
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import nn

from .networks import ACTIVATIONS, mlp

GAUSSIAN_FAMILIES = ("ffg", "full", "iaf", "coupling")


def check_gaussian_family(family: str) -> str:
    if family not in GAUSSIAN_FAMILIES:
        raise ValueError(f"unknown Gaussian guide family {family!r}; choose from {', '.join(GAUSSIAN_FAMILIES)}")
    return family


class HostOrderARN(ConditionalAutoRegressiveNN):
    """Pyro's ``ConditionalAutoRegressiveNN`` whose ``permutation`` stays on the CPU when the module moves to a device.

    ``AffineAutoregressive``'s inverse (every ``log_prob`` of a value it did not sample itself: STL, DReG,
    RWS, wake-sleep, AIS from the guide) iterates over the permutation and indexes a Python list with each
    entry; on a GPU every entry is a host-device synchronization (latent dimensions x layers per call). The
    masks, which the forward pass uses, move with the module as before.
    """

    def _apply(self, fn, recurse=True):
        order = self.permutation
        out = super()._apply(fn, recurse)
        self._buffers["permutation"] = order
        return out


class GaussianHead(nn.Module):
    r"""Features ``h`` to a distribution over a ``latent_dim`` vector, in one of four families.

    * ``ffg`` — :math:`N(\mu(h), \mathrm{diag}\,\sigma(h)^2)`;
    * ``full`` — :math:`N(\mu(h), L(h) L(h)^\top)` with a Cholesky factor :math:`L` (positive diagonal);
    * ``iaf`` — an FFG base pushed through ``flow_layers`` inverse autoregressive flows
      (Kingma et al. 2016) conditioned on ``h``: Pyro's ``ConditionalAffineAutoregressive``;
    * ``coupling`` — the same with RealNVP affine couplings (Dinh et al. 2017),
      Pyro's ``ConditionalAffineCoupling``, the halves swapped between layers.
    """

    def __init__(self, in_dim: int, latent_dim: int, family: str = "ffg", flow_layers: int = 2, flow_hidden: Sequence[int] = (100,)):
        super().__init__()
        self.family = check_gaussian_family(family)
        self.latent_dim = d = latent_dim
        if family == "full":
            self.params_net = nn.Linear(in_dim, 2 * d + d * (d - 1) // 2)
            self.register_buffer("tril_index", torch.tril_indices(d, d, -1), persistent=False)
        else:
            self.params_net = nn.Linear(in_dim, 2 * d)
        self.flows = nn.ModuleList()
        if family in ("iaf", "coupling"):

            if d < 2:
                raise ValueError(f"flow guides need a latent of at least 2 dimensions, got {d}")
            if isinstance(flow_layers, bool) or int(flow_layers) != flow_layers or flow_layers < 1:
                raise ValueError(f"flow_layers must be a positive integer, got {flow_layers!r}")
            hidden = list(flow_hidden)
            for k in range(int(flow_layers)):
                if family == "iaf":
                    order = torch.arange(d) if k % 2 == 0 else torch.arange(d).flip(0)
                    arn = HostOrderARN(d, in_dim, hidden, permutation=order)
                    self.flows.append(ConditionalAffineAutoregressive(arn))
                else:
                    split = d // 2
                    net = ConditionalDenseNN(split, in_dim, hidden, param_dims=[d - split, d - split])
                    self.flows.append(ConditionalAffineCoupling(split, net))
            self.register_buffer("flip", torch.arange(d).flip(0), persistent=False)

    def params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The variational parameters the head computes from ``h``: ``loc`` and ``log_scale``, and ``offdiag``
        (the Cholesky factor's strict lower triangle) for ``full`` or ``context`` (``h`` itself) for the flows."""
        d = self.latent_dim
        out = self.params_net(h)
        params = {"loc": out[..., :d], "log_scale": out[..., d : 2 * d]}
        if self.family == "full":
            params["offdiag"] = out[..., 2 * d :]
        elif len(self.flows):
            params["context"] = h
        return params

    def distribution(self, params: dict[str, torch.Tensor]) -> dist.Distribution:
        """The distribution with the variational parameters ``params`` (as :meth:`params` returns them)."""
        loc, log_scale = params["loc"], params["log_scale"]
        if self.family == "full":
            tril = torch.diag_embed(log_scale.exp())
            tril[..., self.tril_index[0], self.tril_index[1]] = params["offdiag"]
            return dist.MultivariateNormal(loc, scale_tril=tril, validate_args=False)
        base = dist.Normal(loc, log_scale.exp(), validate_args=False).to_event(1)
        if not len(self.flows):
            return base
        transforms = []
        for k, flow in enumerate(self.flows):
            if k and self.family == "coupling":
                transforms.append(Permute(self.flip))
            transforms.append(flow.condition(params["context"]))
        return dist.TransformedDistribution(base, transforms, validate_args=False)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return self.distribution(self.params(h))

    def local_flow_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """This head's member for each datapoint, as the parameters of a per-datapoint IAF (:mod:`inference.families`).

        With its context ``h_i`` fixed, each ``ConditionalAffineAutoregressive`` layer is a MADE whose first-layer
        bias is ``W_c h_i + b``: the per-datapoint flow (same masks, same order, ReLU) with ``b1_i = W_c h_i + b``
        and the shared weights copied is the same distribution, so local q* can start *at* q instead of at a
        Gaussian. None unless the family is ``iaf`` with one hidden layer per flow (what per-datapoint flows have).
        """
        if self.family != "iaf" or any(len(flow.nn.layers) != 2 for flow in self.flows):
            return None
        h = params["context"]
        n, d = h.shape[0], self.latent_dim
        out = {"loc": params["loc"], "log_scale": params["log_scale"]}
        for k, flow in enumerate(self.flows):
            first, last = flow.nn.layers
            w1 = first.weight * first.mask  # (H, c + d): the context's columns first, as the network concatenates them
            context = h.shape[-1]
            out[f"f{k}.w1"] = w1[:, context:].expand(n, *w1[:, context:].shape)
            out[f"f{k}.b1"] = h @ w1[:, :context].T + first.bias
            w2 = last.weight * last.mask  # (2d, H): rows [mean_1..mean_d, log_scale_1..log_scale_d]
            out[f"f{k}.w2"] = w2.expand(n, 2 * d, w2.shape[1])
            out[f"f{k}.b2"] = last.bias.expand(n, 2 * d)
        return out


class GaussianEncoder(nn.Module):
    """Amortized ``q(z|x)`` of any :data:`GAUSSIAN_FAMILIES` member: MLP features of ``x``, then a :class:`GaussianHead`.

    The features are the last hidden layer of ``data_dim -> hidden``, so the flows
    are conditioned on the encoder's context as in Kingma et al. (2016).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: str = "elu",
        family: str = "ffg",
        site: str = "z",
        flow_layers: int = 2,
        flow_hidden: Sequence[int] = (100,),
    ):
        super().__init__()
        self.site = site
        self.features = features(data_dim, hidden, activation)
        in_dim = hidden[-1] if len(hidden) else data_dim
        self.head = GaussianHead(in_dim, latent_dim, family, flow_layers, flow_hidden)
        # per datapoint: a free FFG; a per-datapoint flow of the same size; for full covariance, free Cholesky factors
        self.local_family = {"ffg": "ffg", "iaf": "iaf", "coupling": "coupling"}.get(family)
        self.local_flow = (int(flow_layers), list(flow_hidden))
        self.family_name = family

    def variational_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder's per-datapoint output (see :meth:`GaussianHead.params`)."""
        return self.head.params(self.features(x))

    def local_start(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]] | None:
        """Where local q* in this guide's own per-datapoint family starts: ``{site: parameters}``, each datapoint's
        amortized member itself (the documented hook of :func:`inference.local.init_local`); None where the
        local family's start from the guide's mean and scale already is that member (FFG) or none is known."""
        params = self.head.local_flow_params(self.variational_params(x))
        return None if params is None else {self.site: params}

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> None:
        fn = self.head.distribution(self.variational_params(x) if params is None else params)
        with pyro.plate("data", len(x)):
            pyro.sample(self.site, fn)


def features(in_dim: int, hidden: Sequence[int], activation: str) -> nn.Module:
    """``in_dim -> hidden`` with an activation after every layer (the identity when ``hidden`` is empty)."""
    if not len(hidden):
        return nn.Identity()
    return nn.Sequential(mlp(in_dim, hidden[:-1], hidden[-1], activation), ACTIVATIONS[activation]())


class FFGEncoder(GaussianEncoder):
    r"""Amortized fully factorized Gaussian :math:`q(z|x) = \prod_j N(z_j; \mu_j(x), \sigma_j(x)^2)`: a :class:`GaussianEncoder` of family ``ffg``.

    The "FFG" family of Cremer, Li & Duvenaud (2018), *Inference Suboptimality in
    Variational Autoencoders*, with its encoder ``data_dim -> hidden -> 2 * latent_dim``.
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int] = (200, 200), activation: str = "elu", site: str = "z"):
        super().__init__(data_dim, latent_dim, hidden, activation, "ffg", site)
        self.num_hidden = len(hidden)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before this class was a :class:`GaussianEncoder` hold one network ``net``
        (``data_dim -> hidden -> 2 * latent_dim``): its hidden layers are ``features``, its last layer the head's."""
        last = 2 * self.num_hidden
        for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
            index, _, param = key[len(prefix) + len("net.") :].partition(".")
            new = f"head.params_net.{param}" if int(index) == last else f"features.0.{index}.{param}"
            state_dict[prefix + new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x), each of shape ``(len(x), latent_dim)``."""
        params = self.variational_params(x)
        return params["loc"], params["log_scale"].exp()


def gaussian_encoder(data_dim: int, latent_dim: int, config: dict) -> GaussianEncoder:
    """The amortized Gaussian guide a model config asks for: ``guide`` (family), ``encoder_hidden``, ``activation``, flow sizes."""
    if config["guide"] == "ffg":
        return FFGEncoder(data_dim, latent_dim, config["encoder_hidden"], config["activation"])
    return GaussianEncoder(
        data_dim, latent_dim, config["encoder_hidden"], config["activation"], config["guide"],
        flow_layers=config.get("flow_layers", 2), flow_hidden=config.get("flow_hidden", [100]),
    )
