r"""Bidirectional Monte Carlo (BDMC): AIS bounds that sandwich :math:`\log p(x)` on simulated data.

Grosse, Ghahramani & Adams (2015), used for VAEs by Wu, Burda, Salakhutdinov & Grosse (2017).
Simulate :math:`(z^*, x) \sim p(z)\,p(x|z)`; then :math:`z^*` is an exact sample of the posterior
:math:`p(z|x)`. Forward AIS (from :math:`q_0` to the posterior) gives a stochastic **lower**
bound on :math:`\log p(x)`. Reverse AIS starts every chain at :math:`z^*` and runs the same
schedule backwards; its weights :math:`w = \prod_t f_{t-1}(z_t) / f_t(z_t)` are unbiased for
:math:`1/p(x)`, so :math:`-\log \frac1C \sum_c w_c` is a stochastic **upper** bound. The gap
between the two bounds the error of forward AIS with these settings on data like this.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .ais import AISOptions, ais, anneal, annealing_schedule, check_schedule, datapoint_block, guide_block, latent_layout
from .estimators import MAX_ELEMENTS, Estimate, log_mean_exp_estimate
from .program import Program, check_data, inspect_program
from .wake_sleep import dream


class BDMCResult(NamedTuple):
    x: torch.Tensor  #: the simulated data, shaped like the template
    latents: dict[str, torch.Tensor]  #: the latents that generated it (exact posterior samples)
    lower: Estimate  #: forward AIS, per datapoint
    upper: Estimate  #: reverse AIS, per datapoint

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per datapoint: a bound on the forward AIS error (in expectation)."""
        return self.upper.value - self.lower.value


def bdmc(
    model: Program,
    guide: Program,
    x_template: torch.Tensor,
    options: AISOptions = AISOptions(),
    *,
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> BDMCResult:
    """Simulate ``len(x_template)`` datapoints from the model and bound their :math:`\log p(x)` from both sides.

    ``options`` are the AIS settings of both directions (chains, steps, schedule, initial distribution, HMC).
    """
    check_data(x_template)
    num_chains, hmc, init = options.num_chains, options.hmc, options.init
    betas = check_schedule(annealing_schedule(options.schedule, options.num_steps))
    info = inspect_program(model, guide, x_template)
    x, latents = dream(model, x_template, info)
    lower = ais(model, guide, x, num_chains=num_chains, schedule=betas, hmc=hmc, init=init, max_elements=max_elements, progress=progress)
    layout = latent_layout(model, x, info)
    block = datapoint_block(model, guide, x, info, int(num_chains), max_elements)
    reverse = []
    for begin in range(0, len(x), block):
        xb = x[begin : begin + block]
        part = {n: latents[n].narrow(info.data_dim - len(ev), begin, len(xb)) for n, ev in zip(layout.sites, layout.event_shapes)}
        start = layout.flatten(part, 1, len(xb), info)  # the simulating latents: exact posterior samples
        z0 = start.expand(int(num_chains), *start.shape[1:]).contiguous()
        log_w, _, _, _ = anneal(model, guide_block(guide, begin, begin + len(xb), len(x)), xb, z0, betas.flip(0), hmc, info, layout, init)
        reverse.append(log_w)
    inverse = log_mean_exp_estimate(torch.cat(reverse, 1))  # estimates log(1 / p(x))
    upper = Estimate(-inverse.value, inverse.stderr, inverse.num_samples)
    return BDMCResult(x, latents, lower.log_px, upper)
