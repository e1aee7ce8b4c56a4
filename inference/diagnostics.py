r"""What a trained model/guide pair uses and how noisy its training gradients are.

* :func:`active_units` — Burda, Grosse & Salakhutdinov (2016, section 5.2): a latent unit
  :math:`u` is *active* when its posterior mean moves with the data,
  :math:`A_u = \mathrm{Cov}_x\big(E_{q(z|x)}[z_u]\big) > 0.01`. A Bernoulli unit's mean is its
  probability; a categorical site counts one unit per category, whose "mean" is
  :math:`q(z = k \mid x)` (the mean of the one-hot encoding).
* :func:`pareto_k` — Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto smoothed
  importance sampling*: the shape :math:`\hat k` of a generalized Pareto fitted to the
  :math:`M = \lceil \min(S/5, 3\sqrt S) \rceil` largest of the ``S`` importance weights
  of each datapoint, by the empirical-Bayes estimate of Zhang & Stephens (2009) with
  the weak prior of Vehtari et al. (the estimate ArviZ's ``psislw`` computes; a test
  holds ours to it). Above 0.7 the weights' variance is effectively infinite and an
  importance-weighted estimate cannot be trusted, however small its standard error looks.
  Only the ``M + 1`` largest weights enter, so :class:`LargestLogWeights` keeps just
  those while chunks of samples stream by: the exact :math:`\hat k` of all ``S`` weights
  in ``O(sqrt S)`` memory per datapoint.
* :func:`gradient_snr` — Rainforth et al. (2018), *Tighter variational bounds are not
  necessarily better*: for each parameter component :math:`\theta_j` and a gradient
  estimator :math:`\Delta`, :math:`\mathrm{SNR}_j = |E[\Delta_j]| / \mathrm{sd}[\Delta_j]`,
  estimated from repeated draws on one fixed batch; summarized per parameter group.

Both work on any model/guide pair following the package convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from torch import nn

from .enumeration import unwrap_independent
from .program import SAMPLE_PLATE, Program, check_data, inspect_program
from .validation import positive_int

#: Burda et al. (2016): a unit is active when the variance of its posterior mean exceeds this.
ACTIVE_THRESHOLD = 0.01
#: Vehtari et al. (2024): importance weights with k-hat above this are unreliable.
PARETO_K_THRESHOLD = 0.7


#: Fewer weights leave too short a tail (at most 4 weights) to fit; k-hat is then reported as NaN.
MIN_PSIS_SAMPLES = 25
#: Zhang & Stephens (2009) as PSIS uses it: prior scale for b, and prior weight of k toward 0.5 (Vehtari et al. 2024).
_PRIOR_BS, _PRIOR_K = 3.0, 10.0
#: Elements one block of the GPD fit may create (grid points x datapoints x tail weights).
_GPD_BLOCK = 2**24


def psis_tail_length(num_samples: int) -> int:
    """``M = ceil(min(S/5, 3 sqrt(S)))``: how many of ``S`` importance weights form the tail PSIS fits."""
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples))))


def _gpd_shape(tail: torch.Tensor) -> torch.Tensor:
    """Shape ``k`` of a generalized Pareto fitted to each column of ``tail`` ``(n, C)`` (ascending exceedances, float64).

    Zhang & Stephens (2009): a grid of ``m = 30 + floor(sqrt n)`` values of ``b = -k/sigma``,
    each weighted by its profile likelihood, ``k = mean log(1 - b_post x)``; then shrunk
    toward 0.5 with the weight of 10 observations (Vehtari et al. 2024).
    """
    n, columns = tail.shape
    m = 30 + int(n**0.5)
    grid = 1 - torch.sqrt(m / (torch.arange(1, m + 1, dtype=torch.float64, device=tail.device) - 0.5))  # (m,)
    b = grid[:, None] / (_PRIOR_BS * tail[int(n / 4 + 0.5) - 1])[None, :] + 1 / tail[-1][None, :]  # (m, C)
    k = torch.log1p(-b[:, :, None] * tail.T[None, :, :]).mean(-1)  # (m, C)
    profile = n * (torch.log(-(b / k)) - k - 1)
    weights = 1 / torch.exp(profile[None, :, :] - profile[:, None, :]).sum(1)  # [i] = 1 / sum_j exp(l_j - l_i)
    weights = torch.where(weights >= 10 * torch.finfo(torch.float64).eps, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(0)
    b_post = (b * weights).sum(0)
    k_post = torch.log1p(-b_post[None, :] * tail).mean(0)
    return (n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K)


def pareto_k_from_largest(largest: torch.Tensor, num_samples: int) -> torch.Tensor:
    """PSIS k-hat per datapoint of ``num_samples`` log weights, given (at least) their ``M + 1`` largest ``(T, N)``.

    Exactly the k-hat of all ``num_samples`` weights: the cut-off is the ``(M+1)``-th largest
    weight and the tail the weights above it. NaN below :data:`MIN_PSIS_SAMPLES`; infinite
    where 4 or fewer weights lie above the cut-off (ties).
    """
    num_points = largest.shape[1]
    if num_samples < MIN_PSIS_SAMPLES:
        return torch.full((num_points,), math.nan, dtype=torch.float64, device=largest.device)
    m = psis_tail_length(num_samples)
    if largest.shape[0] < m + 1:
        raise ValueError(f"PSIS of {num_samples} weights needs their {m + 1} largest, got {largest.shape[0]}")
    top = largest.detach().double().topk(m + 1, dim=0).values  # descending
    top = top - top[0]
    cutoff = top[m].clamp(min=math.log(torch.finfo(torch.float64).tiny))
    tail = top[:m]
    length = (tail > cutoff).sum(0)  # the valid tail is the first `length` rows (descending)
    exceed = (torch.exp(tail) - torch.exp(cutoff)).flip(0)  # ascending; the valid tail is now the last rows
    k_hat = torch.full((num_points,), math.inf, dtype=torch.float64, device=largest.device)
    for n in length.unique().tolist():  # one fit per distinct tail length: nearly always one (M; fewer with ties)
        if n <= 4:
            continue
        columns = (length == n).nonzero().flatten()
        grid = 30 + int(n**0.5)
        step = max(1, _GPD_BLOCK // (grid * max(grid, n)))  # the (m, n, C) log1p and the (m, m, C) weights
        for start in range(0, len(columns), step):
            block = columns[start : start + step]
            k_hat[block] = _gpd_shape(exceed[m - n :, block])
    return k_hat


def pareto_k(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS k-hat per datapoint of log importance weights ``(S, N)``: shape ``(N,)`` (float64), on their device.

    NaN for every datapoint when ``S < MIN_PSIS_SAMPLES`` (no tail to fit).
    """
    if log_weights.dim() != 2 or log_weights.shape[0] < 2:
        raise ValueError(f"pareto_k needs log weights of shape (samples >= 2, datapoints), got {tuple(log_weights.shape)}")
    nan = torch.isnan(log_weights).any(0)
    if bool(nan.any()):
        points = nan.nonzero().flatten().tolist()
        raise ValueError(f"pareto_k got NaN log weights for datapoint(s) {points[:10]}{' ...' if len(points) > 10 else ''}: "
                         "their k-hat is undefined (a weight of -inf, a zero weight, is fine; NaN is a failed computation)")
    return pareto_k_from_largest(log_weights, log_weights.shape[0])


class LargestLogWeights:
    """The ``M + 1`` largest log weights of each datapoint, kept while chunks of samples stream by.

    :meth:`pareto_k` then gives the exact k-hat of all the weights added. Chunks are
    gathered until they hold ``3 (M + 1)`` rows and then cut back to the ``M + 1``
    largest, so memory stays ``O(M) x N`` (``M ~ 3 sqrt S``) instead of ``S x N``, at the
    cost of one ``topk`` per few chunks.
    """

    def __init__(self, num_samples: int):
        self.num_samples = int(num_samples)
        self.keep = psis_tail_length(self.num_samples) + 1
        self._parts: list[torch.Tensor] = []
        self._rows = 0
        self.added = 0

    def add(self, log_weights: torch.Tensor) -> None:
        self._parts.append(log_weights.detach())
        self._rows += len(log_weights)
        self.added += len(log_weights)
        if self._rows > 3 * self.keep:
            self._compact()

    def _compact(self) -> None:
        both = torch.cat(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = [both.topk(min(self.keep, len(both)), dim=0).values]
        self._rows = len(self._parts[0])

    @property
    def rows(self) -> int:
        """Log weights held per datapoint now (at most ``3 (M + 1)`` plus one chunk)."""
        return self._rows

    def pareto_k(self) -> torch.Tensor:
        if self.added != self.num_samples:
            raise ValueError(f"{self.added} log weights were added, not the {self.num_samples} announced")
        self._compact()
        return pareto_k_from_largest(self._parts[0], self.num_samples)


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
    num_samples = positive_int(num_samples, "num_samples")
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
