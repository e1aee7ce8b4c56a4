r"""Importance-weighted training objectives, per datapoint: IWAE, and its STL and DReG gradients.

With ``K`` samples :math:`z_{1..K} \sim q(z|x_i)` and :math:`w_k = p(x_i, z_k)/q(z_k|x_i)`,

.. math:: \mathcal{L}_K(x_i) = E\Big[\log \frac1K \sum_{k=1}^K w_k\Big]
          \qquad \text{(Burda, Grosse \& Salakhutdinov 2016)},

combined with ``logsumexp`` **per datapoint** (Pyro's ``RenyiELBO`` combines
the weights of the whole trace; pyro issue 3104). Global latents :math:`\theta`
are drawn once per step and shared by the K samples of every datapoint; the
bound is then :math:`E_{q(\theta)}[\log p(\theta) - \log q(\theta) + \sum_i \mathcal{L}_K(x_i|\theta)]`.

Gradient estimators, with normalized weights :math:`\tilde w_k = w_k / \sum_j w_j`:

* ``iwae`` — pathwise through reparameterized sites; for non-reparameterized guide
  sites it adds the score-function term :math:`\hat{\mathcal{L}}_K \sum_k \nabla \log q(z_k)`,
  so discrete guides get their gradient (unlike ``RenyiELBO(alpha=0)``, pyro issue 3289);
* ``iwae-stl`` — "sticking the landing" (Roeder, Wu & Duvenaud 2017): the guide's
  parameters reach :math:`\log q` only through :math:`z`. At K = 1 the dropped score term has
  expectation zero and the estimator is unbiased, with zero variance at the exact
  posterior; for K > 1 the dropped term :math:`-\sum_k \tilde w_k \nabla_\phi \log q_\phi(z_k)` does
  *not* average to zero and STL is biased for the IWAE bound (Tucker et al. 2019);
* ``iwae-dreg`` — doubly reparameterized (Tucker, Lawson, Gu & Maddison 2019): guide
  gradient :math:`\sum_k \tilde w_k^2 \, \partial \log w_k / \partial z_k \, \partial z_k/\partial\phi`,
  model gradient :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`; unbiased for every K;
* ``vimco`` — for non-reparameterized (discrete) guides (Mnih & Rezende 2016): the
  score term of sample k is weighted by :math:`\hat{\mathcal{L}}_K - \hat{\mathcal{L}}_{-k}`, where
  :math:`\hat{\mathcal{L}}_{-k}` replaces :math:`\log w_k` by the mean of the other samples'
  log weights: a per-sample leave-one-out baseline.

STL and DReG evaluate :math:`\log q_{\bar\phi}(z)` (and DReG :math:`\log p_{\bar\theta}(x, z)`) with
*every* parameter stopped, by parameter rather than by module
(:func:`inference.program.with_stopped_parameters`): the guide's own, any model
network the guide reads (the ladder VAE's top-down networks), parameters read through
``pyro.param``, flow networks that run lazily inside ``log_prob``, and the global latents
:math:`\theta`, on which the re-scored programs are conditioned detached. A parameter
used by both programs gets both gradients: the model's (through :math:`\log p` at fixed
:math:`z`) and the guide's (through :math:`z` only). Both need model and guide to be
``nn.Module``s (parameters they read through ``pyro.param`` are stopped as well). The
samples are re-scored as copies, so no transform can answer ``log_prob`` from the
cache of its sampling pass (which still holds unstopped parameters).

**Mini-batches.** With a dataset of N points (``dataset_size``, set by
:func:`inference.training.fit`) and a batch of B, the loss is the batch's share of the
full-data objective: the global factor is counted ``B/N`` times per batch, so the
expected loss over batches is the full-data loss times B/N, and global latents
are fitted to the posterior of the whole dataset.
"""

from __future__ import annotations

import torch
from pyro import poutine
from torch import nn

from ..program import (
    ConventionError,
    ProgramInfo,
    per_datapoint_log_prob,
    sampled_log_densities,
    score_configurations,
    with_stopped_parameters,
)
from ..sampling import draw_globals
from ..stats import log_mean_exp
from .base import SampledLoss

ESTIMATORS = ("iwae", "iwae-stl", "iwae-dreg", "vimco")


class IWAELoss(SampledLoss):
    """``-sum_i L_K(x_i)`` (a ``(,)`` tensor) whose gradient is the chosen estimator's."""

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int, estimator: str = "iwae"):
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown importance-weighted estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
        super().__init__(model, guide, num_particles, estimator)
        if estimator == "vimco" and self.num_particles < 2:
            raise ValueError(f"objective 'vimco' needs K = num_particles >= 2 for its leave-one-out baselines, got {num_particles}")
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info, k = self.info(x), self.num_particles
        model, guide = self.model, self.guide
        global_term, theta = draw_globals(model, guide, x, info, self.dataset_size)
        if theta:
            model, guide = poutine.condition(model, data=theta), poutine.condition(guide, data=theta)
        log_p, log_q, guide_trace = sampled_log_densities(model, guide, x, k, info)
        log_w = log_p - log_q  # (K, N)
        bound = log_mean_exp(log_w)
        value = -(bound.sum() + global_term)
        sites = info.guide_local_sites
        reparam = all(guide_trace.nodes[n]["fn"].has_rsample for n in sites)
        if self.estimator == "vimco":
            return self._vimco(log_w, bound, value, global_term, guide_trace, info)
        if self.estimator == "iwae":
            surrogate = -bound.sum() - global_term
            if not reparam:  # the score-function term of the non-reparameterized sites
                score = sum(
                    per_datapoint_log_prob(n, guide_trace.nodes[n], info) for n in sites if not guide_trace.nodes[n]["fn"].has_rsample
                )
                surrogate = surrogate - (bound.detach() * score).sum()
            return surrogate + (value - surrogate).detach()
        if not reparam:
            raise ValueError(f"objective {self.estimator!r} needs a reparameterized guide; use 'iwae' (or 'vimco' for discrete latents)")
        if not isinstance(self.guide, nn.Module) or not isinstance(self.model, nn.Module):
            raise ConventionError(f"objective {self.estimator!r} needs model and guide to be nn.Modules (it re-scores with stopped parameters)")
        values = {n: guide_trace.nodes[n]["value"] for n in sites}  # the samples, with their graph
        log_q_stop, log_p_stop = stopped_log_densities(self.model, self.guide, x, values, theta, info, model_too=self.estimator == "iwae-dreg")
        w_tilde = torch.softmax(log_w.detach(), 0)
        if self.estimator == "iwae-stl":
            surrogate = -(w_tilde * (log_p - log_q_stop)).sum() - global_term
            return surrogate + (value - surrogate).detach()
        # DReG: the guide through z with squared weights; the model (and theta in its model role) with the usual weights, z held fixed
        fixed = {n: v.detach() for n, v in values.items() if n in info.local_latents}
        log_p_fixed = score_configurations(model, x, fixed, info, info.local_latents + info.observed)
        guide_part = (w_tilde.pow(2) * (log_p_stop - log_q_stop)).sum()
        model_part = (w_tilde * log_p_fixed).sum()
        surrogate = -(guide_part + model_part) - global_term
        return surrogate + (value - surrogate).detach()

    def _vimco(self, log_w, bound, value, global_term, guide_trace, info):
        k = log_w.shape[0]
        lw = log_w.detach()
        others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # (K, N): mean log weight of the other samples
        # row k of `swapped` is lw with its k-th entry replaced by others_mean[k]
        eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)
        swapped = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))  # (K, K, N)
        loo = log_mean_exp(swapped, 1)
        signal = bound.detach().unsqueeze(0) - loo  # (K, N)
        score = 0.0
        for n in info.guide_local_sites:
            if not guide_trace.nodes[n]["fn"].has_rsample:
                score = score + per_datapoint_log_prob(n, guide_trace.nodes[n], info)
        surrogate = -(bound.sum() + (signal * score).sum()) - global_term
        return surrogate + (value - surrogate).detach()


def stopped_log_densities(
    model: nn.Module, guide: nn.Module, x: torch.Tensor, values: dict[str, torch.Tensor], theta: dict[str, torch.Tensor],
    info: ProgramInfo, model_too: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r""":math:`\log q_{\bar\phi}(z \mid x, \bar\theta)` and :math:`\log p_{\bar\theta}(x, z)` at the samples ``values``, every parameter stopped.

    Gradients reach the result only through ``values`` (the reparameterized samples). The
    global latents are conditioned on detached, and the scoring runs inside
    :func:`inference.program.with_stopped_parameters`, so flows that evaluate their
    networks in ``log_prob`` and guides that read model networks are stopped as well.
    Returns ``(log_q, log_p or None)``, each ``(K, N)``.
    """
    stop_theta = {n: v.detach() for n, v in theta.items()}
    values = {n: v.clone() for n, v in values.items()}  # new tensors: no transform's sampling cache can answer for them

    def score():
        g = poutine.condition(guide, data=stop_theta) if stop_theta else guide
        log_q = score_configurations(g, x, values, info, info.guide_local_sites)
        if not model_too:
            return log_q, None
        m = poutine.condition(model, data=stop_theta) if stop_theta else model
        return log_q, score_configurations(m, x, values, info, info.local_latents + info.observed)

    return with_stopped_parameters((model, guide), score)
