r"""The Pyro objectives as training losses: ``Trace_ELBO`` and friends on annealed programs, ``TraceGraph_ELBO``
with baselines, ``TraceEnum_ELBO`` for enumerated mixtures, ``RenyiELBO`` for comparison; KL warm-up for any program.

Each loss is an ``nn.Module`` whose forward is the differentiable loss (summed over the
batch), which Lightning and any torch optimizer can drive, with ``set_latent_scale(beta)``
for warm-up and ``dataset_size`` (N) for mini-batches.

* :class:`AnnealedLoss` — Pyro's :class:`~pyro.infer.elbo.ELBOModule` of ``Trace_ELBO`` or
  ``TraceMeanField_ELBO`` on programs whose latent sites are scaled by the warm-up weight:
  :math:`E_q[\log p(x|z)] - \beta\, KL(q(z|x) \| p(z))` (Bowman et al. 2016; Sønderby et al. 2016).
  Objective ``elbo`` with one particle and a fully reparameterized guide computes the same
  estimator eagerly instead (:class:`~inference.objectives.capture.ReparamELBO`): the same draws and
  value, without the reads of tensor values Pyro's ELBO makes every step (a wait for a GPU each);
* :class:`TraceGraphLoss` — ``TraceGraph_ELBO``: score-function gradients that use only
  downstream costs, with the baselines each guide site asks for through
  ``infer={"baseline": ...}`` (NVIL, Mnih & Gregor 2014);
* :class:`EnumLoss` — ``TraceEnum_ELBO`` sums the model's enumerated sites out, so the model
  maximizes the exact :math:`\log p(x)` (plus, for point estimates with priors, the model's
  ``log_prior()`` scaled by batch size over data size: MAP); the amortized guide of those sites
  is fitted at the same time to the exact (enumerated) ELBO with the model held fixed, i.e. it
  minimizes :math:`KL(q(z|x) \| p(z|x))` and does not bias the model;
* :class:`RenyiLoss` — Pyro's ``RenyiELBO(alpha=0)``, for comparison only. Pyro sums the log
  weights over every plate not shared by all sites: with only per-datapoint latents that is
  our per-datapoint IWAE bound, but a global latent makes it combine the whole batch per
  particle, :math:`\log \frac1K \sum_k \frac{p(\theta_k)}{q(\theta_k)} \prod_i w_{ik}`, a bound
  that tightens far more slowly with K (pyro issue 3104); and it gives no gradient to
  non-reparameterized guide sites (issue 3289).

**Mini-batches and global latents.** On a batch of B out of N datapoints the loss is the
batch's share of the full-data objective: the per-datapoint terms of the batch plus ``B/N``
times the global factor :math:`\log p(\theta) - \log q(\theta)` (:class:`GlobalShare` scales the
global sites by ``B/N``). Summed over the N/B batches of an epoch the global factor is counted
once. ``RenyiELBO`` combines the weights of the whole batch and has no such share: ``renyi``
refuses global latents on mini-batches.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro.infer
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn

from ..enumeration import configurations, exact_elbo
from ..program import DATA_PLATE, ProgramInfo, inspect_without_randomness
from ..sampling import fork_rng, global_share
from ..validation import positive_int
from .capture import CaptureError, ReparamELBO

PYRO_ELBOS = {"elbo": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO}
TRACEGRAPH, ENUM, RENYI = "tracegraph", "enum", "renyi"


def make_objective(name: str, num_particles: int = 1) -> pyro.infer.ELBO:
    """The objective registered as ``name`` with ``num_particles`` vectorized particles."""
    if name not in PYRO_ELBOS:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(PYRO_ELBOS)}")
    num_particles = positive_int(num_particles, "num_particles")
    if num_particles == 1:
        return PYRO_ELBOS[name]()
    return PYRO_ELBOS[name](num_particles=int(num_particles), vectorize_particles=True)


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


class GlobalShare(Messenger):
    r"""Multiply the log density of every latent site *outside* ``pyro.plate("data")`` by ``share`` = B/N.

    Applied to model and guide, a mini-batch of B out of N datapoints then counts the
    global factor :math:`\log p(\theta) - \log q(\theta)` B/N times, its share of the full-data objective.
    """

    def __init__(self, share: float):
        super().__init__()
        self.share = share

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and not any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            msg["scale"] = self.share * msg["scale"]


class Annealed(nn.Module):
    """A program whose latent sites are scaled by ``latent_scale`` and its global sites by ``global_share`` (no handler when both are 1)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.latent_scale = 1.0
        self.global_share = 1.0

    def forward(self, x: torch.Tensor):
        if self.latent_scale == 1.0 and self.global_share == 1.0:
            return self.program(x)
        with LatentScale(self.latent_scale), GlobalShare(self.global_share):
            return self.program(x)


def kl_weight(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)``; 1 when there is no warm-up."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class AnnealedLoss(nn.Module):
    """``ELBOModule`` of a Pyro objective on annealed copies of the programs."""

    def __init__(self, objective: pyro.infer.ELBO, model: nn.Module, guide: nn.Module, name: str = "elbo"):
        super().__init__()
        self.module = objective(Annealed(model), Annealed(guide))
        self.name = name
        self.dataset_size: int | None = None  #: N, set by the trainer: global sites count B/N per batch
        self._checks: FirstBatch | None = None

    def set_latent_scale(self, beta: float) -> None:
        self.module.model.latent_scale = self.module.guide.latent_scale = beta

    def set_entropy_scale(self, beta: float) -> None:
        r"""Scale only the guide's terms, :math:`E_q[\log p(x, z) - \beta \log q(z|x)]` (the warm-up of Cremer et al.'s code)."""
        if self.name == "meanfield" and beta != 1.0:
            raise ValueError("objective 'meanfield' uses analytic KL terms, which cannot scale the entropy alone; use 'elbo'")
        self.module.model.latent_scale, self.module.guide.latent_scale = 1.0, beta

    @property
    def estimator(self) -> str | None:
        """``"eager"`` (:class:`~inference.objectives.capture.ReparamELBO`), ``"pyro"`` (Pyro's ELBO), or None before the first batch."""
        if self._checks is None:
            return None
        return "pyro" if self.__dict__.get("_eager") is None else "eager"

    def _eager_for(self, x: torch.Tensor) -> ReparamELBO | None:
        """Trace_ELBO's single-sample estimator computed by :class:`ReparamELBO`, where it is the same estimator: objective
        ``elbo``, one particle, every guide site reparameterized, no auxiliary sites. Decided on the first batch, without
        drawing from the caller's random stream; kept out of the module's registry (its state is the programs')."""
        if "_eager" not in self.__dict__:
            eager = None
            k = self.module.elbo.num_particles
            if self.name == "elbo" and k == 1 and not (self._checks.score_local or self._checks.score_global):
                eager = ReparamELBO(self.module.model.program, self.module.guide.program)
                try:
                    with fork_rng(x.device), torch.no_grad():
                        eager.prepare(x)
                except CaptureError:
                    eager = None
            self.__dict__["_eager"] = eager
        eager = self.__dict__["_eager"]
        if eager is not None and eager.model_scale.device != x.device:
            eager.to(x.device)  # its scales follow the data (the programs move with this module)
        return eager

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._checks = scale_for_batch(self._checks, self.name, self.module.model, self.module.guide, x, self.dataset_size)
        eager = self._eager_for(x)
        if eager is not None:
            eager.set_scales(self.module.model.latent_scale, self.module.guide.latent_scale)
            eager.global_share.fill_(self.module.model.global_share)
            return eager(x)
        objective = self.module.elbo
        if objective.vectorize_particles and objective.max_plate_nesting == float("inf"):
            # tell Pyro the nesting instead of letting it guess (and log); Pyro counts the particle plate in max_plate_nesting when particles are vectorized
            objective.max_plate_nesting = self._checks.info.max_plate_nesting + 1
        return self.module(x)


_AVERAGE_PREFIX = "__baseline_avg_downstream_cost_"


class TraceGraphLoss(nn.Module):
    """``TraceGraph_ELBO``'s loss whose gradient is its surrogate (score-function terms and baseline fits).

    The returned value is the ELBO loss itself; its gradient is that of Pyro's
    surrogate loss, which adds the baselines' squared-error losses. Pyro keeps
    decaying-average baselines in the param store, shaped like the batch; a last,
    smaller batch gets averages of its own here instead of a shape error.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1):
        super().__init__()
        if num_particles != 1:
            raise ValueError(f"objective {TRACEGRAPH!r} runs one particle per datapoint (its baselines are per datapoint); got num_particles={num_particles}")
        self.objective = pyro.infer.TraceGraph_ELBO()
        self.model, self.guide = Annealed(model), Annealed(guide)
        self.dataset_size: int | None = None  #: N, set by the trainer: global sites count B/N per batch
        self._checks: FirstBatch | None = None
        self._averages: dict[tuple[str, int], torch.Tensor] = {}
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(_AVERAGE_PREFIX)]:
            del store[key]  # averages left by an earlier run in this process

    def set_latent_scale(self, beta: float) -> None:
        self.model.latent_scale = self.guide.latent_scale = beta

    def _swap_averages(self, n: int) -> None:
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(_AVERAGE_PREFIX)]:
            value = store[key]
            if value.shape[-1:] != (n,):
                self._averages[(key, value.shape[-1])] = value.detach()
                del store[key]
        for (key, size), value in self._averages.items():
            if size == n and key not in store.keys():
                store[key] = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._checks = scale_for_batch(self._checks, TRACEGRAPH, self.model, self.guide, x, self.dataset_size)
        self._swap_averages(len(x))
        elbo, surrogate = self.objective._loss_and_surrogate_loss(self.model, self.guide, (x,), {})
        return surrogate + (-torch.as_tensor(elbo, dtype=surrogate.dtype) - surrogate).detach()


class EnumLoss(nn.Module):
    """``-log p(x)`` by ``TraceEnum_ELBO`` (enumerated sites hidden from the guide) plus the guide's exact negative ELBO.

    The second term scores the model without a graph, so the model's gradient is
    that of the exact marginal likelihood alone (see the module docstring).
    """

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1):
        super().__init__()
        self.model, self.guide = model, guide
        self.objective = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=num_particles, vectorize_particles=num_particles > 1)
        self._enumerated: tuple[str, ...] | None = None
        self._layout = None  # (ProgramInfo, configuration grid), learned on the first batch
        self.dataset_size: int | None = None  #: set by the trainer; scales the model's log_prior per batch

    def set_latent_scale(self, beta: float) -> None:
        if beta != 1.0:
            raise ValueError(f"objective {ENUM!r} maximizes the exact log p(x); KL warm-up does not apply (set kl_warmup_epochs=0)")

    def _sites(self, x: torch.Tensor) -> tuple[str, ...]:
        if self._enumerated is None:
            with fork_rng(x.device):
                trace = poutine.trace(self.model).get_trace(x)
            self._enumerated = tuple(
                name for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"] and site["infer"].get("enumerate") == "parallel"
            )
            if not self._enumerated:
                raise ValueError(f"objective {ENUM!r} needs model sites marked infer={{'enumerate': 'parallel'}}; this model has none")
        return self._enumerated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sites = self._sites(x)
        marginal = self.objective.differentiable_loss(self.model, poutine.block(self.guide, hide=list(sites)), x)
        if self._layout is None:
            info = inspect_without_randomness(self.model, self.guide, x)
            self._layout = (info, configurations(self.model, self.guide, x, info))
        info, grid = self._layout
        guide_elbo = exact_elbo(self.model, self.guide, x, model_grad=False, info=info, grid=grid).sum()
        loss = marginal
        if hasattr(self.model, "log_prior"):  # MAP point estimates: the prior's share for this batch
            loss = loss - self.model.log_prior() * (len(x) / (self.dataset_size or len(x)))
        # the value is -log p(x) (- the prior's share); the guide's term only adds its gradient
        return loss - (guide_elbo - guide_elbo.detach()).to(loss.dtype)


class RenyiLoss(nn.Module):
    """Pyro's ``RenyiELBO(alpha=0)`` with ``num_particles`` vectorized particles, as a loss module.

    Pyro computes its gradient inside ``loss_and_grads`` by a backward pass of its own;
    this module runs that pass into fresh gradient buffers and returns a tensor whose value
    is Pyro's loss and whose gradient with respect to the model's and guide's parameters is
    Pyro's, so any torch optimizer (and Lightning) can drive it unchanged.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int = 1):
        super().__init__()
        num_particles = positive_int(num_particles, f"objective {RENYI!r}: num_particles")
        self.model, self.guide = model, guide
        # Pyro backpropagates only when the traces hold param sites: register the modules as Pyro does
        self._names = (f"renyi{id(self)}_model", f"renyi{id(self)}_guide")
        self.num_particles = int(num_particles)
        self.dataset_size: int | None = None  #: N, set by the trainer; global latents are refused on mini-batches
        self.objective: pyro.infer.RenyiELBO | None = None  # made on the first batch, when the plate nesting is known
        self._info = None

    def set_latent_scale(self, beta: float) -> None:
        if beta != 1.0:
            raise ValueError(f"objective {RENYI!r} is an importance-weighted bound; KL warm-up does not apply (set kl_warmup_epochs=0)")

    def _registered(self, program, which: int):
        def registered(x):
            if isinstance(program, nn.Module):
                pyro.module(self._names[which], program)
            return program(x)

        return registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.objective is None:
            self._info = first_batch_checks(self.model, self.guide, x, RENYI).info
            nesting = self._info.max_plate_nesting
            k = self.num_particles
            self.objective = pyro.infer.RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=k > 1, max_plate_nesting=nesting)
        if self._info.global_latents and self.dataset_size is not None and len(x) < self.dataset_size:
            raise ValueError(
                f"objective {RENYI!r} (Pyro's RenyiELBO) combines the weights of the whole batch, so a mini-batch of {len(x)} "
                f"out of {self.dataset_size} is not a share of the full-data bound of global latents {list(self._info.global_latents)}: "
                "use 'iwae' (per-datapoint weights, the global factor shared out per batch) or train on the full batch"
            )
        params = [p for p in self.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            loss = self.objective.loss_and_grads(self._registered(self.model, 0), self._registered(self.guide, 1), x)
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        surrogate = sum((p * g).sum() for p, g in zip(params, grads)) if params else torch.zeros(())
        return surrogate + (torch.as_tensor(loss, dtype=surrogate.dtype) - surrogate).detach()


class FirstBatch(NamedTuple):
    """What a Pyro-based loss learns about its programs on the first batch."""

    info: ProgramInfo
    score_local: tuple[str, ...]  #: per-datapoint guide sites without a reparameterized sampler
    score_global: tuple[str, ...]  #: global guide sites without one


def first_batch_checks(model, guide, x: torch.Tensor, name: str) -> FirstBatch:
    """Inspect the pair (without drawing from the caller's random stream); refuse model-only enumerated sites.

    Pyro's ``Trace_ELBO`` family samples a model site the guide lacks from its prior instead of
    summing it out; the per-datapoint objectives here sum it out.
    """
    info = inspect_without_randomness(model, guide, x)
    if info.enumerated:
        raise ValueError(
            f"objective {name!r} (a Pyro ELBO) would sample the model's enumerated sites {list(info.enumerated)} from their "
            "prior instead of summing them out: use 'iwae' (K = 1 is the ELBO with them summed out), 'iwae-dreg' or 'rws'"
        )
    with fork_rng(x.device), torch.no_grad():
        trace = poutine.trace(guide).get_trace(x)

    def not_reparameterized(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if not trace.nodes[n]["fn"].has_rsample)

    return FirstBatch(info, not_reparameterized(info.guide_local_sites), not_reparameterized(info.guide_global_sites))


def scale_for_batch(
    checks: FirstBatch | None, name: str, model: Annealed, guide: Annealed, x: torch.Tensor, dataset_size: int | None
) -> FirstBatch:
    """Set the batch's share B/N of the global sites on both annealed programs, after the first-batch checks and
    :func:`check_site_scales`; returns the checks (made on the first batch)."""
    if checks is None:
        checks = first_batch_checks(model.program, guide.program, x, name)
    share = global_share(len(x), dataset_size)
    check_site_scales(checks, name, share, (model.latent_scale, guide.latent_scale))
    model.global_share = guide.global_share = share
    return checks


def check_site_scales(checks: FirstBatch, name: str, share: float, latent_scales: tuple[float, float]) -> None:
    """Refuse scales that Pyro would also apply to score-function terms, where the result is not the intended gradient.

    Pyro multiplies a site's score-function term by the site's scale. For a
    non-reparameterized global site scaled by B/N, the batch's local terms downstream of
    it would enter its gradient B/N times too weakly; for non-reparameterized sites
    scaled by a warm-up weight, the score term of the likelihood would be scaled too.
    """
    if share != 1.0 and checks.score_global:
        raise ValueError(
            f"objective {name!r}: global guide site(s) {list(checks.score_global)} are not reparameterized, and on a "
            "mini-batch Pyro would scale their score-function gradient by B/N along with their factor: train on the "
            "full batch (batch_size = dataset size) or reparameterize them"
        )
    if latent_scales != (1.0, 1.0) and checks.score_local + checks.score_global:
        raise ValueError(
            f"objective {name!r}: warm-up would scale the score-function terms of the non-reparameterized guide sites "
            f"{list(checks.score_local + checks.score_global)} along with their densities, which is not the gradient of "
            "the warmed-up ELBO: set kl_warmup_epochs=0"
        )
