r"""Wake-sleep objectives, per datapoint and on mini-batches: reweighted wake-sleep and classic wake-sleep.

Both fit the model and the guide with *different* objectives, so each loss below
returns a value to report (a bound on :math:`\log p(x)`) and a surrogate whose
gradient is the update of the method; neither is the gradient of the value.

**Reweighted wake-sleep** (Bornschein & Bengio 2015), ``rws``: with
:math:`z_{1..K} \sim q(z|x_i)` and per-datapoint normalized weights
:math:`\tilde w_{ik} = w_{ik} / \sum_j w_{ij}`, :math:`w_{ik} = p(x_i, z_{ik}) / q(z_{ik}|x_i)`,

* wake update of the model: :math:`\sum_k \tilde w_{ik} \nabla_\theta \log p(x_i, z_{ik})`,
  which is exactly :math:`\nabla_\theta \mathcal{L}_K(x_i)`, the IWAE bound's gradient, when the
  guide reads none of the model's parameters (otherwise, e.g. the ladder VAE's shared networks
  or a global latent the guide conditions on, it is the RWS model update, which tends to
  :math:`\nabla_\theta \log p(x_i)` as K grows);
* wake update of the guide: :math:`\sum_k \tilde w_{ik} \nabla_\phi \log q(z_{ik}|x_i)`,
  a self-normalized estimate of :math:`-\nabla_\phi KL(p(z|x_i) \| q(z|x_i))`;
* sleep update of the guide: :math:`\nabla_\phi \log q(z|x)` on a *dream*
  :math:`(z, x) \sim p`, an unbiased estimate of :math:`-\nabla_\phi E_{p(x)} KL(p(z|x) \| q(z|x))`.

``insomnia`` mixes the two guide updates (1: wake only, the variant Le et al. 2019
recommend; 0: sleep only; 0.5: both, as in the paper). Registered as ``rws``
(insomnia 1), ``rws-sleep`` (0) and ``rws-both`` (0.5). The reported value is the IWAE bound.

The weights are normalized **per datapoint**, so any mini-batch works (Pyro's
``ReweightedWakeSleep`` normalizes over the whole trace and refuses mini-batches).

**Wake-sleep** (Hinton, Dayan, Frey & Neal 1995), ``wake-sleep``: the wake phase
fits the model to :math:`z \sim q(z|x_i)` of real data,
:math:`\frac1K \sum_k \nabla_\theta \log p(x_i, z_{ik})`; the sleep phase fits the
guide to dreams, :math:`\nabla_\phi \log q(z|x)` with :math:`(z, x) \sim p`. The reported value is the ELBO.

Samples are never differentiated through: every update is a score of fixed
values, so both methods apply to discrete and continuous latents alike.
Global latents are drawn once per step from their guide and shared by every sample,
as in :mod:`inference.objectives.iwae`; they are fitted by the pathwise ELBO gradient of their
factor (counted ``B/N`` times per batch of B out of ``dataset_size`` N) plus the wake
terms, and dreams draw them from the prior.

**Parameters shared by model and guide** (the ladder VAE's guide runs the model's
top-down networks) are *model* parameters here: they receive the model update only.
The guide's wake and sleep terms are scored with every model parameter stopped
(:func:`inference.program.with_stopped_parameters`), so those networks get exactly the
model update they would get if the guide read a copy of them, and the guide update
moves only the guide's own parameters.
"""

from __future__ import annotations

import torch
from pyro import poutine

from ..program import (
    ConventionError,
    ProgramInfo,
    per_datapoint_log_prob,
    sampled_log_densities,
    score_configurations,
    with_stopped_parameters,
)
from ..sampling import draw_globals, dream
from ..stats import log_mean_exp
from .base import SampledLoss

#: Registered names and the share of the wake update in each guide update (``insomnia``).
RWS_VARIANTS = {"rws": 1.0, "rws-sleep": 0.0, "rws-both": 0.5}
WAKE_SLEEP = "wake-sleep"


def sleep_log_q(model, guide, x: torch.Tensor, info: ProgramInfo) -> torch.Tensor:
    """``log q(z'|x')`` of the local latents of one dream per datapoint: shape ``(len(x),)``, differentiable in the guide's own parameters.

    Parameters the guide shares with the model are stopped (see the module docstring).
    """
    if info.auxiliary:
        raise ConventionError(
            f"the sleep phase scores log q(z|x) at dreamed z, which a guide with auxiliary sites {list(info.auxiliary)} "
            "(an autoguide) cannot do: use 'rws', whose guide update is the wake phase's"
        )
    x_dream, latents = dream(model, x, info)

    def score():
        trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(x_dream)
        return sum(per_datapoint_log_prob(n, trace.nodes[n], info) for n in info.local_latents)

    return with_stopped_parameters((model,), score, param_sites="owned").reshape(-1)


class _WakeSleepBase(SampledLoss):
    def _wake(self, x: torch.Tensor):
        """Samples of q for real data: (log_w (K, N) without graph, model log p at fixed z (K, N), guide at fixed z, globals' term)."""
        info = self.info(x)
        global_term, theta = draw_globals(self.model, self.guide, x, info, self.dataset_size)
        model, guide = self.model, self.guide
        if theta:
            model = poutine.condition(model, data=theta)
            guide = poutine.condition(guide, data={n: v.detach() for n, v in theta.items()})
        with torch.no_grad():
            log_p, log_q, guide_trace = sampled_log_densities(model, guide, x, self.num_particles, info)
        values = {n: guide_trace.nodes[n]["value"] for n in info.guide_local_sites}
        log_p_fixed = score_configurations(model, x, values, info, info.local_latents + info.observed)
        return log_p - log_q, log_p_fixed, guide, values, global_term


class RWSLoss(_WakeSleepBase):
    """Reweighted wake-sleep: value ``-sum_i L_K(x_i)``, gradient the RWS updates (see the module docstring)."""

    def __init__(self, model, guide, num_particles: int, insomnia: float = 1.0, name: str = "rws"):
        super().__init__(model, guide, num_particles, name)
        if not 0.0 <= insomnia <= 1.0:
            raise ValueError(f"insomnia must lie in [0, 1], got {insomnia}")
        self.insomnia = float(insomnia)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_w, log_p_fixed, guide, values, global_term = self._wake(x)
        info = self._info
        weights = torch.softmax(log_w, 0)  # per datapoint, over its K samples
        surrogate = -(weights * log_p_fixed).sum() - global_term
        if self.insomnia > 0:  # the guide's own parameters only: those it shares with the model are stopped
            copies = {n: v.clone() for n, v in values.items()}  # no transform's sampling cache answers for them
            log_q_fixed = with_stopped_parameters(
                (self.model,), lambda: score_configurations(guide, x, copies, info, info.guide_local_sites), param_sites="owned"
            )
            surrogate = surrogate - self.insomnia * (weights * log_q_fixed).sum()
        if self.insomnia < 1:
            surrogate = surrogate - (1 - self.insomnia) * sleep_log_q(self.model, self.guide, x, info).sum()
        value = -(log_mean_exp(log_w).sum() + global_term)
        return surrogate + (value - surrogate).detach()


class WakeSleepLoss(_WakeSleepBase):
    """Wake-sleep: value ``-sum_i ELBO(x_i)`` (K-sample average), gradient the wake (model) and sleep (guide) updates."""

    def __init__(self, model, guide, num_particles: int = 1):
        super().__init__(model, guide, num_particles, WAKE_SLEEP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_w, log_p_fixed, _, _, global_term = self._wake(x)
        surrogate = -log_p_fixed.mean(0).sum() - global_term - sleep_log_q(self.model, self.guide, x, self._info).sum()
        value = -(log_w.mean(0).sum() + global_term)
        return surrogate + (value - surrogate).detach()
