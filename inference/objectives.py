"""Training objectives, selectable by name, and KL warm-up for any program.

``make_objective(name)`` returns a Pyro :class:`~pyro.infer.ELBO`; calling it on
a (model, guide) pair gives Pyro's :class:`~pyro.infer.elbo.ELBOModule`, an
``nn.Module`` whose forward is the differentiable loss, which Lightning and any
torch optimizer can drive.

* ``elbo`` — :class:`pyro.infer.Trace_ELBO`, the Monte Carlo ELBO with pathwise
  gradients for reparameterized sites (Kingma & Welling 2014);
* ``meanfield`` — :class:`pyro.infer.TraceMeanField_ELBO`, the same bound with
  analytic KL terms where Pyro knows them;
* ``captured-elbo`` — ``Trace_ELBO``'s estimator for reparameterized guides,
  replayed from a recorded graph (:mod:`inference.capture`): same values, less
  Python per step, static programs only.

:func:`make_loss` gives the training loss module for any of these names.
"""

from __future__ import annotations

import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

OBJECTIVES = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
}


CAPTURED = "captured-elbo"
TRAINING_OBJECTIVES = (*OBJECTIVES, CAPTURED)


def make_objective(name: str, num_particles: int = 1) -> pyro.infer.ELBO:
    """The objective registered as ``name`` with ``num_particles`` vectorized particles."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    if isinstance(num_particles, bool) or int(num_particles) != num_particles or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if num_particles == 1:
        return OBJECTIVES[name]()
    return OBJECTIVES[name](num_particles=int(num_particles), vectorize_particles=True)


class LatentScale(Messenger):
    """Multiply the log density of every *unobserved* sample site by ``scale``.

    Applied to both model and guide it turns the ELBO into
    :math:`E_q[\\log p(x|z)] - \\beta\\, KL(q(z|x) \\| p(z))`, the KL warm-up of
    Bowman et al. (2016) and Sønderby et al. (2016).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


class Annealed(nn.Module):
    """A program whose latent sites are scaled by ``latent_scale`` (no handler at all when it is 1)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.latent_scale = 1.0

    def forward(self, x: torch.Tensor):
        if self.latent_scale == 1.0:
            return self.program(x)
        with LatentScale(self.latent_scale):
            return self.program(x)


def kl_weight(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)``; 1 when there is no warm-up."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class AnnealedLoss(nn.Module):
    """``ELBOModule`` of a Pyro objective on annealed copies of the programs."""

    def __init__(self, objective: pyro.infer.ELBO, model: nn.Module, guide: nn.Module):
        super().__init__()
        self.module = objective(Annealed(model), Annealed(guide))

    def set_latent_scale(self, beta: float) -> None:
        self.module.model.latent_scale = self.module.guide.latent_scale = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def make_loss(name: str, model: nn.Module, guide: nn.Module, num_particles: int = 1) -> nn.Module:
    """The training loss ``-ELBO`` (summed over the batch) for objective ``name``, with ``set_latent_scale(beta)``."""
    if name == CAPTURED:
        from .capture import CapturedELBO

        if num_particles != 1:
            raise ValueError(f"objective {CAPTURED!r} uses one sample per datapoint; got num_particles={num_particles}")
        return CapturedELBO(model, guide)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(TRAINING_OBJECTIVES)}")
    return AnnealedLoss(make_objective(name, num_particles), model, guide)
