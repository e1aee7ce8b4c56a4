"""Training objectives by name: one table, :data:`OBJECTIVES`, from name to everything the toolkit knows about it.

Each entry is an :class:`Objective`: the factory of its loss module, a one-line
description, whether KL warm-up applies, the range of K (``num_particles``, samples
per datapoint per step) it accepts, and what it needs of the guide. The command-line
help, the docs' table, :func:`make_loss` and the training configuration read it.

The losses live in one module per family, as Pyro groups ``infer/mcmc/``:

* :mod:`inference.objectives.pyro_losses` — Pyro's ``Trace_ELBO``, ``TraceMeanField_ELBO``,
  ``TraceGraph_ELBO``, ``TraceEnum_ELBO`` and ``RenyiELBO`` as losses, with KL warm-up;
* :mod:`inference.objectives.capture` — ``Trace_ELBO``'s estimator replayed from a recorded graph;
* :mod:`inference.objectives.iwae` — the importance-weighted bound per datapoint (IWAE, STL, DReG, VIMCO);
* :mod:`inference.objectives.wake_sleep` — reweighted wake-sleep and wake-sleep;
* :mod:`inference.objectives.kl_control` — the β-VAE and free-bits ELBOs (remedies for posterior collapse);
* :mod:`inference.objectives.semi_amortized` — SA-VAE: the encoder's output refined by k SVI steps, trained through them.

An objective may take parameters (:data:`PARAMETERS`: ``beta``, ``free_bits``, and sa-vae's ``svi_steps``, ``svi_lr``,
``svi_momentum``, ``svi_clip``, ``svi_max_grad_norm``, ``svi_reduction``, ``svi_analytic_kl``, ``decoder_through_refinement``), named in its
entry's ``params``; they are :class:`inference.training.TrainOptions` fields, and an objective
refuses a parameter it does not take when it is set to other than its default.

Every loss takes ``(model, guide, num_particles)``, returns the negative objective summed
over the batch, and has ``set_latent_scale(beta)`` and ``dataset_size`` (N: on a batch of B
the global factor counts B/N).

**Adding an objective**: write its loss module, then add one :class:`Objective` line to
:data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from ..sampling import fork_rng
from ..validation import positive_int
from .capture import CapturedELBO
from .iwae import IWAELoss
from .kl_control import KLControlledELBO
from .pyro_losses import (
    Annealed,
    AnnealedLoss,
    EnumLoss,
    GlobalShare,
    LatentScale,
    RenyiLoss,
    TraceGraphLoss,
    kl_weight,
    make_objective,
)
from .semi_amortized import SemiAmortizedELBO
from .wake_sleep import RWS_VARIANTS, RWSLoss, WakeSleepLoss

#: Objective parameters and their defaults (the value at which each objective that takes one is the plain ELBO).
PARAMETERS: dict[str, float | str | bool] = {
    "beta": 1.0, "free_bits": 0.0, "svi_steps": 0, "svi_lr": 1.0,
    # sa-vae's inner optimizer; the defaults are Kim et al.'s code's (inference.objectives.semi_amortized)
    "svi_momentum": 0.5, "svi_clip": "batch", "svi_max_grad_norm": 5.0, "svi_reduction": "mean", "svi_analytic_kl": True, "decoder_through_refinement": True,
}

#: What an objective needs of the program pair.
NEEDS = {
    "any": "any guide",
    "reparameterized": "a reparameterized guide",
    "discrete": "non-reparameterized (discrete) guide sites; works with any",
    "enumerated": "model sites marked infer={'enumerate': 'parallel'}",
    "params": "a reparameterized guide with variational_params(x) and forward(x, params) (the zoo's Gaussian encoders)",
}


@dataclass(frozen=True)
class Objective:
    """One training objective: how to build its loss and what it accepts."""

    build: Callable[[nn.Module, nn.Module, int], nn.Module]  #: (model, guide, num_particles) -> loss module
    description: str  #: one line, for the CLI help and the docs' table
    warmup: bool  #: whether KL warm-up applies (an ELBO with a KL term); bounds without one train with warm-up 0
    min_particles: int = 1  #: the least K it accepts
    max_particles: int | None = None  #: the most K it accepts (None: no limit)
    needs: str = "any"  #: a key of :data:`NEEDS`
    why_particles: str = ""  #: the reason for the K range, said when a K outside it is refused
    params: tuple[str, ...] = ()  #: the parameters of :data:`PARAMETERS` its build takes as keyword arguments

    def check_params(self, name: str, params: dict[str, float]) -> dict[str, float]:
        """The parameters this objective takes (from ``params``); one it does not take, set to other than its default, is refused."""
        for key, value in params.items():
            if key not in PARAMETERS:
                raise ValueError(f"unknown objective parameter {key!r}; known: {', '.join(PARAMETERS)}")
            if key not in self.params and value != PARAMETERS[key]:
                raise ValueError(f"{key}={value} applies to objective(s) {', '.join(objectives_taking(key))}, not to {name!r}")
        return {key: params[key] for key in self.params if key in params}

    def check_pair(self, name: str, model: nn.Module, guide: nn.Module, x: torch.Tensor) -> None:
        """Refuse, with the reason, a pair this objective cannot train: a guide site without a reparameterized sampler
        for an objective that ``needs`` one, or a model without enumerated sites for ``enum``. Draws nothing from the
        caller's random stream."""
        if self.needs not in ("reparameterized", "enumerated", "params"):
            return
        if self.needs == "params" and not callable(getattr(guide, "variational_params", None)):
            raise ValueError(f"objective {name!r} refines the encoder's per-datapoint output; {type(guide).__name__} has no "
                             "variational_params(x) and forward(x, params)")
        with fork_rng(x.device), torch.no_grad():
            trace = prune_subsample_sites(poutine.trace(model if self.needs == "enumerated" else guide).get_trace(x))
        sites = [site for site in trace.nodes.values() if site["type"] == "sample" and not site["is_observed"]]
        if self.needs in ("reparameterized", "params"):
            score = [site["name"] for site in sites if not site["fn"].has_rsample]
            if score:
                raise ValueError(f"objective {name!r} needs a reparameterized guide; guide site(s) {score} are not (use 'iwae' or 'vimco')")
        elif not any(site["infer"].get("enumerate") == "parallel" for site in sites):
            raise ValueError(f"objective {name!r} needs model sites marked infer={{'enumerate': 'parallel'}}; this model has none")

    def check_particles(self, name: str, num_particles: int) -> int:
        """``num_particles`` if this objective accepts it, else a ``ValueError`` that says why not."""
        k = positive_int(num_particles, "num_particles")
        if k < self.min_particles or (self.max_particles is not None and k > self.max_particles):
            raise ValueError(f"objective {name!r} {self.why_particles}; got num_particles={k}")
        return k


def _pyro_elbo(name: str) -> Callable[[nn.Module, nn.Module, int], nn.Module]:
    return lambda model, guide, k: AnnealedLoss(make_objective(name, k), model, guide, name)


def _importance_weighted(name: str) -> Callable[[nn.Module, nn.Module, int], nn.Module]:
    return lambda model, guide, k: IWAELoss(model, guide, k, name)


def _rws(name: str) -> Callable[[nn.Module, nn.Module, int], nn.Module]:
    return lambda model, guide, k: RWSLoss(model, guide, k, insomnia=RWS_VARIANTS[name], name=name)


OBJECTIVES: dict[str, Objective] = {
    "elbo": Objective(_pyro_elbo("elbo"), "Pyro's Trace_ELBO: the Monte Carlo ELBO, pathwise gradients where reparameterized (Kingma & Welling 2014); "
                         "with K = 1 and a reparameterized guide computed eagerly, without Pyro's per-step reads", True),
    "meanfield": Objective(_pyro_elbo("meanfield"), "Pyro's TraceMeanField_ELBO: the ELBO with analytic KL terms where Pyro knows them", True),
    "captured-elbo": Objective(
        lambda model, guide, k: CapturedELBO(model, guide), "Trace_ELBO's estimator replayed from a recorded graph: same values, less Python per step (static programs)",
        True, max_particles=1, needs="reparameterized", why_particles="uses one sample per datapoint (the recorded graph holds one)",
    ),
    "tracegraph": Objective(
        lambda model, guide, k: TraceGraphLoss(model, guide), "Pyro's TraceGraph_ELBO: score-function gradients with the guide's baselines (NVIL, Mnih & Gregor 2014)",
        True, max_particles=1, needs="discrete", why_particles="runs one particle per datapoint (its baselines are per datapoint)",
    ),
    "enum": Objective(
        lambda model, guide, k: EnumLoss(model, guide, k), "Pyro's TraceEnum_ELBO: the exact log p(x) with enumerated sites summed out, the guide fitted to the exact ELBO",
        False, needs="enumerated",
    ),
    "iwae": Objective(_importance_weighted("iwae"), "the importance-weighted bound with K samples per datapoint (Burda et al. 2016)", False),
    "iwae-stl": Objective(_importance_weighted("iwae-stl"), "IWAE with the sticking-the-landing guide gradient (Roeder et al. 2017)", False, needs="reparameterized"),
    "iwae-dreg": Objective(_importance_weighted("iwae-dreg"), "IWAE with the doubly reparameterized guide gradient (Tucker et al. 2019)", False, needs="reparameterized"),
    "vimco": Objective(
        _importance_weighted("vimco"), "IWAE with leave-one-out baselines for score-function gradients (Mnih & Rezende 2016)", False,
        min_particles=2, needs="discrete", why_particles="needs K = num_particles >= 2 for its leave-one-out baselines",
    ),
    "rws": Objective(_rws("rws"), "reweighted wake-sleep, wake update of the guide (Bornschein & Bengio 2015)", False),
    "rws-sleep": Objective(_rws("rws-sleep"), "reweighted wake-sleep, sleep update of the guide", False),
    "rws-both": Objective(_rws("rws-both"), "reweighted wake-sleep, the average of wake and sleep guide updates", False),
    "wake-sleep": Objective(lambda model, guide, k: WakeSleepLoss(model, guide, k), "wake-sleep: ELBO gradient for the model, sleep update for the guide (Hinton et al. 1995)", False),
    "beta-vae": Objective(
        lambda model, guide, k, beta=1.0: KLControlledELBO(model, guide, k, beta=beta),
        "the ELBO with a fixed weight beta on its KL term (Higgins et al. 2017; --beta, 1 is the ELBO)", True,
        needs="reparameterized", params=("beta",),
    ),
    "free-bits": Objective(
        lambda model, guide, k, free_bits=0.0: KLControlledELBO(model, guide, k, free_bits=free_bits),
        "the ELBO with each latent site's batch-mean KL floored at lambda nats (Kingma et al. 2016; --free-bits, 0 is the ELBO)", True,
        needs="reparameterized", params=("free_bits",),
    ),
    "free-bits-dim": Objective(
        lambda model, guide, k, free_bits=0.0: KLControlledELBO(model, guide, k, free_bits=free_bits, per_dimension=True),
        "the ELBO with each latent unit's batch-mean KL floored at lambda nats (free bits per dimension; --free-bits, 0 is the ELBO)",
        True, needs="reparameterized", params=("free_bits",),
    ),
    "sa-vae": Objective(
        lambda model, guide, k, svi_steps=0, svi_lr=1.0, svi_momentum=0.5, svi_clip="batch", svi_max_grad_norm=5.0, svi_reduction="mean",
        svi_analytic_kl=True, decoder_through_refinement=True: SemiAmortizedELBO(
            model, guide, k, svi_steps=svi_steps, svi_lr=svi_lr, svi_momentum=svi_momentum, clip=svi_clip, max_grad_norm=svi_max_grad_norm,
            reduction=svi_reduction, analytic_kl=svi_analytic_kl, decoder_through_refinement=decoder_through_refinement),
        "semi-amortized: the encoder's output refined by k SGD steps with momentum on the batch's ELBO, the encoder and decoder "
        "trained through them (Kim et al. 2018; --svi-steps k, 0 is the ELBO; --svi-lr, --svi-momentum, --svi-clip, --svi-max-grad-norm, --svi-reduction, "
        "--svi-analytic-kl, --decoder-through-refinement)", True, needs="params",
        params=("svi_steps", "svi_lr", "svi_momentum", "svi_clip", "svi_max_grad_norm", "svi_reduction", "svi_analytic_kl", "decoder_through_refinement"),
    ),
    "renyi": Objective(
        lambda model, guide, k: RenyiLoss(model, guide, k), "Pyro's RenyiELBO(alpha=0), for comparison: whole-batch weights with global latents (pyro 3104)", False,
    ),
}

#: The registered names, in table order.
TRAINING_OBJECTIVES = tuple(OBJECTIVES)


def objectives_taking(param: str) -> list[str]:
    """The names of the objectives that take the parameter ``param`` (a key of :data:`PARAMETERS`)."""
    return [name for name, entry in OBJECTIVES.items() if param in entry.params]


def get_objective(name: str) -> Objective:
    """The table entry of ``name``; an unknown name is refused with the list of known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def make_loss(name: str, model: nn.Module, guide: nn.Module, num_particles: int = 1, **params: float) -> nn.Module:
    """The training loss of objective ``name`` with K = ``num_particles`` and its ``params`` (e.g. ``beta=4``): the negative
    objective summed over the batch."""
    entry = get_objective(name)
    return entry.build(model, guide, entry.check_particles(name, num_particles), **entry.check_params(name, params))


def objectives_help() -> str:
    """The objective names with their one-line descriptions, for command-line help."""
    return "; ".join(f"{name}: {entry.description}" for name, entry in OBJECTIVES.items())


def objectives_table() -> str:
    """The objective table in Markdown (the table in docs/training.md is this)."""
    rows = ["| objective | what | KL warm-up | K | needs |", "|---|---|---|---|---|"]
    for name, o in OBJECTIVES.items():
        k = f"{o.min_particles}" + ("" if o.max_particles == o.min_particles else f"–{o.max_particles or '∞'}")
        rows.append(f"| `{name}` | {o.description} | {'yes' if o.warmup else 'no'} | {k} | {NEEDS[o.needs]} |")
    return "\n".join(rows)


__all__ = [
    "NEEDS", "OBJECTIVES", "PARAMETERS", "TRAINING_OBJECTIVES", "Annealed", "AnnealedLoss", "CapturedELBO", "EnumLoss", "GlobalShare",
    "IWAELoss", "KLControlledELBO", "LatentScale", "Objective", "RWSLoss", "RenyiLoss", "SemiAmortizedELBO", "TraceGraphLoss", "WakeSleepLoss", "get_objective",
    "kl_weight", "make_loss", "make_objective", "objectives_help", "objectives_table", "objectives_taking",
]
