r"""Test-time refinement: how much of the amortization gap ``k`` steps of per-datapoint SVI close.

Starting from the amortized guide's own output for each datapoint (its family, the
per-datapoint parameters set free, as :func:`inference.local.local_posterior` does with
``init="encoder"``), take exactly ``k`` Adam steps on each datapoint's ELBO and measure
:math:`\mathcal L[q_k]`. With the amortized :math:`\mathcal L[q]` and a reference
:math:`\mathcal L[q^*]` on the same points, the share of the amortization gap closed is the
ratio of paired means

.. math:: r_k = \frac{\overline{\mathcal L[q_k] - \mathcal L[q]}}{\overline{\mathcal L[q^*] - \mathcal L[q]}},
          \qquad \mathrm{SE}(r_k) \approx \frac{\mathrm{sd}_i\big(a_i - r_k b_i\big)}{\sqrt n\, |\bar b|}

(delta method, :math:`a_i` and :math:`b_i` the numerator's and denominator's per-datapoint
terms). This is the evaluation side of semi-amortized inference (Kim, Wiseman, Miller,
Sontag & Rush 2018, *Semi-amortized variational autoencoders*): the refinement alone,
without training through it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .estimators import Estimate, elbo
from .families import OWN
from .local import LocalOptions, StoppingRule, local_posterior
from .program import Program, check_data
from .validation import nonnegative_int


class Share(NamedTuple):
    """A ratio of paired means with its delta-method standard error."""

    value: float
    se: float


class Refinement(NamedTuple):
    """``L[q_k]`` for every ``k`` (0: the amortized q), and the share of the amortization gap each closes."""

    elbos: dict[int, Estimate]
    closed: dict[int, Share]  #: r_k against the reference L[q*]
    seconds_per_step: float  #: wall time of one refinement step for all the datapoints together


def share_closed(refined: torch.Tensor, amortized: torch.Tensor, best: torch.Tensor) -> Share:
    """``r = mean(refined - amortized) / mean(best - amortized)`` over paired datapoints, with its delta-method SE."""
    a, b = (refined - amortized).double(), (best - amortized).double()
    if len(a) < 2:
        raise ValueError("the share closed needs at least 2 datapoints for its standard error")
    mean_b = float(b.mean())
    if mean_b <= 0:
        raise ValueError(f"the reference closes no amortization gap (mean L[q*] - L[q] = {mean_b:.4g}): nothing to share")
    r = float(a.mean()) / mean_b
    return Share(r, float((a - r * b).std() / (math.sqrt(len(a)) * abs(mean_b))))


def refine(
    model: Program, guide: Program, x: torch.Tensor, steps: Sequence[int] = (1, 5, 20), reference: torch.Tensor | None = None, *,
    options: LocalOptions = LocalOptions(), eval_samples: int = 1000, max_elements: int | None = None,
) -> Refinement:
    """``L[q_k]`` after exactly ``k`` refinement steps from the amortized output, for each ``k`` of ``steps``.

    ``reference`` is the per-datapoint L[q*] the shares are measured against (default: the fit of
    ``options`` run to its stopping rule, which must start from the encoder). ``options`` gives
    the optimizer (Adam settings, samples per step); its stopping rule is replaced by exactly
    ``k`` steps for each ``k``.
    """
    x = check_data(x)
    steps = sorted({nonnegative_int(k, "each k in steps") for k in steps} | {0})
    if options.init != "encoder":
        raise ValueError(f"refinement starts from the amortized output: options.init must be 'encoder', got {options.init!r}")
    elbos = {0: elbo(model, guide, x, eval_samples, max_elements=max_elements)}
    seconds, counted = 0.0, 0
    for k in steps[1:]:
        exact_k = dataclasses.replace(options, rule=StoppingRule(window=1, patience=k, max_steps=k), families=())
        t0 = time.perf_counter()
        fit = local_posterior(model, guide, x, exact_k, family=OWN, eval_samples=eval_samples, max_elements=max_elements)
        seconds += time.perf_counter() - t0
        counted += k
        elbos[k] = fit.elbo
    if reference is None:
        reference = local_posterior(model, guide, x, options, family=OWN, eval_samples=eval_samples, max_elements=max_elements).elbo.value
    amortized = elbos[0].value
    closed = {k: share_closed(est.value, amortized, reference) for k, est in elbos.items()}
    return Refinement(elbos, closed, seconds / max(counted, 1))
