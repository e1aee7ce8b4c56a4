r"""Semi-amortized variational inference: the encoder's output refined by ``k`` SVI steps, trained through the refinement.

Kim, Wiseman, Miller, Sontag & Rush (2018), *Semi-Amortized Variational Autoencoders* (ICML),
Algorithm 1. The encoder gives each datapoint's variational parameters
:math:`\lambda_0 = \mathrm{enc}_\phi(x_i)`; ``k`` steps of stochastic gradient ascent on that
datapoint's ELBO refine them,

.. math:: \lambda_{t+1} = \lambda_t + \alpha\, \mathrm{clip}\big(\nabla_\lambda \hat{\mathcal L}(x_i; \lambda_t, \theta)\big),
          \qquad t = 0 \ldots k-1,

(one fresh reparameterized draw per step; the gradient of each datapoint clipped to norm
``max_grad_norm``), and training ascends :math:`\mathcal L(x_i; \lambda_k, \theta)` with

* the model's parameters :math:`\theta` along :math:`\partial \mathcal L(x_i; \lambda_k, \theta)/\partial\theta`
  at fixed :math:`\lambda_k` (the paper's "update θ based on dELBO(λ_K, θ; x)/dθ");
* the encoder's parameters :math:`\phi` along the total derivative
  :math:`\frac{d\mathcal L(x_i; \lambda_k)}{d\lambda_k}\,\frac{d\lambda_k}{d\lambda_0}\,\frac{d\lambda_0}{d\phi}`,
  back through the ``k`` updates with :math:`\theta` fixed; the second-order terms
  (Hessian-vector products, which the paper writes out by finite differences) come from
  autograd's double backward.

``k = 0`` is the ELBO (of any pair). Warm-up scales every KL term, in the refinement steps as in the
final bound. The guide must expose its per-datapoint outputs: ``variational_params(x)`` (a
dict of tensors, one row per datapoint) and ``forward(x, params)`` (the zoo's Gaussian
encoders do), and be reparameterized. Global latents keep their plain term, counted ``B/N``
per batch; they are drawn from the guide and not refined.
"""

from __future__ import annotations

import torch
from torch import nn

from ..program import ConventionError, ProgramInfo, inspect_without_randomness, with_stopped_parameters
from ..sampling import global_share
from ..validation import nonnegative_int, positive_number
from .kl_control import elbo_terms

Params = dict[str, torch.Tensor]


def clip_per_datapoint(grads: Params, max_norm: float) -> Params:
    """Scale each datapoint's gradient (row ``i`` of every tensor together) to norm at most ``max_norm``."""
    squared = sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads.values())
    factor = (max_norm / (squared.sqrt() + 1e-12)).clamp(max=1.0)
    return {k: g * factor.reshape(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}


class SemiAmortizedELBO(nn.Module):
    """The negative SA-VAE objective above, summed over the batch: ``svi_steps`` = k refinement steps of size ``svi_lr``."""

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1, *, svi_steps: int = 0, svi_lr: float = 1.0,
                 max_grad_norm: float = 5.0):
        super().__init__()
        if svi_steps and not callable(getattr(guide, "variational_params", None)):
            raise ConventionError(
                f"semi-amortized training refines the encoder's per-datapoint output: {type(guide).__name__} needs "
                "variational_params(x) and forward(x, params) (as the zoo's Gaussian encoders have)"
            )
        self.model, self.guide = model, guide
        self.num_particles = int(num_particles)
        self.svi_steps = nonnegative_int(svi_steps, "svi_steps")
        self.svi_lr = positive_number(svi_lr, "svi_lr")
        self.max_grad_norm = positive_number(max_grad_norm, "max_grad_norm")
        self.latent_scale = 1.0  #: the KL warm-up weight
        self.dataset_size: int | None = None  #: N, set by the trainer: the global factor counts B/N per batch
        self.info: ProgramInfo | None = None

    def set_latent_scale(self, beta: float) -> None:
        self.latent_scale = float(beta)

    def _prepare(self, x: torch.Tensor) -> ProgramInfo:
        if self.info is None:
            info = inspect_without_randomness(self.model, self.guide, x)
            if info.enumerated or info.auxiliary or info.global_auxiliary:
                raise ValueError("semi-amortized training scores plain latent sites only; this pair has enumerated or auxiliary sites")
            self.info = info
        return self.info

    def bound(self, x: torch.Tensor, params: Params | None) -> torch.Tensor:
        """Per-datapoint :math:`\\hat{\\mathcal L}(x_i; \\lambda)` ``(B,)`` (warm-up weighted) with the guide's outputs replaced by
        ``params`` (None: the guide as it is)."""
        info = self._prepare(x)
        guide = self.guide if params is None else (lambda x_: self.guide(x_, params=params))
        recon, kl, _ = elbo_terms(self.model, guide, x, info, self.num_particles)
        return recon - self.latent_scale * sum(kl.values(), torch.zeros_like(recon))

    def refine(self, x: torch.Tensor, params: Params, *, create_graph: bool = False) -> Params:
        """``svi_steps`` clipped SGD steps on each datapoint's ELBO from ``params``, the model held fixed.

        With ``create_graph`` the result stays differentiable in ``params`` (for training the encoder
        through the refinement); otherwise the steps are taken on detached copies.
        """
        current = {k: (v if create_graph else v.detach().requires_grad_(True)) for k, v in params.items()}
        for _ in range(self.svi_steps):
            value = with_stopped_parameters([self.model], lambda p=current: self.bound(x, p).sum())
            grads = torch.autograd.grad(value, list(current.values()), create_graph=create_graph)
            grads = clip_per_datapoint(dict(zip(current, grads)), self.max_grad_norm)
            current = {k: current[k] + self.svi_lr * grads[k] for k in current}
            if not create_graph:
                current = {k: v.detach().requires_grad_(True) for k, v in current.items()}
        return current if create_graph else {k: v.detach() for k, v in current.items()}

    def _global_term(self, x: torch.Tensor) -> torch.Tensor:
        info = self._prepare(x)
        if not info.global_latents:
            return x.new_zeros(())
        _, _, global_ = elbo_terms(self.model, self.guide, x, info, self.num_particles)
        return self.latent_scale * global_share(len(x), self.dataset_size) * global_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.svi_steps == 0:  # the ELBO, for any pair
            return -(self.bound(x, None).sum() + self._global_term(x))
        params0 = self.guide.variational_params(x)
        # lambda_k carries the encoder's graph through the refinement but none of the model's (the steps stop it), so one
        # bound at lambda_k gives the model its partial derivative at fixed lambda_k and the encoder its total derivative
        refined = self.refine(x, params0, create_graph=torch.is_grad_enabled())
        return -(self.bound(x, refined).sum() + self._global_term(x))
