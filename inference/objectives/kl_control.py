r"""ELBOs with their KL term controlled, the standard remedies for posterior collapse.

Both split the single-datapoint ELBO into the reconstruction term and one KL term per
latent site (a *group*), each estimated by Monte Carlo with ``K`` reparameterized samples,

.. math:: R_i = E_q[\log p(x_i \mid z)], \qquad
          \mathrm{KL}_{g,i} = E_q[\log q(z_g \mid \cdot) - \log p(z_g \mid \cdot)],

and train on

* **β-VAE** (Higgins et al. 2017): :math:`\sum_i \big[R_i - \beta \sum_g \mathrm{KL}_{g,i}\big]`,
  a fixed weight :math:`\beta` on the KL term (:math:`\beta = 1` is the ELBO);
* **free bits** (Kingma et al. 2016, *Improved variational inference with inverse
  autoregressive flow*, eq. 15): :math:`\sum_i R_i - B \sum_g \max\big(\lambda,
  \tfrac1B \sum_i \mathrm{KL}_{g,i}\big)` on a batch of ``B``: each group's KL, averaged
  over the batch, is floored at :math:`\lambda` nats, so a group below the floor gets no
  gradient pushing its KL further down (:math:`\lambda = 0` is the ELBO);
* **free bits per dimension**: the same floor on each coordinate of a factorized site,
  :math:`\sum_i R_i - B \sum_g \sum_d \max\big(\lambda, \tfrac1B \sum_i \mathrm{KL}_{g,d,i}\big)`
  with :math:`\mathrm{KL}_{g,d,i} = E_q[\log q(z_{g,d}) - \log p(z_{g,d})]` (each latent unit a group,
  the common reading of Kingma et al.'s groups for a VAE with one latent vector; :math:`\lambda` in nats
  per unit). It needs guide and prior that factorize over the site's coordinates.

Global latents keep their plain term :math:`\log p(\theta) - \log q(\theta)`, counted
``B/N`` per batch; KL warm-up multiplies every KL term (and the global term) by its weight.
Guides must be reparameterized; enumerated and auxiliary sites are refused.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn
from torch.distributions import kl_divergence

from ..program import (
    SAMPLE_PLATE,
    ProgramInfo,
    _check_unscaled,
    _masked,
    _within_datapoints,
    global_log_prob,
    inspect_without_randomness,
    per_datapoint_log_prob,
    per_dimension_log_prob,
    trace_pair,
)
from ..sampling import global_share
from ..validation import nonnegative_number, positive_number


def per_datapoint_kl(name: str, guide_site: dict, model_site: dict, info: ProgramInfo) -> torch.Tensor:
    """The closed-form :math:`\\mathrm{KL}(q \\| p)` of one local site, given the values its distributions were built from,
    summed within each datapoint: ``(S or 1, N or 1)``; ``NotImplementedError`` where torch knows no closed form for the pair."""
    for site in (guide_site, model_site):
        _check_unscaled(name, site)
    return _within_datapoints(name, _masked(guide_site, kl_divergence(guide_site["fn"], model_site["fn"])), info, 0)


def elbo_terms(model, guide, x: torch.Tensor, info: ProgramInfo, num_particles: int = 1, per_dimension: bool = False,
               analytic_kl: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    r"""The ELBO's terms from ``K = num_particles`` joint samples: per-datapoint reconstruction :math:`R_i` ``(B,)``, each
    local site's :math:`\mathrm{KL}_{g,i}` ``(B,)`` (``per_dimension``: ``(B, D)``, one per coordinate), and the global term
    :math:`\log p(\theta) - \log q(\theta)`, each averaged over K.

    :math:`\mathcal L_i = R_i - \sum_g \mathrm{KL}_{g,i}`; differentiable (pathwise) in the parameters of both programs.
    ``analytic_kl``: each site's KL in closed form (:func:`per_datapoint_kl`, given the sampled values of the sites it
    depends on) where torch knows one, else the sampled :math:`\log q - \log p`.
    """
    with pyro.plate(SAMPLE_PLATE, num_particles, dim=info.sample_dim):
        model_trace, guide_trace = trace_pair(model, guide, x)
    recon = sum(per_datapoint_log_prob(n, model_trace.nodes[n], info) for n in info.observed)
    recon = recon.expand(num_particles, len(x)).mean(0)
    log_prob = per_dimension_log_prob if per_dimension else per_datapoint_log_prob  # (S, N, D) or (S, N)
    kl = {}
    for name in info.local_latents:
        diff = None
        if analytic_kl and not per_dimension:
            try:
                diff = per_datapoint_kl(name, guide_trace.nodes[name], model_trace.nodes[name], info)
            except NotImplementedError:  # no closed form for this pair of distributions: the sampled difference
                pass
        if diff is None:
            diff = log_prob(name, guide_trace.nodes[name], info) - log_prob(name, model_trace.nodes[name], info)
        kl[name] = diff.expand(num_particles, len(x), *diff.shape[2:]).mean(0)
    global_ = x.new_zeros(())
    for name in info.global_latents:
        m, g = model_trace.nodes[name], guide_trace.nodes[name]
        global_ = global_ + (global_log_prob(name, m) - global_log_prob(name, g)) / num_particles
    return recon, kl, global_


class KLControlledELBO(nn.Module):
    """The negative β-VAE / free-bits objective above, summed over the batch (``beta=1, free_bits=0``: the ELBO);
    ``per_dimension`` floors each coordinate's KL rather than each site's."""

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1, *, beta: float = 1.0, free_bits: float = 0.0,
                 per_dimension: bool = False):
        super().__init__()
        self.per_dimension = bool(per_dimension)
        self.model, self.guide = model, guide
        self.num_particles = int(num_particles)
        self.beta = positive_number(beta, "beta")
        self.free_bits = nonnegative_number(free_bits, "free_bits")
        self.latent_scale = 1.0  #: the KL warm-up weight
        self.dataset_size: int | None = None  #: N, set by the trainer: the global factor counts B/N per batch
        self.info: ProgramInfo | None = None

    def set_latent_scale(self, beta: float) -> None:
        self.latent_scale = float(beta)

    def _prepare(self, x: torch.Tensor) -> ProgramInfo:
        if self.info is None:
            info = inspect_without_randomness(self.model, self.guide, x)
            if info.enumerated or info.auxiliary or info.global_auxiliary:
                raise ValueError("the KL-controlled ELBOs score plain latent sites only; this pair has enumerated or auxiliary sites")
            self.info = info
        return self.info

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Per-datapoint reconstruction ``(B,)``, each local site's KL ``(B,)`` and the global term, each averaged over K."""
        return elbo_terms(self.model, self.guide, x, self._prepare(x), self.num_particles, self.per_dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recon, kl, global_ = self.terms(x)
        weight = self.beta * self.latent_scale
        # the floor only with free bits: clamping a Monte Carlo KL (negative at times) at 0 would bias the beta-VAE
        floor = (lambda kl_mean: torch.clamp(kl_mean, min=self.free_bits)) if self.free_bits > 0 else (lambda kl_mean: kl_mean)
        penalty = sum((floor(k.mean(0)).sum() * len(x) for k in kl.values()), x.new_zeros(()))  # k.mean(0): per site, or per unit
        share = global_share(len(x), self.dataset_size)
        return -(recon.sum() - weight * penalty + weight * share * global_)
