r"""Semi-amortized variational inference: the encoder's output refined by ``k`` SVI steps, trained through the refinement.

Kim, Wiseman, Miller, Sontag & Rush (2018), *Semi-Amortized Variational Autoencoders* (ICML),
Algorithm 1, with the inner optimizer of their code (``OptimN2N``: SGD with momentum, gradients
clipped per tensor over the batch). The encoder gives each datapoint's variational parameters
:math:`\lambda_0 = \mathrm{enc}_\phi(x)`; ``k`` steps of stochastic gradient *ascent* with momentum
:math:`\mu` on the inner objective refine them,

.. math:: g_t = \mathrm{clip}\big(\nabla_\lambda \hat{\mathcal L}_{\mathrm{in}}(x; \lambda_t, \theta)\big), \qquad
          v_{t+1} = \mu\, v_t + g_t, \qquad \lambda_{t+1} = \lambda_t + \alpha\, v_{t+1}, \qquad v_0 = 0,\ t = 0 \ldots k-1,

one fresh reparameterized draw per step (``num_particles`` draws averaged). The inner objective
:math:`\hat{\mathcal L}_{\mathrm{in}}` is the batch's ELBO divided by ``divisor`` (``reduction="mean"``, as the
reference code's batch-averaged loss: its step size 1 moves each datapoint by 1/B of its own
gradient) or summed (``"sum"``: the step size applies to each datapoint's own ELBO). ``clip``:

* ``"batch"`` (the reference): each parameter tensor's gradient (the means', the log-scales') is
  scaled as a whole, over the batch, to norm at most ``max_grad_norm`` (what ``clip_grad_norm_``
  does to one tensor);
* ``"datapoint"``: each datapoint's gradient (its row of every tensor together) to norm at most ``max_grad_norm``.

Training ascends :math:`\mathcal L(x; \lambda_k, \theta)` with

* the model's parameters :math:`\theta` along the total derivative
  :math:`\frac{d}{d\theta}\mathcal L(x; \lambda_k(\theta, \phi), \theta)`, through the ``k`` updates
  (``decoder_through_refinement=True``, the reference, which writes the Hessian-vector products
  out by finite differences; here autograd's double backward gives them exactly), or the partial
  derivative at fixed :math:`\lambda_k` (``False``: the paper's Algorithm 1 as written);
* the encoder's parameters :math:`\phi` along the total derivative
  :math:`\frac{d\mathcal L}{d\lambda_k}\,\frac{d\lambda_k}{d\lambda_0}\,\frac{d\lambda_0}{d\phi}`, back through the ``k`` updates.

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
from ..validation import nonnegative_int, nonnegative_number, positive_int, positive_number
from .kl_control import elbo_terms

Params = dict[str, torch.Tensor]


#: How the refinement's gradients are clipped: per tensor over the batch (the reference code), or per datapoint.
CLIPS = ("batch", "datapoint")
#: The refinement's inner objective: the batch's ELBO over ``divisor`` (the reference code's batch mean), or summed.
REDUCTIONS = ("mean", "sum")


def clip_per_datapoint(grads: Params, max_norm: float) -> Params:
    """Scale each datapoint's gradient (row ``i`` of every tensor together) to norm at most ``max_norm``."""
    squared = sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads.values())
    factor = (max_norm / (squared.sqrt() + 1e-12)).clamp(max=1.0)
    return {k: g * factor.reshape(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}


def clip_per_tensor(grads: Params, max_norm: float) -> Params:
    """Scale each tensor (all its rows together: the whole batch) to norm at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does to one tensor, but out of place (differentiable)."""
    return {k: g * (max_norm / (g.norm() + 1e-6)).clamp(max=1.0) for k, g in grads.items()}


def check_inner_optimizer(momentum: float, clip: str, reduction: str, analytic_kl: bool, decoder_through_refinement: bool) -> float:
    """Refuse, by name and value, a bad option of the refinement's optimizer; returns the momentum as a float."""
    momentum = nonnegative_number(momentum, "svi_momentum")
    if momentum >= 1:
        raise ValueError(f"svi_momentum must be in [0, 1), got {momentum!r}")
    if clip not in CLIPS:
        raise ValueError(f"unknown svi_clip {clip!r}; choose from {', '.join(CLIPS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown svi_reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    for name, flag in (("svi_analytic_kl", analytic_kl), ("decoder_through_refinement", decoder_through_refinement)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    return momentum


class SemiAmortizedELBO(nn.Module):
    """The negative SA-VAE objective above, summed over the batch.

    ``svi_steps`` = k refinement steps of size ``svi_lr`` with momentum ``svi_momentum``, gradients
    clipped (``clip``: ``"batch"`` or ``"datapoint"``) to ``max_grad_norm``, the inner objective
    ``reduction`` (``"mean"`` or ``"sum"``); ``decoder_through_refinement``: whether the model's
    gradient includes the path through :math:`\\lambda_k`; ``analytic_kl``: each local site's KL in closed form
    where torch has one (the reference's Gaussian KL; else, and with ``False``, the sampled
    :math:`\\log q - \\log p`), in the steps and the final bound. The defaults are Kim et al.'s code's, but
    for ``svi_steps`` (0, the ELBO) and ``num_particles``.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1, *, svi_steps: int = 0, svi_lr: float = 1.0,
                 max_grad_norm: float = 5.0, svi_momentum: float = 0.5, clip: str = "batch", reduction: str = "mean",
                 decoder_through_refinement: bool = True, analytic_kl: bool = True):
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
        self.svi_momentum = check_inner_optimizer(svi_momentum, clip, reduction, analytic_kl, decoder_through_refinement)
        self.clip, self.reduction, self.decoder_through_refinement = clip, reduction, decoder_through_refinement
        self.analytic_kl = analytic_kl
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
        recon, kl, _ = elbo_terms(self.model, guide, x, info, self.num_particles, analytic_kl=self.analytic_kl)
        return recon - self.latent_scale * sum(kl.values(), torch.zeros_like(recon))

    def clipped(self, grads: Params) -> Params:
        """``grads`` clipped as ``clip`` says, to ``max_grad_norm``."""
        return (clip_per_tensor if self.clip == "batch" else clip_per_datapoint)(grads, self.max_grad_norm)

    def refine(self, x: torch.Tensor, params: Params, *, create_graph: bool = False, divisor: int | None = None) -> Params:
        """``svi_steps`` clipped momentum SGD steps on the inner objective from ``params`` (the formula above).

        With ``create_graph`` the result stays differentiable in ``params`` (for training the encoder
        through the refinement) and, with ``decoder_through_refinement``, in the model's parameters;
        otherwise the steps are taken on detached copies with the model held fixed. ``divisor``: what
        the ``"mean"`` reduction divides the batch's ELBO by (default ``len(x)``; evaluating held-out
        points in other batch sizes than training, pass the training batch size to take the same
        per-datapoint steps).
        """
        scale = 1.0 if self.reduction == "sum" else 1.0 / positive_int(len(x) if divisor is None else divisor, "divisor")
        through_model = create_graph and self.decoder_through_refinement
        current = {k: (v if create_graph else v.detach().requires_grad_(True)) for k, v in params.items()}
        velocity = {k: torch.zeros_like(v.detach()) for k, v in current.items()}
        for _ in range(self.svi_steps):
            def inner(p: Params = current) -> torch.Tensor:
                return scale * self.bound(x, p).sum()

            value = inner() if through_model else with_stopped_parameters([self.model], inner)
            grads = torch.autograd.grad(value, list(current.values()), create_graph=create_graph)
            grads = self.clipped(dict(zip(current, grads)))
            velocity = {k: self.svi_momentum * velocity[k] + grads[k] for k in current}
            current = {k: current[k] + self.svi_lr * velocity[k] for k in current}
            if not create_graph:
                velocity = {k: v.detach() for k, v in velocity.items()}
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
        # lambda_k carries the encoder's graph through the refinement, and the model's too with decoder_through_refinement
        # (without, the steps stop it): one bound at lambda_k gives the encoder its total derivative, and the model its
        # total derivative (or its partial derivative at fixed lambda_k)
        refined = self.refine(x, params0, create_graph=torch.is_grad_enabled())
        return -(self.bound(x, refined).sum() + self._global_term(x))
