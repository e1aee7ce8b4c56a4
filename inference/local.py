r"""Local (per-datapoint) posterior optimization: the :math:`q^*` of the gap decomposition.

For each datapoint :math:`x_i` separately, with the model frozen, find the best
member of a variational family (:mod:`inference.families`: FFG by default,
full-covariance Gaussian, IAF or coupling flows, factorized Bernoulli or
categorical for discrete latents),

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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.distributions import biject_to

from .enumeration import (
    MAX_CONFIGURATIONS, configurations, expand_grid, log_joint_on_grid, score_configurations, unwrap_independent,
)
from .estimators import MAX_ELEMENTS, Estimate, check_num_samples, chunk_size_for, elbo
from .families import (
    FlowOptions, LocalGuide, SiteInfo, Start, check_family, check_family_fits, check_flow_options, init_params,
)
from .program import Program, ProgramInfo, check_data, inspect_program, log_densities, log_weights, trace_pair

INITS = ("encoder", "prior")


class StoppingRule(NamedTuple):
    """When one datapoint's optimization stops.

    The per-step ELBO estimates are averaged over consecutive windows of
    ``window`` steps; a datapoint stops once ``patience`` windows in a row fail
    to beat its best window average, or after ``max_steps`` steps.
    """

    window: int = 100
    patience: int = 10
    max_steps: int = 50_000


class AdamConfig(NamedTuple):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


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
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
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
    family: str = "ffg",
    init: str = "encoder",
    options: FlowOptions = FlowOptions(),
) -> LocalGuide:
    """A :class:`LocalGuide` of ``family`` for the rows of ``x``, started by :func:`starting_point`."""
    check_family(family)
    check_flow_options(options)
    sites = site_infos(model, guide, x, info)
    check_family_fits(family, sites)
    start = starting_point(model, guide, x, info, sites, init)
    tensors = {name: init_params(family, sites[name], start[name], options) for name in sites}
    global_guide = poutine.block(guide, expose=list(info.global_latents)) if info.global_latents else None
    return LocalGuide(family, tensors, sites, info.data_dim, options, global_guide)


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


def adam_update(param, grad, exp_avg, exp_avg_sq, step: int, config: AdamConfig):
    """One elementwise Adam step (Kingma & Ba 2015); returns new (param, exp_avg, exp_avg_sq)."""
    beta1, beta2 = config.betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + config.eps
    param = param + config.lr * (exp_avg / (1 - beta1**step)) / denom  # ascent on the ELBO
    return param, exp_avg, exp_avg_sq


class LocalFit(NamedTuple):
    """Result of :func:`optimize_local`."""

    guide: LocalGuide  #: the optimized per-datapoint guide
    num_steps: torch.Tensor  #: (N,) steps each datapoint took
    converged: torch.Tensor  #: (N,) True where the stopping rule fired (False: hit max_steps)
    best_window_elbo: torch.Tensor  #: (N,) best window-averaged training ELBO


GRADIENTS = ("auto", "exact", "score")


class _Objective:
    """One step's per-datapoint ELBO (for the stopping rule) and the surrogate to differentiate."""

    def __init__(self, model, guide, local: LocalGuide, x, info, num_samples, gradient, max_configurations, max_elements):
        self.model, self.local, self.info, self.num_samples = model, local, info, num_samples
        self.grid = self.log_joint = None
        if local.reparameterized:
            self.mode = "pathwise"
            return
        enumerable = True
        try:
            grid = configurations(model, guide, x, info, max_configurations)
        except ValueError:
            if gradient == "exact":
                raise
            enumerable = False
        if enumerable and gradient != "score":
            self.mode = "exact"
            self.grid = grid
            self.log_joint = log_joint_on_grid(model, guide, x, info, grid, max_elements)  # (C, N): the model is frozen
        else:
            if num_samples < 2:
                raise ValueError(f"the score-function estimator with a leave-one-out baseline needs num_samples >= 2, got {num_samples}")
            self.mode = "score"

    def __call__(self, sub: list[torch.Tensor], x: torch.Tensor, active_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        program = self.local.program(sub)
        if self.mode == "pathwise":
            point = log_weights(self.model, program, x, self.num_samples, self.info).mean(0)
            return point, point
        if self.mode == "exact":
            values = expand_grid(self.grid, len(x), self.info)
            log_q = score_configurations(program, x, values, self.info, self.info.local_latents)
            point = (log_q.exp() * (self.log_joint[:, active_rows] - log_q)).sum(0)
            return point, point
        log_p, log_q = log_densities(self.model, program, x, self.num_samples, self.info)
        signal = (log_p - log_q).detach()
        baseline = (signal.sum(0, keepdim=True) - signal) / (len(signal) - 1)
        return signal.mean(0), ((signal - baseline) * log_q).mean(0)


def optimize_local(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    family: str = "ffg",
    num_samples: int = 50,
    adam: AdamConfig = AdamConfig(),
    rule: StoppingRule = StoppingRule(),
    init: str | LocalGuide = "encoder",
    flow: FlowOptions = FlowOptions(),
    gradient: str = "auto",
    max_configurations: int = MAX_CONFIGURATIONS,
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> LocalFit:
    """Optimize a per-datapoint guide of ``family`` for every row of ``x`` at once (see module docstring).

    ``num_samples`` samples per step estimate each datapoint's ELBO gradient
    (unused by exact enumeration); ``gradient`` picks the discrete-latent gradient:
    ``"auto"`` (exact when enumerable), ``"exact"`` or ``"score"``. Converged
    datapoints are masked out, and the active ones are processed in memory-bounded groups.
    """
    check_data(x)
    num_samples = check_num_samples(num_samples)
    for key in ("window", "patience", "max_steps"):
        check_num_samples(getattr(rule, key), key)
    if not adam.lr > 0:
        raise ValueError(f"lr must be positive, got {adam.lr}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose from {', '.join(GRADIENTS)}")
    info = inspect_program(model, guide, x)
    if not info.local_latents:
        raise ValueError("the model has no per-datapoint latent sites: there is nothing to optimize locally")
    local = init if isinstance(init, LocalGuide) else init_local(model, guide, x, info, family, init, flow)
    objective = _Objective(model, guide, local, x, info, num_samples, gradient, max_configurations, max_elements)
    n = len(x)
    if objective.mode == "exact" and len(local.names) == 1 and local.sites[local.names[0]].kind == "categorical":
        # one categorical site: the family holds the exact posterior, q*(z = c) = p(x, z = c) / p(x)
        logits = objective.log_joint.T.to(local.tensors[0].dtype)
        best = objective.log_joint.logsumexp(0)
        zeros = torch.zeros(n, dtype=torch.long, device=x.device)
        return LocalFit(local.with_tensors([logits]), zeros, torch.ones(n, dtype=torch.bool, device=x.device), best)
    if objective.mode == "pathwise":
        group = max(1, chunk_size_for(info, x[:1], model, guide, max_elements) // num_samples)
    elif objective.mode == "exact":
        group = max(1, max_elements // (8 * max(1, objective.log_joint.shape[0] * sum(math.prod(s.event_shape) for s in local.sites.values()))))
    else:
        group = max(1, chunk_size_for(info, x[:1], model, local.subset(torch.arange(1)), max_elements) // num_samples)

    # Full-size results, written back when a datapoint stops; the loop works on compact copies
    # holding only the active datapoints, so a step does no gather or scatter.
    final = [p.detach().clone() for p in local.tensors]
    params = [p.clone() for p in final]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    x_active = x
    window_sum = torch.zeros(n, dtype=torch.float64, device=x.device)
    best = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
    bad_windows = torch.zeros(n, dtype=torch.long, device=x.device)
    num_steps = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    bar = _progress(rule.max_steps, progress, local.family)
    with frozen(model, guide):
        for step in range(1, rule.max_steps + 1):
            for start in range(0, len(active), group):
                rows = slice(start, start + group)
                sub = [p[rows].detach().requires_grad_() for p in params]
                point_elbo, surrogate = objective(sub, x_active[rows], active[rows])
                grads = torch.autograd.grad(surrogate.sum(), sub, allow_unused=True)
                with torch.no_grad():
                    for k, g in enumerate(grads):
                        if g is None:
                            continue
                        params[k][rows], exp_avg[k][rows], exp_avg_sq[k][rows] = adam_update(
                            params[k][rows], g, exp_avg[k][rows], exp_avg_sq[k][rows], step, adam
                        )
                window_sum[start : start + len(point_elbo)] += point_elbo.detach()
            if step % rule.window == 0:
                mean = window_sum[: len(active)] / rule.window
                improved = mean > best[active]
                best[active] = torch.where(improved, mean, best[active])
                bad_windows[active] = torch.where(improved, 0, bad_windows[active] + 1)
                window_sum.zero_()
                keep = bad_windows[active] < rule.patience
                if not keep.all():
                    done = active[~keep]
                    num_steps[done] = step
                    for full, compact in zip(final, params):
                        full[done] = compact[~keep]
                    active, x_active = active[keep], x_active[keep]
                    params, exp_avg, exp_avg_sq = ([t[keep] for t in ts] for ts in (params, exp_avg, exp_avg_sq))
                if bar is not None:
                    bar.set_postfix(active=len(active))
            if bar is not None:
                bar.update(1)
            if len(active) == 0:
                break
    if bar is not None:
        bar.close()
    num_steps[active] = step  # the datapoints still running hit max_steps
    for full, compact in zip(final, params):
        full[active] = compact
    converged = bad_windows >= rule.patience
    return LocalFit(local.with_tensors(final), num_steps, converged, best)


def _progress(total: int, enabled: bool, family: str = "ffg"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"local q* ({family})", leave=False)


class LocalPosterior(NamedTuple):
    """Result of :func:`local_posterior`: the fit and its evaluated ELBO L[q*]."""

    guide: LocalGuide
    elbo: Estimate
    num_steps: torch.Tensor
    converged: torch.Tensor


def local_posterior(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    family: str = "ffg",
    num_samples: int = 50,
    eval_samples: int = 1000,
    adam: AdamConfig = AdamConfig(),
    rule: StoppingRule = StoppingRule(),
    init: str = "encoder",
    flow: FlowOptions = FlowOptions(),
    gradient: str = "auto",
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> LocalPosterior:
    """Fit q* of ``family`` for each datapoint (:func:`optimize_local`) and estimate L[q*] with ``eval_samples`` samples."""
    eval_samples = check_num_samples(eval_samples, "eval_samples")
    fit = optimize_local(
        model, guide, x, family=family, num_samples=num_samples, adam=adam, rule=rule, init=init, flow=flow,
        gradient=gradient, max_elements=max_elements, progress=progress,
    )
    estimate = elbo(model, fit.guide, x, eval_samples, max_elements=max_elements)
    return LocalPosterior(fit.guide, estimate, fit.num_steps, fit.converged)
