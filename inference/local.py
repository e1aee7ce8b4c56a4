r"""Local (per-datapoint) posterior optimization: the :math:`q^*` of the gap decomposition.

For each datapoint :math:`x_i` separately, with the model frozen, find the best
member of the fully factorized Gaussian (FFG) family,

.. math:: q^*_i = \arg\max_{\phi_i} \mathcal{L}(x_i; \phi_i), \qquad
          q_{\phi_i}(z) = \prod_{\text{sites}} N(z; \mu_i, \mathrm{diag}\,\sigma_i^2),

as Cremer, Li & Duvenaud (2018), *Inference Suboptimality in Variational
Autoencoders*, do to split the inference gap into approximation and
amortization gaps.

All N datapoints are optimized at once: their parameters sit in one tensor, the
loss is :math:`-\sum_i \hat{\mathcal{L}}(x_i; \phi_i)` and Adam is applied
elementwise, so datapoints stay independent. Each datapoint stops on its own
rule (:class:`StoppingRule`, by default the reference one: average the ELBO
over windows of 100 steps, stop after 10 windows without improvement) and is
then masked out of further computation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn
from torch.distributions import biject_to

from .estimators import MAX_ELEMENTS, Estimate, check_num_samples, chunk_size_for, elbo
from .program import Program, ProgramInfo, check_data, inspect_program, log_weights, trace_pair

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


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class LocalFFG(nn.Module):
    """A per-datapoint fully factorized Gaussian guide over every local latent site.

    Row ``i`` of each parameter belongs to datapoint ``x[i]``; ``guide(x)`` needs
    ``len(x)`` equal to the number of rows. Sites with a constrained support are
    Gaussian in the unconstrained space, mapped by ``biject_to(support)``.
    Global latents, if the model has any, are drawn from ``global_guide``.
    """

    def __init__(
        self,
        locs: dict[str, torch.Tensor],
        log_scales: dict[str, torch.Tensor],
        event_dims: dict[str, int],
        supports: dict[str, object],
        data_dim: int,
        global_guide: Program | None = None,
    ):
        super().__init__()
        self.names = tuple(locs)
        self.event_dims = dict(event_dims)
        self.supports = dict(supports)
        self.data_dim = data_dim
        self.global_guide = global_guide
        self.locs = nn.ParameterList([nn.Parameter(locs[n].detach().clone()) for n in self.names])
        self.log_scales = nn.ParameterList([nn.Parameter(log_scales[n].detach().clone()) for n in self.names])

    @property
    def num_points(self) -> int:
        return self.locs[0].shape[0]

    def params(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (unconstrained space) of site ``name``, first dim = datapoint."""
        i = self.names.index(name)
        return self.locs[i], self.log_scales[i].exp()

    def subset(self, index: torch.Tensor) -> LocalFFG:
        """A new guide holding only the rows ``index``."""
        return LocalFFG(
            {n: l[index] for n, l in zip(self.names, self.locs)},
            {n: s[index] for n, s in zip(self.names, self.log_scales)},
            self.event_dims, self.supports, self.data_dim, self.global_guide,
        )

    def forward(self, x: torch.Tensor) -> None:
        if len(x) != self.num_points:
            raise ValueError(f"this local guide holds parameters for {self.num_points} datapoints; got a batch of {len(x)}")
        program = ffg_program(
            dict(zip(self.names, self.locs)), dict(zip(self.names, self.log_scales)),
            self.event_dims, self.supports, self.data_dim, self.global_guide,
        )
        program(x)


def ffg_program(locs, log_scales, event_dims, supports, data_dim, global_guide=None) -> Program:
    """The guide program of a per-datapoint FFG with the given parameter tensors."""

    def guide(x: torch.Tensor) -> None:
        if global_guide is not None:
            global_guide(x)
        with pyro.plate("data", len(x), dim=data_dim):
            for name, loc in locs.items():
                fn = dist.Normal(loc, log_scales[name].exp(), validate_args=False).to_event(event_dims[name])
                if not _is_real(supports[name]):
                    fn = dist.TransformedDistribution(fn, biject_to(supports[name]))
                pyro.sample(name, fn)

    return guide


def _gaussian_params(name: str, fn) -> tuple[torch.Tensor, torch.Tensor]:
    base = fn
    while isinstance(base, (dist.Independent, torch.distributions.Independent)):
        base = base.base_dist
    if isinstance(base, torch.distributions.TransformedDistribution):
        base = base.base_dist
        while isinstance(base, (dist.Independent, torch.distributions.Independent)):
            base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        raise ValueError(
            f"cannot initialize local q* from the encoder: guide site {name!r} is a {type(base).__name__}, "
            "not a (transformed) Normal; use init='prior'"
        )
    return base.loc, base.scale


def init_local_ffg(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo, init: str = "encoder") -> LocalFFG:
    """A :class:`LocalFFG` for ``x``, started at the amortized guide's output or at N(0, I).

    ``init="encoder"`` copies the mean and scale of each local site of ``guide(x)``
    (for a hierarchical guide, conditioned on one draw of the layers above);
    ``init="prior"`` starts every site at a standard normal in unconstrained space.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(model, guide, x)
    locs, log_scales, event_dims, supports = {}, {}, {}, {}
    for name in info.local_latents:
        site = model_trace.nodes[name]
        if site["fn"].support.is_discrete:
            raise ValueError(f"local q* (a Gaussian family) needs continuous latents; site {name!r} is discrete")
        fn = guide_trace.nodes[name]["fn"]
        value = guide_trace.nodes[name]["value"]
        event_dims[name] = len(fn.event_shape)
        supports[name] = site["fn"].support
        unconstrained = biject_to(supports[name]).inv(value).detach()
        if unconstrained.dim() == 0 or unconstrained.shape[0] != len(x):
            raise ValueError(f"local site {name!r} must have the data plate as its leftmost dim; its value has shape {tuple(value.shape)}")
        if init == "encoder":
            loc, scale = _gaussian_params(name, fn)
            locs[name] = loc.detach().expand_as(unconstrained).clone()
            log_scales[name] = scale.detach().log().expand_as(unconstrained).clone()
        else:
            locs[name] = torch.zeros_like(unconstrained)
            log_scales[name] = torch.zeros_like(unconstrained)
    global_guide = poutine.block(guide, expose=list(info.global_latents)) if info.global_latents else None
    return LocalFFG(locs, log_scales, event_dims, supports, info.data_dim, global_guide)


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

    guide: LocalFFG  #: the optimized per-datapoint guide
    num_steps: torch.Tensor  #: (N,) steps each datapoint took
    converged: torch.Tensor  #: (N,) True where the stopping rule fired (False: hit max_steps)
    best_window_elbo: torch.Tensor  #: (N,) best window-averaged training ELBO


def optimize_local(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    num_samples: int = 50,
    adam: AdamConfig = AdamConfig(),
    rule: StoppingRule = StoppingRule(),
    init: str | LocalFFG = "encoder",
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> LocalFit:
    """Optimize a per-datapoint FFG for every row of ``x`` at once (see module docstring).

    ``num_samples`` reparameterized samples per step estimate each datapoint's
    ELBO gradient; converged datapoints are masked out, and the active ones are
    processed in memory-bounded groups.
    """
    check_data(x)
    num_samples = check_num_samples(num_samples)
    for key in ("window", "patience", "max_steps"):
        check_num_samples(getattr(rule, key), key)
    if not adam.lr > 0:
        raise ValueError(f"lr must be positive, got {adam.lr}")
    info = inspect_program(model, guide, x)
    if not info.local_latents:
        raise ValueError("the model has no per-datapoint latent sites: there is nothing to optimize locally")
    local = init if isinstance(init, LocalFFG) else init_local_ffg(model, guide, x, info, init)
    n, n_sites = len(x), len(local.names)
    group = max(1, chunk_size_for(info, x[:1], model, guide, max_elements) // num_samples)

    # Full-size results, written back when a datapoint stops; the loop works on compact copies
    # holding only the active datapoints, so a step does no gather or scatter.
    final = [p.detach().clone() for p in (*local.locs, *local.log_scales)]
    params = [p.clone() for p in final]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    x_active = x
    window_sum = torch.zeros(n, dtype=torch.float64, device=x.device)
    best = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
    bad_windows = torch.zeros(n, dtype=torch.long, device=x.device)
    num_steps = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    bar = _progress(rule.max_steps, progress)
    with frozen(model, guide):
        for step in range(1, rule.max_steps + 1):
            for start in range(0, len(active), group):
                rows = slice(start, start + group)
                sub = [p[rows].detach().requires_grad_() for p in params]
                program = ffg_program(
                    dict(zip(local.names, sub[:n_sites])), dict(zip(local.names, sub[n_sites:])),
                    local.event_dims, local.supports, local.data_dim, local.global_guide,
                )
                point_elbo = log_weights(model, program, x_active[rows], num_samples, info).mean(0)
                grads = torch.autograd.grad(point_elbo.sum(), sub)
                with torch.no_grad():
                    for k, g in enumerate(grads):
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
    result = LocalFFG(
        dict(zip(local.names, final[:n_sites])), dict(zip(local.names, final[n_sites:])),
        local.event_dims, local.supports, local.data_dim, local.global_guide,
    )
    return LocalFit(result, num_steps, converged, best)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="local q*", leave=False)


class LocalPosterior(NamedTuple):
    """Result of :func:`local_posterior`: the fit and its evaluated ELBO L[q*]."""

    guide: LocalFFG
    elbo: Estimate
    num_steps: torch.Tensor
    converged: torch.Tensor


def local_posterior(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    num_samples: int = 50,
    eval_samples: int = 1000,
    adam: AdamConfig = AdamConfig(),
    rule: StoppingRule = StoppingRule(),
    init: str = "encoder",
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> LocalPosterior:
    """Fit q*_FFG for each datapoint (:func:`optimize_local`) and estimate L[q*] with ``eval_samples`` samples."""
    eval_samples = check_num_samples(eval_samples, "eval_samples")
    fit = optimize_local(
        model, guide, x, num_samples=num_samples, adam=adam, rule=rule, init=init,
        max_elements=max_elements, progress=progress,
    )
    estimate = elbo(model, fit.guide, x, eval_samples, max_elements=max_elements)
    return LocalPosterior(fit.guide, estimate, fit.num_steps, fit.converged)
