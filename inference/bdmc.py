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

from .ais import (
    AISOptions,
    anneal,
    annealing_schedule,
    check_initial,
    check_schedule,
    datapoint_block,
    forward_run,
    guide_block,
    latent_layout,
    pilot_count,
    progress_bar,
)
from .estimators import Estimate, log_mean_exp_estimate
from .nonfinite import refuse_non_finite
from .program import Program, check_data, inspect_program
from .sampling import dream


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
    max_elements: int | None = None,
    progress: bool = False,
) -> BDMCResult:
    r"""Simulate ``len(x_template)`` datapoints from the model and bound their :math:`\log p(x)` from both sides.

    ``options`` are the AIS settings of both directions (chains, steps, schedule, initial distribution, HMC).
    """
    x_template = check_data(x_template)
    num_chains, hmc, init = int(options.num_chains), options.hmc, options.init
    betas = check_schedule(annealing_schedule(options.schedule, options.num_steps))
    info = inspect_program(model, guide, x_template)
    x, latents = dream(model, x_template, info)
    layout = latent_layout(model, x, info)
    check_initial(init, info)
    block = datapoint_block(model, guide, x, info, num_chains + pilot_count(hmc), max_elements)
    bar = progress_bar(2 * (len(betas) - 1), -(-len(x) // block)) if progress else None
    forward, reverse = [], []
    for begin in range(0, len(x), block):
        xb = x[begin : begin + block]
        gb = guide_block(guide, begin, begin + len(xb), len(x))
        run = forward_run(model, gb, xb, betas, num_chains, hmc, info, layout, init, bar)
        forward.append(run.log_weights)
        steps = run.step_sizes  # (T, n): the step size at beta_1 .. beta_T
        part = {n: latents[n].narrow(info.data_dim - len(ev), begin, len(xb)) for n, ev in zip(layout.sites, layout.event_shapes)}
        start = layout.flatten(part, 1, len(xb), info)  # the simulating latents: exact posterior samples
        z_star = start.expand(num_chains, *start.shape[1:]).contiguous()
        # reverse transitions target beta_{T-1}, ..., beta_0 with the forward step size at each (beta_0: beta_1's)
        reverse_steps = torch.cat([steps.flip(0)[1:], steps[:1]])
        reverse.append(anneal(model, gb, xb, z_star, betas.flip(0), hmc, info, layout, init, bar, step_sizes=reverse_steps).log_weights)
    if bar is not None:
        bar.close()
    lower = log_mean_exp_estimate(torch.cat(forward, 1), pareto=num_chains > 1)
    inverse = log_mean_exp_estimate(torch.cat(reverse, 1))  # estimates log(1 / p(x))
    refuse_non_finite(lower.value, "the BDMC forward (lower) bound", model, guide, x, info)
    refuse_non_finite(inverse.value, "the BDMC reverse (upper) bound", model, guide, x, info)
    upper = Estimate(-inverse.value, inverse.stderr, inverse.num_samples)
    return BDMCResult(x, latents, lower, upper)
