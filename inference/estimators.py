r"""Per-datapoint Monte Carlo estimators for any model/guide pair following the convention.

Both estimators draw ``num_samples`` vectorized samples from the guide, in
memory-bounded chunks, and combine the per-datapoint log weights
:math:`\log w_{s,i}` (see :func:`inference.program.log_weights`) in float64:

* :func:`elbo` — :math:`\mathcal{L}_i = \frac1S \sum_s \log w_{s,i}`, with standard error
  :math:`\mathrm{sd}_s(\log w_{s,i}) / \sqrt S`;
* :func:`iwae_log_px` — the importance-weighted bound of Burda, Grosse &
  Salakhutdinov (2016), :math:`\log \hat p(x_i) = \log \frac1K \sum_k w_{k,i}`,
  combined with ``logsumexp``, with the delta-method standard error
  :math:`\sqrt{(K \sum_k w_k^2 / (\sum_k w_k)^2 - 1)/(K-1)}` of the log of a mean.

Each returns an :class:`Estimate` of shape ``(len(x),)``.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from .diagnostics import LargestLogWeights, pareto_k_from_largest
from .memory import check_projected_time, chunk_size_for, chunks
from .nonfinite import refuse_non_finite
from .program import Program, ProgramInfo, check_data, inspect_program, log_weights
from .streams import PointStream, keyed, point_stream
from .validation import positive_int


class Estimate(NamedTuple):
    """A per-datapoint Monte Carlo estimate and its standard error."""

    value: torch.Tensor  #: shape (N,), float64
    stderr: torch.Tensor  #: shape (N,), float64; NaN where it cannot be estimated (one sample)
    num_samples: int
    pareto_k: torch.Tensor | None = None  #: (N,) PSIS shape estimate of the importance weights, where computed


class _Draws(NamedTuple):
    x: torch.Tensor  #: the checked data
    info: ProgramInfo
    num_samples: int
    chunk_size: int
    stream: PointStream | None = None  #: keyed draws (a seed was given), else torch's generator
    stream_name: str = ""


def _draws(model, guide, x, num_samples, chunk_size, max_elements, seed=None, index=None, stream_name="") -> _Draws:
    num_samples = positive_int(num_samples)
    if max_elements is not None:
        positive_int(max_elements, "max_elements")
    x = check_data(x)  # refuses empty or NaN data, casts binary integer data
    info = inspect_program(model, guide, x)  # also refuses out-of-support data
    if chunk_size is None:
        chunk_size = chunk_size_for(info, x, model, guide, max_elements)
    stream = point_stream(seed, x, index)
    return _Draws(x, info, num_samples, positive_int(chunk_size, "chunk_size"), stream, stream_name)


def _iter_log_weights(model, guide, draws: _Draws, what: str):
    """The log weights, chunk by chunk; a request projected from its first chunk to run for days is refused then.

    A chunk that runs out of device memory is drawn again at half the size (and so are the chunks after it),
    with a log line (:func:`inference.memory.halve_after_oom`)."""
    with torch.no_grad():
        started = time.perf_counter()
        def draw(start: int, size: int) -> torch.Tensor:
            with keyed(draws.stream.shifted(start) if draws.stream is not None else None, draws.stream_name):
                return log_weights(model, guide, draws.x, size, draws.info)

        for i, (size, lw) in enumerate(chunks(draws.num_samples, draws.chunk_size, draw, what)):
            yield lw
            if i == 0 and size < draws.num_samples:
                check_projected_time(time.perf_counter() - started, size, draws.num_samples, len(draws.x), what)


def elbo(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    num_samples: int = 1000,
    *,
    chunk_size: int | None = None,
    max_elements: int | None = None,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    stream_name: str = "elbo",
) -> Estimate:
    r"""Per-datapoint ELBO :math:`E_{q(z|x_i)}[\log p(x_i, z) - \log q(z|x_i)]`, shape ``(len(x),)``.

    With a ``seed``, datapoint ``i`` draws its samples from the numbers keyed by ``(seed, stream_name,
    index[i])`` (:mod:`inference.streams`; ``index`` defaults to ``0..N-1``): its estimate is then
    the same whichever points share the call, in whatever order, and whatever the chunk size.
    Without one, torch's generator.

    Example::

        >>> est = elbo(model, guide, x, num_samples=100)
        >>> est.value.mean(), est.stderr
    """
    total = sum_sq = None
    shift = None
    count = 0
    draws = _draws(model, guide, x, num_samples, chunk_size, max_elements, seed, index, stream_name)
    for lw in _iter_log_weights(model, guide, draws, "elbo"):
        if shift is None:
            shift = lw.mean(0)  # centring keeps the running sum of squares accurate
            total = torch.zeros_like(shift)
            sum_sq = torch.zeros_like(shift)
        centred = lw - shift
        total += centred.sum(0)
        sum_sq += (centred**2).sum(0)
        count += len(lw)
    mean = total / count
    if count > 1:
        var = (sum_sq - count * mean**2).clamp(min=0) / (count - 1)
        stderr = (var / count).sqrt()
    else:
        stderr = torch.full_like(mean, math.nan)
    value = refuse_non_finite(shift + mean, "the ELBO", model, guide, draws.x, draws.info)
    return Estimate(value, stderr, count)


def log_mean_exp_estimate(log_w: torch.Tensor, pareto: bool = False) -> Estimate:
    r""":math:`\log \frac1S \sum_s w_{s,i}` of log weights ``(S, N)`` in float64, with the delta-method standard error.

    With ``pareto=True`` the estimate also carries each datapoint's PSIS :math:`\hat k`.
    """
    log_w = log_w.double()
    count = log_w.shape[0]
    log_s1, log_s2 = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0)
    k_hat = None
    if pareto:  # unchecked: a NaN weight makes the estimate NaN, which its caller refuses naming the non-finite parameters
        k_hat = pareto_k_from_largest(log_w, count)
    return Estimate(log_s1 - math.log(count), _log_mean_stderr(log_s1, log_s2, count), count, k_hat)


def _log_mean_stderr(log_s1: torch.Tensor, log_s2: torch.Tensor, count: int) -> torch.Tensor:
    """Delta-method standard error of the log of a mean of ``count`` weights, from log sum w and log sum w^2."""
    if count < 2:
        return torch.full_like(log_s1, math.nan)
    rel_var = (math.log(count) + log_s2 - 2 * log_s1).exp() - 1
    return (rel_var.clamp(min=0) / (count - 1)).sqrt()


def iwae_log_px(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    chunk_size: int | None = None,
    max_elements: int | None = None,
    pareto: bool = False,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    stream_name: str = "iwae",
) -> Estimate:
    r"""Importance-weighted estimate :math:`\log \frac1K \sum_{k=1}^K p(x_i, z_k)/q(z_k|x_i)`, ``z_k ~ q(z|x_i)``.

    A stochastic lower bound on :math:`\log p(x_i)` that tightens as ``K`` grows
    (Burda et al. 2016). The guide is the proposal; any guide following the
    convention works, including a local (per-datapoint) one. With ``pareto=True`` the
    estimate carries the PSIS :math:`\hat k` of each datapoint's weights, exact, from the
    :math:`3\sqrt K` largest weights kept as the chunks stream by
    (:class:`inference.diagnostics.LargestLogWeights`): memory stays bounded by ``max_elements``.
    ``seed``, ``index`` and ``stream_name`` key the draws per datapoint, as for :func:`elbo`.
    """
    log_s1 = log_s2 = None
    count = 0
    draws = _draws(model, guide, x, num_samples, chunk_size, max_elements, seed, index, stream_name)
    largest = LargestLogWeights(num_samples) if pareto else None
    for lw in _iter_log_weights(model, guide, draws, "iwae_log_px"):
        if largest is not None:
            largest.add(lw)
        c1, c2 = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
        log_s1 = c1 if log_s1 is None else torch.logaddexp(log_s1, c1)
        log_s2 = c2 if log_s2 is None else torch.logaddexp(log_s2, c2)
        count += len(lw)
    k_hat = largest.pareto_k() if largest is not None else None
    value = refuse_non_finite(log_s1 - math.log(count), "the importance-weighted log p(x)", model, guide, draws.x, draws.info)
    return Estimate(value, _log_mean_stderr(log_s1, log_s2, count), count, k_hat)
