r"""Per-datapoint (local) variational families, vectorized over datapoints.

A :class:`LocalGuide` holds one set of variational parameters *per datapoint*:
every parameter tensor has the datapoint as its first dim, so N datapoints'
posteriors are one program and one loss, and an elementwise optimizer keeps
them independent. The families, for every local latent site of a model:

* ``ffg`` — fully factorized Gaussian :math:`N(\mu_i, \mathrm{diag}\,\sigma_i^2)` (in the
  unconstrained space of the site's support);
* ``full`` — full-covariance Gaussian :math:`N(\mu_i, L_i L_i^\top)`, Cholesky-parameterized;
* ``iaf`` — an FFG base pushed through inverse autoregressive flows (Kingma et al.
  2016): Pyro's :class:`~pyro.distributions.transforms.AffineAutoregressive` driven by a
  masked autoencoder (MADE, Germain et al. 2015) whose weights are per datapoint;
* ``coupling`` — the same with RealNVP affine couplings (Dinh et al. 2017), Pyro's
  :class:`~pyro.distributions.transforms.AffineCoupling` with a per-datapoint hypernetwork;
* ``bernoulli`` / ``categorical`` — factorized discrete posteriors (per-datapoint logits)
  for Bernoulli or categorical latents;
* ``guide`` — the amortized guide's *own* family (:func:`own_family`): the family in which
  the gap decomposition seeks q*. A guide declares it (see :mod:`ppl_models.guides`)
  either by naming one of the families above (``local_family``) or by exposing its
  per-datapoint encoder outputs (``variational_params(x)`` and ``forward(x, params)``),
  which :class:`ParametrizedGuide` replaces by free per-datapoint parameters. A guide that
  declares nothing gets the product of each site's default (``ffg`` for continuous,
  ``bernoulli``/``categorical`` for discrete sites).

A family name covers the sites it fits: a Gaussian family is applied to the continuous
sites and a discrete site gets its own discrete family, so a model with a cluster ``c``
and a style ``z`` per datapoint gets categorical(c) × FFG(z) for ``ffg`` and
``categorical`` alike.

The per-datapoint networks are batched matrix products over the datapoint dim,
never one flow object per datapoint. Flows start at the identity (zero output
weights), so a flow fit starts from its FFG initialization.
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineAutoregressive, AffineCoupling, Permute
from torch import nn
from torch.distributions import biject_to

from .program import Program
from .streams import PointStream, draw_normal

GAUSSIAN = ("ffg", "full", "iaf", "coupling")
DISCRETE = ("bernoulli", "categorical")
OWN = "guide"
LOCAL_FAMILIES = (OWN, *GAUSSIAN, *DISCRETE)
FLOWS = ("iaf", "coupling")


class SiteInfo(NamedTuple):
    """What a local family needs to know about one latent site of the model."""

    event_shape: tuple[int, ...]
    support: object
    kind: str  #: "continuous", "bernoulli" or "categorical"
    num_categories: int = 0


@dataclass(frozen=True)
class FlowOptions:
    """Size of the per-datapoint flows: ``layers`` transforms with one hidden layer of ``hidden`` units (0: affine)."""

    layers: int = 2
    hidden: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.layers, bool) or int(self.layers) != self.layers or self.layers < 1:
            raise ValueError(f"flow layers must be a positive integer, got {self.layers!r}")
        if isinstance(self.hidden, bool) or int(self.hidden) != self.hidden or self.hidden < 0:
            raise ValueError(f"flow hidden units must be a non-negative integer, got {self.hidden!r}")


def check_family(family: str) -> str:
    if family not in LOCAL_FAMILIES:
        raise ValueError(f"unknown local family {family!r}; choose from {', '.join(LOCAL_FAMILIES)}")
    return family


def site_families(family: str, sites: dict[str, SiteInfo]) -> dict[str, str]:
    """The family of each site under ``family``: Gaussian families for the continuous sites, each discrete site its own kind.

    Refuses a family that fits no site, or a site it cannot describe (``full`` and flows
    need vector-valued sites; flows at least 2 dimensions). Every suggested fix works.
    """
    continuous = [n for n, s in sites.items() if s.kind == "continuous"]
    if family in GAUSSIAN and not continuous:
        name, site = next(iter(sites.items()))
        raise ValueError(f"local family {family!r} is for continuous latents; site {name!r} is {site.kind} (use --local {site.kind})")
    if family in DISCRETE and not any(s.kind == family for s in sites.values()):
        name, site = next((n, s) for n, s in sites.items() if s.kind != family)
        what = "a continuous latent" if site.kind == "continuous" else f"a {site.kind} latent"
        fix = "ffg" if site.kind == "continuous" else site.kind
        raise ValueError(f"local family {family!r} does not fit site {name!r}, {what} (use --local {fix})")
    out = {}
    for name, site in sites.items():
        if site.kind != "continuous":
            out[name] = site.kind
            continue
        chosen = family if family in GAUSSIAN else "ffg"
        if chosen in ("full", *FLOWS) and len(site.event_shape) != 1:
            raise ValueError(f"local family {chosen!r} needs vector-valued sites; {name!r} has event shape {site.event_shape} (use --local ffg)")
        if chosen in FLOWS and site.event_shape[0] < 2:
            raise ValueError(f"local family {chosen!r} needs at least 2 dimensions per site; {name!r} has {site.event_shape[0]} (use --local ffg)")
        out[name] = chosen
    return out


# ---------------------------------------------------------------- per-datapoint networks


def made_masks(dim: int, hidden: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MADE masks for the autoregressive ``order`` (``order[j]`` is the j-th variable generated).

    Output ``i`` may depend only on inputs generated before ``i``. Hidden units get the degrees
    Pyro's conditional ``AutoRegressiveNN`` gives them (evenly spaced, ``round(linspace(1, D, H)) - 2``,
    the lowest seeing only the context), so a per-datapoint flow has the architecture of the
    amortized one with its context fixed. With ``hidden == 0`` the single (linear) mask is
    returned first and the second is ``None``.
    """
    degree = torch.empty(dim, dtype=torch.long)
    degree[order] = torch.arange(dim)
    if hidden == 0:
        return (degree[:, None] > degree[None, :]).float(), None
    hidden_degree = torch.round(torch.linspace(1, dim, hidden)).long() - 2
    first = (hidden_degree[:, None] >= degree[None, :]).float()  # (hidden, dim)
    second = (degree[:, None] > hidden_degree[None, :]).float()  # (dim, hidden)
    return first, second


class BatchedMADE:
    """A masked autoencoder with per-datapoint weights: ``z (..., N, D) -> (mean, log_scale)``.

    Plays the role of Pyro's ``AutoRegressiveNN`` inside ``AffineAutoregressive`` (ReLU hidden
    layer, as Pyro's default); a per-datapoint first-layer bias stands for the context input.
    """

    def __init__(self, params: dict[str, torch.Tensor], masks, order: torch.Tensor):
        self.p, self.masks = params, masks
        self.permutation = order

    def get_permutation(self) -> torch.Tensor:
        return self.permutation

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self.masks
        if second is None:
            out = torch.einsum("...nd,nod->...no", z, self.p["w2"] * first.repeat(2, 1)) + self.p["b2"]
        else:
            h = torch.einsum("...nd,nhd->...nh", z, self.p["w1"] * first) + self.p["b1"]
            h = torch.nn.functional.relu(h)
            out = torch.einsum("...nh,noh->...no", h, self.p["w2"] * second.repeat(2, 1)) + self.p["b2"]
        mean, log_scale = out.chunk(2, dim=-1)
        return mean, log_scale


class BatchedHypernet:
    """Per-datapoint MLP ``x1 (..., N, d1) -> (mean, log_scale)`` of the other ``d2`` dims (a coupling's hypernet):
    Pyro's ``DenseNN`` (ReLU) with a per-datapoint first-layer bias in place of the context input."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.p = params

    def __call__(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if "w1" in self.p:
            h = torch.nn.functional.relu(torch.einsum("...nd,nhd->...nh", x1, self.p["w1"]) + self.p["b1"])
        else:
            h = x1
        out = torch.einsum("...nh,noh->...no", h, self.p["w2"]) + self.p["b2"]
        return out.chunk(2, dim=-1)


@functools.lru_cache(maxsize=256)
def _flow_layout(dim: int, hidden: int, layer: int, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
    """Layer ``layer``'s autoregressive order (on the CPU: the inverse iterates over it, and a device tensor would
    synchronize at every entry) and its MADE masks on ``device``, built once, not at every optimization step."""
    order = torch.arange(dim)
    order = order if layer % 2 == 0 else order.flip(0)
    masks = tuple(m.to(device) if m is not None else None for m in made_masks(dim, hidden, order))
    return order, masks


def init_flow_params(
    n: int, dim: int, options: FlowOptions, family: str, like: torch.Tensor, stream: PointStream | None = None, label: str = ""
) -> dict[str, torch.Tensor]:
    """Per-datapoint flow weights: random hidden layers, zero output layer (the identity map).

    With a ``stream`` each datapoint's random weights are keyed by its index (:mod:`inference.streams`)."""
    out: dict[str, torch.Tensor] = {}
    split = dim // 2
    for k in range(options.layers):
        d_in, d_out = (dim, dim) if family == "iaf" else (split, dim - split)
        h = options.hidden
        if h:
            shape = torch.empty(n, h, d_in, dtype=like.dtype, device=like.device)
            noise = (torch.randn_like(shape) if stream is None else
                     draw_normal(stream, f"flow-init:{label}", k, shape, data_axis=0, sample_axis=None))
            out[f"f{k}.w1"] = noise / math.sqrt(d_in)
            out[f"f{k}.b1"] = torch.zeros(n, h, dtype=like.dtype, device=like.device)
        out[f"f{k}.w2"] = torch.zeros(n, 2 * d_out, h or d_in, dtype=like.dtype, device=like.device)
        out[f"f{k}.b2"] = torch.zeros(n, 2 * d_out, dtype=like.dtype, device=like.device)
    return out


def flow_transforms(p: dict[str, torch.Tensor], dim: int, options: FlowOptions, family: str) -> list:
    """Pyro transforms of one site's per-datapoint flow, in the order they are applied."""
    transforms = []
    device = next(iter(p.values())).device
    for k in range(options.layers):
        layer = {key.split(".", 1)[1]: value for key, value in p.items() if key.startswith(f"f{k}.")}
        if family == "iaf":
            order, masks = _flow_layout(dim, options.hidden, k, device)
            transforms.append(AffineAutoregressive(BatchedMADE(layer, masks, order)))
        else:
            if k:
                transforms.append(Permute(torch.arange(dim, device=device).flip(0)))
            transforms.append(AffineCoupling(dim // 2, BatchedHypernet(layer)))
    return transforms


# ---------------------------------------------------------------- the site distributions


def site_distribution(family: str, site: SiteInfo, p: dict[str, torch.Tensor], options: FlowOptions) -> dist.Distribution:
    """The local posterior of one site, batch shape ``(N,)``, from its per-datapoint parameters ``p``."""
    if family in DISCRETE:
        if site.kind == "categorical":
            return dist.Categorical(logits=p["logits"], validate_args=False)
        return dist.Bernoulli(logits=p["logits"], validate_args=False).to_event(len(site.event_shape))
    if family == "full":
        tril = p["tril"].tril(-1) + torch.diag_embed(p["tril"].diagonal(dim1=-2, dim2=-1).exp())
        fn = dist.MultivariateNormal(p["loc"], scale_tril=tril, validate_args=False)
    else:
        fn = dist.Normal(p["loc"], p["log_scale"].exp(), validate_args=False).to_event(len(site.event_shape))
        if family in FLOWS:
            flows = {k: v for k, v in p.items() if k.startswith("f")}
            fn = dist.TransformedDistribution(fn, flow_transforms(flows, site.event_shape[0], options, family), validate_args=False)
    if not _is_real(site.support):
        fn = dist.TransformedDistribution(fn, biject_to(site.support), validate_args=False)
    return fn


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class Start(NamedTuple):
    """Where a local fit starts, per datapoint: Gaussian ``loc``/``log_scale`` or discrete ``logits``."""

    loc: torch.Tensor | None = None
    log_scale: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def init_params(
    family: str, site: SiteInfo, start: Start, options: FlowOptions, stream: PointStream | None = None, name: str = ""
) -> dict[str, torch.Tensor]:
    """The per-datapoint parameters of ``family`` for one site (``name``), starting at ``start``; random flow weights
    keyed by datapoint with a ``stream``."""
    if family in DISCRETE:
        return {"logits": start.logits.detach().clone()}
    loc, log_scale = start.loc.detach().clone(), start.log_scale.detach().clone()
    if family == "full":
        return {"loc": loc, "tril": torch.diag_embed(log_scale)}
    out = {"loc": loc, "log_scale": log_scale}
    if family in FLOWS:
        out.update(init_flow_params(len(loc), site.event_shape[0], options, family, loc, stream, name))
    return out


def local_program(
    families: dict[str, str],
    tensors: dict[str, dict[str, torch.Tensor]],
    sites: dict[str, SiteInfo],
    data_dim: int,
    options: FlowOptions = FlowOptions(),
    global_guide: Program | None = None,
) -> Program:
    """The guide program of per-site local families with the given per-datapoint parameter tensors."""

    def guide(x: torch.Tensor) -> None:
        if global_guide is not None:
            global_guide(x)
        with pyro.plate("data", len(x), dim=data_dim):
            for name, p in tensors.items():
                pyro.sample(name, site_distribution(families[name], sites[name], p, options))

    return guide


class PerDatapointGuide(nn.Module, abc.ABC):
    """Parameters with one row per datapoint, in one flat list (``tensors``) that optimizers and subsets work on.

    Row ``i`` of every parameter belongs to datapoint ``x[i]``; ``guide(x)`` needs ``len(x)``
    equal to the number of rows. Subclasses say how a list of such tensors becomes a program.
    """

    family: str  #: the name the family is reported under
    sites: dict[str, SiteInfo]

    def __init__(self, keys: list[tuple[str, str]], flat: list[torch.Tensor]):
        super().__init__()
        self.keys = list(keys)
        self.tensors = nn.ParameterList([nn.Parameter(t.detach().clone()) for t in flat])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n, _ in self.keys))

    @property
    def num_points(self) -> int:
        return self.tensors[0].shape[0]

    def params(self, name: str) -> dict[str, torch.Tensor]:
        """The per-datapoint parameters grouped under ``name`` (first dim = datapoint)."""
        if name not in self.names:
            raise KeyError(f"no parameters {name!r}; have: {', '.join(self.names)}")
        return {k: t for (n, k), t in zip(self.keys, self.tensors) if n == name}

    def nested(self, flat: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """``flat`` tensors (in this guide's order) as ``{name: {param: tensor}}``."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for (n, k), t in zip(self.keys, flat):
            out.setdefault(n, {})[k] = t
        return out

    @abc.abstractmethod
    def program(self, flat: list[torch.Tensor]) -> Program:
        """The guide program with the per-datapoint parameters ``flat`` (this guide's order) in place of its own."""

    @abc.abstractmethod
    def with_tensors(self, flat: list[torch.Tensor]) -> PerDatapointGuide:
        """A guide of the same family holding ``flat``."""

    def subset(self, index: torch.Tensor) -> PerDatapointGuide:
        """A new guide holding only the rows ``index``."""
        return self.with_tensors([t[index] for t in self.tensors])

    def forward(self, x: torch.Tensor) -> None:
        if len(x) != self.num_points:
            raise ValueError(f"this local guide holds parameters for {self.num_points} datapoints; got a batch of {len(x)}")
        self.program(list(self.tensors))(x)


class LocalGuide(PerDatapointGuide):
    """A per-datapoint guide of :data:`LOCAL_FAMILIES` members over every local latent site (one family per site).

    ``family`` is one family name (resolved per site by :func:`site_families`) or a dict
    ``{site: family}``. Global latents, if the model has any, are drawn from ``global_guide``.
    """

    def __init__(
        self,
        family: str | dict[str, str],
        tensors: dict[str, dict[str, torch.Tensor]],
        sites: dict[str, SiteInfo],
        data_dim: int,
        options: FlowOptions = FlowOptions(),
        global_guide: Program | None = None,
    ):
        keys = [(name, key) for name, p in tensors.items() for key in p]
        super().__init__(keys, [tensors[n][k] for n, k in keys])
        if isinstance(family, str):
            self.families = site_families(check_family(family), sites) if family != OWN else None
            label = family
        else:
            self.families, label = dict(family), "+".join(dict.fromkeys(family.values()))
        if self.families is None:
            raise ValueError("LocalGuide takes concrete families; for the guide's own family use inference.local.init_local")
        self.family = label
        self.sites, self.data_dim, self.options, self.global_guide = dict(sites), data_dim, options, global_guide

    @property
    def reparameterized(self) -> bool:
        return all(f in GAUSSIAN for f in self.families.values())

    def program(self, flat: list[torch.Tensor]) -> Program:
        """The guide program with parameters ``flat`` (e.g. a subset of rows) in place of this guide's."""
        return local_program(self.families, self.nested(flat), self.sites, self.data_dim, self.options, self.global_guide)

    def with_tensors(self, flat: list[torch.Tensor]) -> LocalGuide:
        guide = LocalGuide(self.families, self.nested(flat), self.sites, self.data_dim, self.options, self.global_guide)
        guide.family = self.family
        return guide


class ParametrizedGuide(PerDatapointGuide):
    """An amortized guide's own family per datapoint: ``guide(x, params)`` with free per-datapoint ``params``.

    ``params`` start at the encoder's output ``guide.variational_params(x)``; everything
    else the guide computes (networks that take no ``x``, such as the upper conditionals
    of a bottom-up hierarchical guide, or model networks the ladder guide reads) stays
    fixed. The guide is held by reference (its parameters are not this module's).
    """

    def __init__(
        self, guide: nn.Module, params: dict[str, torch.Tensor], sites: dict[str, SiteInfo], label: str, reparameterized: bool
    ):
        keys = [("params", k) for k in params]
        super().__init__(keys, [params[k] for _, k in keys])
        self._guide = (guide,)
        self.sites, self.family = dict(sites), label
        self.reparameterized = bool(reparameterized)  #: every local site the guide samples has a reparameterized sampler

    def program(self, flat: list[torch.Tensor]) -> Program:
        guide, params = self._guide[0], dict(zip((k for _, k in self.keys), flat))

        def program(x: torch.Tensor) -> None:
            guide(x, params=params)

        return program

    def with_tensors(self, flat: list[torch.Tensor]) -> ParametrizedGuide:
        return ParametrizedGuide(self._guide[0], dict(zip((k for _, k in self.keys), flat)), self.sites, self.family, self.reparameterized)


def own_family(guide: object) -> tuple[str, FlowOptions | None]:
    """The amortized guide's own per-datapoint family: ``(name, flow options)``.

    ``name`` is a :data:`LOCAL_FAMILIES` member the guide declares (``local_family``),
    ``"params"`` for a guide that exposes ``variational_params`` (:class:`ParametrizedGuide`),
    or ``"default"`` for a guide that declares nothing (the product of per-site defaults).
    """
    declared = getattr(guide, "local_family", None)
    if declared is not None:
        if declared not in LOCAL_FAMILIES or declared == OWN:
            raise ValueError(f"guide {type(guide).__name__} declares local_family={declared!r}; choose from {', '.join(LOCAL_FAMILIES[1:])}")
        flow = None
        if declared in FLOWS:
            layers, hidden = getattr(guide, "local_flow", (FlowOptions.layers, [FlowOptions.hidden]))
            hidden = list(hidden)
            if len(hidden) > 1:
                raise ValueError(
                    f"the guide's flows have hidden layers {hidden}; per-datapoint flows have one hidden layer, so its own "
                    "family cannot be fitted per datapoint: train the guide with one hidden layer per flow (--flow-hidden 100)"
                )
            flow = FlowOptions(int(layers), int(hidden[0]) if hidden else 0)
        return declared, flow
    if callable(getattr(guide, "variational_params", None)):
        return "params", None
    return "default", None


def own_family_label(guide: object) -> str:
    """How reports name the guide's own family (``family_name``, else the declared family, else ``guide``)."""
    return getattr(guide, "family_name", None) or getattr(guide, "local_family", None) or OWN
