r"""Local (per-datapoint) posterior optimization: the :math:`q^*` of the gap decomposition.

For each datapoint :math:`x_i` separately, with the model frozen, find the best
member of a variational family (:mod:`inference.families`: by default the
amortized guide's own family, its per-datapoint outputs set free; or an FFG,
full-covariance Gaussian, IAF or coupling flow, factorized Bernoulli or
categorical family, per site),

.. math:: q^*_i = \arg\max_{\phi_i} \mathcal{L}(x_i; \phi_i),

as Cremer, Li & Duvenaud (2018), *Inference Suboptimality in Variational
Autoencoders*, do to split the inference gap into approximation and
amortization gaps.

All N datapoints are optimized at once: their parameters sit in one tensor per
parameter, the loss is :math:`-\sum_i \hat{\mathcal{L}}(x_i; \phi_i)` and Adam is
applied elementwise, so datapoints stay independent. Each datapoint stops on
its own rule (:class:`StoppingRule`, by default the reference one: average the
ELBO over windows of 100 steps, stop after 10 windows without improvement) and
is then masked out of further computation.

Gradients: pathwise (reparameterized samples) for Gaussian families. For
discrete families, the exact gradient of the enumerated ELBO when the local
latents have at most ``max_configurations`` joint values (then, for a single
categorical site, :math:`q^*` is the exact posterior in closed form); otherwise
the score-function estimator with the leave-one-out baseline
:math:`b_s = \frac{1}{S-1}\sum_{t \ne s} \log w_t` (as in VIMCO, Mnih & Rezende 2016).
With discrete and continuous sites together, the discrete part is enumerated (each
configuration with its own reparameterized draws of the rest) or, with too many
configurations, scored with the same baseline.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.distributions import biject_to
from tqdm.auto import tqdm

from .enumeration import MAX_CONFIGURATIONS, configurations, expand_grid, log_joint_on_grid, unwrap_independent
from .estimators import Estimate, elbo
from .families import (
    OWN,
    FlowOptions,
    LocalGuide,
    ParametrizedGuide,
    PerDatapointGuide,
    SiteInfo,
    Start,
    check_family,
    init_params,
    own_family,
    own_family_label,
    site_families,
)
from .memory import chunk_size_for, resolve_max_elements
from .program import (
    SAMPLE_PLATE,
    Program,
    ProgramInfo,
    check_data,
    inspect_program,
    log_prob_sum,
    log_weights,
    sampled_log_densities,
    score_configurations,
    trace_pair,
)
from .streams import PointStream, keyed, point_stream
from .validation import positive_int, positive_number

LOCAL_INITS = ("encoder", "prior")
GRADIENTS = ("auto", "exact", "score")


@dataclass(frozen=True)
class StoppingRule:
    """When one datapoint's optimization stops.

    The per-step ELBO estimates are averaged over consecutive windows of
    ``window`` steps; a datapoint stops once ``patience`` windows in a row fail
    to beat its best window average, or after ``max_steps`` steps.
    """

    window: int = 100
    patience: int = 10
    max_steps: int = 50_000

    def __post_init__(self) -> None:
        for key in ("window", "patience", "max_steps"):
            positive_int(getattr(self, key), key)


@dataclass(frozen=True)
class AdamOptions:
    """Adam's settings for the per-datapoint parameters of q*."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        positive_number(self.eps, "eps")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"Adam's betas must lie in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class LocalOptions:
    """How q* is fitted per datapoint: samples per step, Adam, the stopping rule, the start, flow sizes, the
    discrete-latent gradient and (for :func:`inference.gaps.gap_decomposition`) further families to fit."""

    num_samples: int = 50  #: samples per datapoint per step
    adam: AdamOptions = AdamOptions()
    rule: StoppingRule = StoppingRule()
    init: str = "encoder"  #: one of :data:`LOCAL_INITS`
    flow: FlowOptions = FlowOptions()  #: size of per-datapoint flows (iaf, coupling)
    gradient: str = "auto"  #: one of :data:`GRADIENTS`
    families: tuple[str, ...] = ()  #: further families fitted beside the guide's own by the gap decomposition

    def __post_init__(self) -> None:
        positive_int(self.num_samples, "num_samples")
        if self.init not in LOCAL_INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {', '.join(LOCAL_INITS)}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; choose from {', '.join(GRADIENTS)}")
        families = (self.families,) if isinstance(self.families, str) else self.families  # one name is a family, not its letters
        object.__setattr__(self, "families", tuple(check_family(f) for f in families))


def site_infos(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo) -> dict[str, SiteInfo]:
    """Event shape, support and kind (continuous, bernoulli, categorical) of every local latent."""
    with torch.no_grad():
        model_trace, _ = trace_pair(model, guide, x[:1])
    out = {}
    for name in info.local_latents:
        fn = model_trace.nodes[name]["fn"]
        base = unwrap_independent(fn)
        if not fn.support.is_discrete:
            out[name] = SiteInfo(tuple(fn.event_shape), fn.support, "continuous")
        elif isinstance(base, torch.distributions.Bernoulli):
            out[name] = SiteInfo(tuple(fn.event_shape), fn.support, "bernoulli")
        elif isinstance(base, torch.distributions.Categorical) and not fn.event_shape:
            out[name] = SiteInfo((), fn.support, "categorical", int(base.logits.shape[-1]))
        else:
            raise ValueError(f"local q* supports continuous, Bernoulli and categorical latents; site {name!r} is a {type(base).__name__}")
    return out


def _gaussian_params(fn) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and scale of a diagonal Normal site (possibly mapped by fixed bijections); None for other families."""
    base = unwrap_independent(fn)
    if isinstance(base, torch.distributions.TransformedDistribution):
        if any(isinstance(t, TransformModule) for t in base.transforms):
            return None  # a flow: its base is not the site's distribution
        base = unwrap_independent(base.base_dist)
    if isinstance(base, torch.distributions.Normal):
        return base.loc, base.scale
    return None


def _discrete_logits(fn) -> torch.Tensor | None:
    base = unwrap_independent(fn)
    if isinstance(base, (torch.distributions.Bernoulli, torch.distributions.Categorical)):
        return base.logits
    return None


def starting_point(
    model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo, sites: dict[str, SiteInfo], init: str = "encoder", moment_samples: int = 256
) -> dict[str, Start]:
    """Where each site's local fit starts.

    ``init="encoder"``: for a single continuous site whose guide is a (diagonal)
    Normal, the guide's own mean and scale; for discrete sites, the guide's logits;
    otherwise (full covariance, flows, several sites whose conditionals depend on
    each other) the mean and standard deviation of ``moment_samples`` guide draws,
    in the unconstrained space. ``init="prior"``: standard normal, or uniform for discrete sites.
    """
    if init not in LOCAL_INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(LOCAL_INITS)}")
    n = len(x)
    with torch.no_grad():
        _, guide_trace = trace_pair(model, guide, x)
    out = {}
    for name, site in sites.items():
        fn = guide_trace.nodes[name]["fn"]
        value = guide_trace.nodes[name]["value"]
        if value.dim() == 0 or value.shape[: value.dim() - len(site.event_shape)][-1:] != (n,):
            raise ValueError(f"local site {name!r} must have the data plate as its leftmost dim; its value has shape {tuple(value.shape)}")
        shape = (n, *site.event_shape)
        if site.kind != "continuous":
            k = site.num_categories
            logits = _discrete_logits(fn) if init == "encoder" else None
            full = shape + ((k,) if site.kind == "categorical" else ())
            logits = torch.zeros(full, device=x.device) if logits is None else logits.detach().expand(full).clone()
            out[name] = Start(logits=logits)
            continue
        if init == "prior":
            out[name] = Start(loc=torch.zeros(shape, device=x.device), log_scale=torch.zeros(shape, device=x.device))
            continue
        # a lone site's Normal parameters are its q(z|x); with several sites, a conditional's
        # parameters depend on one draw of the others, so the marginal moments start better
        params = _gaussian_params(fn) if len(sites) == 1 else None
        if params is not None:
            loc, scale = params
            out[name] = Start(loc=loc.detach().expand(shape).clone(), log_scale=scale.detach().log().expand(shape).clone())
            continue
        with torch.no_grad(), pyro.plate("_moments", moment_samples, dim=info.sample_dim):
            _, traces = trace_pair(model, guide, x)
        draws = biject_to(site.support).inv(traces.nodes[name]["value"]).reshape((moment_samples, *shape))
        out[name] = Start(loc=draws.mean(0), log_scale=draws.std(0).clamp(min=1e-3).log())
    return out


def init_local(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    info: ProgramInfo,
    family: str = OWN,
    init: str = "encoder",
    options: FlowOptions = FlowOptions(),
    stream: PointStream | None = None,
) -> PerDatapointGuide:
    """A per-datapoint guide of ``family`` for the rows of ``x``, started by :func:`starting_point`.

    With a ``stream`` its random draws (moment-matching samples, random flow weights) are keyed per datapoint.

    ``family="guide"`` (the default) is the amortized guide's own family (:func:`inference.families.own_family`):
    a :class:`ParametrizedGuide` started at the encoder's output, or the :class:`LocalGuide`
    family the guide declares (with its own flow size), or, for a guide that declares
    nothing, the product of per-site defaults.
    """
    check_family(family)
    sites = site_infos(model, guide, x, info)
    label = family
    if family == OWN:
        own, own_flow = own_family(guide)
        label = own_family_label(guide)
        if own == "params":
            return _parametrized_start(model, guide, x, info, sites, init, label)
        family = "ffg" if own == "default" else own
        options = own_flow or options
        if own == "default":
            label = OWN
    families = site_families(family, sites)
    with keyed(stream, "local-init"):
        start = starting_point(model, guide, x, info, sites, init)
    tensors = {name: init_params(families[name], sites[name], start[name], options, stream, name) for name in sites}
    tensors.update(_guide_start(guide, x, families, tensors, options) if init == "encoder" else {})
    global_guide = poutine.block(guide, expose=list(info.guide_global_sites)) if info.global_latents else None
    local = LocalGuide(families, tensors, sites, info.data_dim, options, global_guide)
    if label != OWN:  # otherwise the families themselves name it, e.g. "categorical+ffg"
        local.family = label
    return local


def _guide_start(guide, x, families, tensors, options: FlowOptions) -> dict[str, dict[str, torch.Tensor]]:
    """The per-datapoint parameters a guide gives for its own family (``guide.local_start(x)``, optional), for each site
    whose family and flow size are the guide's own: local q* then starts at the amortized q itself.

    Only parameters of the exact names and shapes :func:`init_params` made are taken; anything else is refused.
    """
    start = getattr(guide, "local_start", None)
    if not callable(start) or getattr(guide, "local_family", None) is None:
        return {}
    layers, hidden = getattr(guide, "local_flow", (options.layers, [options.hidden]))
    if (int(layers), list(hidden)) != (options.layers, [options.hidden] if options.hidden else []):
        return {}
    with torch.no_grad():
        given = start(x) or {}
    out = {}
    for name, params in given.items():
        if name not in tensors or families[name] != guide.local_family:
            continue
        expected = {k: tuple(v.shape) for k, v in tensors[name].items()}
        got = {k: tuple(v.shape) for k, v in params.items()}
        if got != expected:
            raise ValueError(f"{type(guide).__name__}.local_start gives site {name!r} the parameters {got}; its family "
                             f"{families[name]!r} needs {expected}")
        out[name] = {k: v.detach().to(tensors[name][k].dtype).clone() for k, v in params.items()}
    return out


def _parametrized_start(model, guide, x, info, sites, init, label) -> ParametrizedGuide:
    """The guide's own family, its per-datapoint parameters started at the encoder's output."""
    if init != "encoder":
        raise ValueError(
            f"the own family of {type(guide).__name__} (free per-datapoint encoder outputs) starts at the encoder's output; "
            f"init={init!r} is defined for the ffg, full and flow families (e.g. --local ffg --local-init prior)"
        )
    with torch.no_grad():
        params = {k: v.detach().clone() for k, v in guide.variational_params(x).items()}
    for key, value in params.items():
        if value.dim() == 0 or value.shape[0] != len(x):
            raise ValueError(f"{type(guide).__name__}.variational_params(x) must give one row per datapoint; {key!r} has shape {tuple(value.shape)}")
    local = ParametrizedGuide(guide, params, sites, label, reparameterized=False)
    with torch.no_grad():
        _, trace = trace_pair(model, local, x)
    local.reparameterized = all(trace.nodes[n]["fn"].has_rsample for n in info.guide_local_sites)
    return local


@contextlib.contextmanager
def frozen(*modules) -> Iterator[None]:
    """Temporarily stop gradients to the parameters of ``modules`` (the model stays fixed)."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def adam_update(param, grad, exp_avg, exp_avg_sq, step: int, config: AdamOptions):
    """One elementwise Adam step (Kingma & Ba 2015); returns new (param, exp_avg, exp_avg_sq)."""
    beta1, beta2 = config.betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + config.eps
    param = param + config.lr * (exp_avg / (1 - beta1**step)) / denom  # ascent on the ELBO
    return param, exp_avg, exp_avg_sq


class LocalFit(NamedTuple):
    """Result of :func:`optimize_local`."""

    guide: PerDatapointGuide  #: the optimized per-datapoint guide
    num_steps: torch.Tensor  #: (N,) steps each datapoint took
    converged: torch.Tensor  #: (N,) True where the stopping rule fired (False: hit max_steps)
    best_window_elbo: torch.Tensor  #: (N,) best window-averaged training ELBO




class _Objective:
    r"""One step's per-datapoint ELBO (for the stopping rule) and the surrogate to differentiate.

    Modes: ``pathwise`` (every site reparameterized); ``exact`` (every site discrete and the
    joint enumerable: the exact ELBO); ``score`` (discrete, too many configurations: the
    score function with a leave-one-out baseline); ``mixed`` (discrete and continuous sites:
    the discrete sites enumerated, each configuration with ``num_samples`` reparameterized
    draws of the rest, :math:`\mathcal{L} = \sum_c q(c)\, \frac1S \sum_s \log w(c, z_s)`); ``mixed-score``
    (the same with the discrete sites sampled and their score term added).
    """

    def __init__(self, model, guide, local: PerDatapointGuide, x, info, num_samples, gradient, max_configurations, max_elements):
        self.model, self.local, self.info, self.num_samples = model, local, info, num_samples
        self.grid = self.log_joint = None
        self.discrete = tuple(n for n, s in local.sites.items() if s.kind != "continuous")
        if local.reparameterized:
            self.mode = "pathwise"
            return
        mixed = len(self.discrete) < len(local.sites)
        enumerable = True
        try:
            grid = configurations(model, guide, x, info, max_configurations, names=self.discrete)
        except ValueError:
            if gradient == "exact":
                raise
            enumerable = False
        if mixed and enumerable and not _discrete_first(local, x):  # q(c | z) changes with every draw of z
            if gradient == "exact":
                raise ValueError("the guide samples continuous sites before discrete ones: q(c | z) cannot be enumerated "
                                 "once per configuration; use gradient='score'")
            enumerable = False
        if enumerable and gradient != "score":
            self.mode = "mixed" if mixed else "exact"
            self.grid = grid
            if not mixed:
                self.log_joint = log_joint_on_grid(model, guide, x, info, grid, max_elements)  # (C, N): the model is frozen
        else:
            if num_samples < 2:
                raise ValueError(f"the score-function estimator with a leave-one-out baseline needs num_samples >= 2, got {num_samples}")
            self.mode = "mixed-score" if mixed else "score"

    @property
    def samples_per_step(self) -> int:
        """Vectorized samples one step draws per datapoint."""
        if self.mode == "exact":
            return 1
        return self.num_samples * (len(next(iter(self.grid.values()))) if self.mode == "mixed" else 1)

    def __call__(self, sub: list[torch.Tensor], x: torch.Tensor, active_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        program = self.local.program(sub)
        info = self.info
        if self.mode == "pathwise":
            point = log_weights(self.model, program, x, self.num_samples, info).mean(0)
            return point, point
        if self.mode == "exact":
            values = expand_grid(self.grid, len(x), info)
            log_q = score_configurations(program, x, values, info, info.guide_local_sites)
            point = (log_q.exp() * (self.log_joint[:, active_rows] - log_q)).sum(0)
            return point, point
        if self.mode == "mixed":
            c, s = len(next(iter(self.grid.values()))), self.num_samples
            shape = (c * s, len(x))
            values = expand_grid({k: v.repeat_interleave(s, 0) for k, v in self.grid.items()}, len(x), info)
            with pyro.plate(SAMPLE_PLATE, c * s, dim=info.sample_dim):  # the discrete sites set, the others drawn
                trace = poutine.trace(poutine.condition(program, data=values)).get_trace(x)
            drawn = {n: trace.nodes[n]["value"] for n in info.guide_local_sites}
            log_p = score_configurations(self.model, x, drawn, info, info.local_latents + info.observed)
            log_q = log_prob_sum(trace, info.guide_local_sites, info, shape)
            log_qc = log_prob_sum(trace, self.discrete, info, shape).reshape(c, s, len(x))[:, 0]
            point = (log_qc.exp() * (log_p - log_q).reshape(c, s, len(x)).mean(1)).sum(0)
            return point, point
        log_p, log_q, trace = sampled_log_densities(self.model, program, x, self.num_samples, info)
        signal = (log_p - log_q).detach()
        baseline = (signal.sum(0, keepdim=True) - signal) / (len(signal) - 1)
        if self.mode == "score":
            return signal.mean(0), ((signal - baseline) * log_q).mean(0)
        log_qc = log_prob_sum(trace, self.discrete, info, signal.shape)
        return signal.mean(0), (log_p - log_q).mean(0) + ((signal - baseline) * log_qc).mean(0)


def _discrete_first(local: PerDatapointGuide, x: torch.Tensor) -> bool:
    """Whether the per-datapoint guide samples every discrete site before any continuous one.

    Only then is q(c) the same for every draw of the continuous sites, as the ``mixed`` mode
    (one q(c) per configuration, the continuous sites drawn given c) needs. A
    :class:`LocalGuide`'s sites are independent, so any order is fine.
    """
    if isinstance(local, LocalGuide):
        return True
    with torch.no_grad():
        trace = poutine.trace(local.program(list(local.tensors))).get_trace(x)
    order = [n for n, site in trace.nodes.items() if site["type"] == "sample" and n in local.sites]
    kinds = [local.sites[n].kind != "continuous" for n in order]
    return kinds == sorted(kinds, reverse=True)


def optimize_local(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    family: str = OWN,
    num_samples: int = 50,
    adam: AdamOptions = AdamOptions(),
    rule: StoppingRule = StoppingRule(),
    init: str | PerDatapointGuide = "encoder",
    flow: FlowOptions = FlowOptions(),
    gradient: str = "auto",
    max_configurations: int = MAX_CONFIGURATIONS,
    max_elements: int | None = None,
    progress: bool = False,
    seed: int | None = None,
    index: torch.Tensor | None = None,
) -> LocalFit:
    """Optimize a per-datapoint guide of ``family`` for every row of ``x`` at once (see module docstring).

    ``family`` defaults to the amortized guide's own family (``"guide"``, see :func:`init_local`).
    ``num_samples`` samples per step estimate each datapoint's ELBO gradient
    (unused by exact enumeration); ``gradient`` picks the discrete-latent gradient:
    ``"auto"`` (exact when enumerable), ``"exact"`` or ``"score"``. Converged
    datapoints are masked out, and the active ones are processed in memory-bounded groups.
    With a ``seed`` every random number of the fit is keyed by (seed, index of the datapoint)
    (:mod:`inference.streams`), so a datapoint's q* does not depend on the points fitted with it.
    """
    x = check_data(x)
    stream = point_stream(seed, x, index)
    num_samples = positive_int(num_samples)
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose from {', '.join(GRADIENTS)}")
    info = inspect_program(model, guide, x)
    if not info.local_latents:
        raise ValueError("the model has no per-datapoint latent sites: there is nothing to optimize locally")
    local = init if isinstance(init, PerDatapointGuide) else init_local(model, guide, x, info, family, init, flow, stream)
    if isinstance(local, LocalGuide):  # its sites are the latents themselves: the amortized guide's auxiliary sites are gone
        info = info._replace(auxiliary=())
    objective = _Objective(model, guide, local, x, info, num_samples, gradient, max_configurations, max_elements)
    n = len(x)
    single_categorical = isinstance(local, LocalGuide) and len(local.names) == 1 and local.sites[local.names[0]].kind == "categorical"
    if objective.mode == "exact" and single_categorical:
        # one categorical site: the family holds the exact posterior, q*(z = c) = p(x, z = c) / p(x)
        logits = objective.log_joint.T.to(local.tensors[0].dtype)
        best = objective.log_joint.logsumexp(0)
        zeros = torch.zeros(n, dtype=torch.long, device=x.device)
        return LocalFit(local.with_tensors([logits]), zeros, torch.ones(n, dtype=torch.bool, device=x.device), best)
    if objective.mode == "pathwise":
        group = max(1, chunk_size_for(info, x[:1], model, guide, max_elements) // num_samples)
    elif objective.mode == "exact":
        group = max(1, resolve_max_elements(max_elements, x.device) // (8 * max(1, objective.log_joint.shape[0] * sum(math.prod(s.event_shape) for s in local.sites.values()))))
    else:
        group = max(1, chunk_size_for(info, x[:1], model, local.subset(torch.arange(1)), max_elements) // objective.samples_per_step)
    with frozen(model, guide):
        return fit_per_datapoint(local, objective, x, rule, adam, group, progress, stream)


def fit_per_datapoint(
    local: PerDatapointGuide, objective, x: torch.Tensor, rule: StoppingRule, adam: AdamOptions, group: int, progress: bool = False,
    stream: PointStream | None = None,
) -> LocalFit:
    """Elementwise Adam on every datapoint's parameters at once, each stopped by ``rule`` on its own.

    ``objective(params, x_rows, rows)`` returns, for the datapoints ``rows`` (their indices in
    ``x``) with parameter rows ``params``, the per-datapoint ELBO estimate that feeds the
    rule and a surrogate whose gradient the step ascends. Datapoints are processed in
    groups of ``group``; a datapoint that stops is written back and leaves the computation,
    so its parameters never change again and no datapoint's result depends on which
    others share its group (and with a ``stream``, its draws at step t are keyed by its index and t).
    """
    n = len(x)
    # Full-size results, written back when a datapoint stops; the loop works on compact copies
    # holding only the active datapoints, so a step does no gather or scatter.
    final = [p.detach().clone() for p in local.tensors]
    params = [p.clone() for p in final]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    x_active = x
    window = WindowRule(rule, n, x.device)
    active = torch.arange(n, device=x.device)
    bar = _progress(rule.max_steps, progress, local.family)
    step = 0
    for step in range(1, rule.max_steps + 1):
        for start in range(0, len(active), group):
            rows = slice(start, start + group)
            sub = [p[rows].detach().requires_grad_() for p in params]
            with keyed(stream.rows(active[rows]) if stream is not None else None, f"local-step:{local.family}", step):
                point_elbo, surrogate = objective(sub, x_active[rows], active[rows])
            grads = torch.autograd.grad(surrogate.sum(), sub, allow_unused=True)
            with torch.no_grad():
                for k, g in enumerate(grads):
                    if g is None:
                        continue
                    params[k][rows], exp_avg[k][rows], exp_avg_sq[k][rows] = adam_update(
                        params[k][rows], g, exp_avg[k][rows], exp_avg_sq[k][rows], step, adam
                    )
            window.record(slice(start, start + len(point_elbo)), point_elbo.detach())
        keep = window.end_of_step(step, active)
        if keep is not None and not keep.all():
            done = active[~keep]
            for full, compact in zip(final, params):
                full[done] = compact[~keep]
            active, x_active = active[keep], x_active[keep]
            params, exp_avg, exp_avg_sq = ([t[keep] for t in ts] for ts in (params, exp_avg, exp_avg_sq))
        if bar is not None:
            if keep is not None:
                bar.set_postfix(active=len(active))
            bar.update(1)
        if len(active) == 0:
            break
    if bar is not None:
        bar.close()
    window.num_steps[active] = step  # the datapoints still running hit max_steps
    for full, compact in zip(final, params):
        full[active] = compact
    return LocalFit(local.with_tensors(final), window.num_steps, window.converged, window.best)


class WindowRule:
    """The state of :class:`StoppingRule` for N datapoints: window sums, best window average, windows without improvement.

    The ELBO estimates of each step are added to the running window (:meth:`record`); at
    the end of every ``window``-th step (:meth:`end_of_step`) each active datapoint's window
    average is compared with its best: a strictly higher average is an improvement and
    resets its count, anything else adds one; a datapoint stops once ``patience`` windows in
    a row have not improved. A datapoint whose estimates never change therefore stops after
    exactly ``window * (patience + 1)`` steps (the first window sets its best).
    """

    def __init__(self, rule: StoppingRule, n: int, device):
        self.rule = rule
        self.sums = torch.zeros(n, dtype=torch.float64, device=device)  #: running window sums of the active datapoints, in order
        self.best = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.bad_windows = torch.zeros(n, dtype=torch.long, device=device)
        self.num_steps = torch.zeros(n, dtype=torch.long, device=device)

    def record(self, rows: slice, values: torch.Tensor) -> None:
        """Add one step's ELBO estimates of the active datapoints at positions ``rows``."""
        self.sums[rows] += values

    def end_of_step(self, step: int, active: torch.Tensor) -> torch.Tensor | None:
        """After ``step``: None within a window; at its end, the mask over ``active`` of datapoints that go on."""
        if step % self.rule.window:
            return None
        mean = self.sums[: len(active)] / self.rule.window
        improved = mean > self.best[active]
        self.best[active] = torch.where(improved, mean, self.best[active])
        self.bad_windows[active] = torch.where(improved, 0, self.bad_windows[active] + 1)
        self.sums.zero_()
        keep = self.bad_windows[active] < self.rule.patience
        self.num_steps[active[~keep]] = step
        return keep

    @property
    def converged(self) -> torch.Tensor:
        """(N,) True where the rule fired (False: the datapoint hit ``max_steps``)."""
        return self.bad_windows >= self.rule.patience


def _progress(total: int, enabled: bool, family: str = "ffg"):
    if not enabled:
        return None

    return tqdm(total=total, desc=f"local q* ({family})", leave=False)


class LocalPosterior(NamedTuple):
    """Result of :func:`local_posterior`: the fit and its evaluated ELBO L[q*]."""

    guide: PerDatapointGuide
    elbo: Estimate
    num_steps: torch.Tensor
    converged: torch.Tensor


def local_posterior(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    options: LocalOptions = LocalOptions(),
    *,
    family: str = OWN,
    eval_samples: int = 1000,
    max_elements: int | None = None,
    progress: bool = False,
    seed: int | None = None,
    index: torch.Tensor | None = None,
) -> LocalPosterior:
    """Fit q* of ``family`` for each datapoint (:func:`optimize_local` with ``options``) and estimate L[q*] with ``eval_samples`` samples.

    A ``seed`` keys every draw, of the fit and of the estimate, by datapoint (:mod:`inference.streams`)."""
    eval_samples = positive_int(eval_samples, "eval_samples")
    o = options
    fit = optimize_local(
        model, guide, x, family=family, num_samples=o.num_samples, adam=o.adam, rule=o.rule, init=o.init, flow=o.flow,
        gradient=o.gradient, max_elements=max_elements, progress=progress, seed=seed, index=index,
    )
    estimate = elbo(model, fit.guide, x, eval_samples, max_elements=max_elements, seed=seed, index=index,
                    stream_name=f"elbo-local:{fit.guide.family}")
    return LocalPosterior(fit.guide, estimate, fit.num_steps, fit.converged)
