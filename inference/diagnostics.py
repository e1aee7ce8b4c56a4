r"""What a trained model/guide pair uses and how noisy its training gradients are.

* :func:`active_units` — Burda, Grosse & Salakhutdinov (2016, section 5.2): a latent unit
  :math:`u` is *active* when its posterior mean moves with the data,
  :math:`A_u = \mathrm{Cov}_x\big(E_{q(z|x)}[z_u]\big) > 0.01`. A Bernoulli unit's mean is its
  probability; a categorical site counts one unit per category, whose "mean" is
  :math:`q(z = k \mid x)` (the mean of the one-hot encoding).
* :func:`pareto_k` — Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto smoothed
  importance sampling*: the shape :math:`\hat k` of a generalized Pareto fitted to the
  largest importance weights of each datapoint (computed by ArviZ). Above 0.7 the
  weights' variance is effectively infinite and an importance-weighted estimate
  cannot be trusted, however small its standard error looks.
* :func:`gradient_snr` — Rainforth et al. (2018), *Tighter variational bounds are not
  necessarily better*: for each parameter component :math:`\theta_j` and a gradient
  estimator :math:`\Delta`, :math:`\mathrm{SNR}_j = |E[\Delta_j]| / \mathrm{sd}[\Delta_j]`,
  estimated from repeated draws on one fixed batch; summarized per parameter group.

Both work on any model/guide pair following the package convention.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from torch import nn

from .enumeration import unwrap_independent
from .program import SAMPLE_PLATE, Program, check_data, inspect_program

#: Burda et al. (2016): a unit is active when the variance of its posterior mean exceeds this.
ACTIVE_THRESHOLD = 0.01
#: Vehtari et al. (2024): importance weights with k-hat above this are unreliable.
PARETO_K_THRESHOLD = 0.7


#: Fewer weights leave ArviZ too short a tail (at most 4 weights) to fit; k-hat is then reported as NaN.
MIN_PSIS_SAMPLES = 25


def pareto_k(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS k-hat per datapoint of log importance weights ``(S, N)``: shape ``(N,)`` (float64), computed by ArviZ.

    NaN for every datapoint when ``S < MIN_PSIS_SAMPLES`` (no tail to fit).
    """
    if log_weights.dim() != 2 or log_weights.shape[0] < 2:
        raise ValueError(f"pareto_k needs log weights of shape (samples >= 2, datapoints), got {tuple(log_weights.shape)}")
    if log_weights.shape[0] < MIN_PSIS_SAMPLES:
        return torch.full((log_weights.shape[1],), math.nan, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's import-time notice and its small-sample warnings
        import arviz  # imported on first use: it takes seconds, and only PSIS needs it

        _, k_hat = arviz.psislw(log_weights.detach().double().T.cpu().numpy())
    return torch.as_tensor(k_hat, dtype=torch.float64).reshape(log_weights.shape[1])


class ActiveUnits(NamedTuple):
    active: int  #: number of active units over every local latent site
    total: int  #: number of latent units
    per_site: dict[str, tuple[int, int]]  #: site -> (active, units)
    variances: dict[str, torch.Tensor]  #: site -> per-unit variance of the posterior mean over the data


def _site_mean(site: dict) -> torch.Tensor:
    """The mean of the site's distribution where it is known in closed form, else the drawn value.

    A categorical site has no mean: its "mean" is the vector of category probabilities (the
    mean of its one-hot encoding), one unit per category.
    """
    fn = site["fn"]
    base = unwrap_independent(fn)
    if isinstance(base, torch.distributions.Categorical):
        probs = base.probs
        return probs.expand(site["value"].shape + probs.shape[-1:])
    try:
        return fn.mean.expand(site["value"].shape)
    except NotImplementedError:  # flows and other transformed distributions
        return site["value"]


def posterior_means(guide: Program, x: torch.Tensor, model: Program, num_samples: int = 50) -> dict[str, torch.Tensor]:
    r""":math:`E_{q(z|x_i)}[z]` of every local latent site, shape ``(len(x), units)``.

    Averages over ``num_samples`` guide draws the closed-form mean of each site's
    distribution given its parents (exact for a site with no latent parents), or the
    draw itself when the mean has no closed form.
    """
    info = inspect_program(model, guide, x)
    with torch.no_grad(), pyro.plate(SAMPLE_PLATE, num_samples, dim=info.sample_dim):
        trace = poutine.trace(guide).get_trace(x)
    out = {}
    for name in info.local_latents:
        site = trace.nodes[name]
        mean = _site_mean(site)
        event = mean.dim() - (site["value"].dim() - len(site["fn"].event_shape))  # a categorical's categories are an event dim
        # (S, ..., N, ..., *event) -> average the samples, keep datapoints and units
        mean = mean.movedim(info.sample_dim - event, 0).mean(0)
        mean = mean.movedim(info.data_dim - event, 0)
        out[name] = mean.reshape(len(x), -1).double()
    return out


def active_units(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int = 50, threshold: float = ACTIVE_THRESHOLD
) -> ActiveUnits:
    """Count the latent units whose posterior mean varies over the datapoints ``x`` by more than ``threshold``."""
    x = check_data(x)
    if len(x) < 2:
        raise ValueError(f"active units need at least 2 datapoints to measure a variance, got {len(x)}")
    if not threshold > 0:
        raise ValueError(f"the active-unit threshold must be positive, got {threshold}")
    means = posterior_means(guide, x, model, num_samples)
    variances = {name: m.var(0) for name, m in means.items()}
    per_site = {name: (int((v > threshold).sum()), len(v)) for name, v in variances.items()}
    return ActiveUnits(
        sum(a for a, _ in per_site.values()), sum(u for _, u in per_site.values()), per_site, variances
    )


class SNR(NamedTuple):
    mean: float  #: mean over parameter components of |E[grad]| / sd[grad]
    median: float
    components: int  #: components with a non-zero standard deviation (the others are left out)


def gradient_snr(
    loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: dict[str, Sequence[nn.Parameter]], draws: int = 100
) -> dict[str, SNR]:
    """Per-component signal-to-noise ratio of ``grad loss(x)`` over ``draws`` independent draws, summarized per group.

    ``groups`` maps a name (e.g. ``"encoder"``, ``"decoder"``) to its parameters. Components
    whose gradient never varies (sd = 0, e.g. unused parameters) are left out.
    """
    if isinstance(draws, bool) or int(draws) != draws or draws < 2:
        raise ValueError(f"gradient SNR needs at least 2 draws, got {draws!r}")
    names = [n for n, ps in groups.items() if len(ps)]
    params = [p for n in names for p in groups[n]]
    sizes = [sum(p.numel() for p in groups[n]) for n in names]
    total = sum_sq = None
    for _ in range(int(draws)):
        grads = torch.autograd.grad(loss(x), params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]).double()
        total = flat if total is None else total + flat
        sum_sq = flat**2 if sum_sq is None else sum_sq + flat**2
    mean = total / draws
    sd = ((sum_sq - draws * mean**2).clamp(min=0) / (draws - 1)).sqrt()
    out = {}
    for name, part_mean, part_sd in zip(names, mean.split(sizes), sd.split(sizes)):
        keep = part_sd > 1e-7 * part_mean.abs()  # a gradient that never varies (up to rounding) has no SNR
        snr = part_mean[keep].abs() / part_sd[keep]
        out[name] = SNR(float(snr.mean()) if len(snr) else math.nan, float(snr.median()) if len(snr) else math.nan, int(keep.sum()))
    return out
