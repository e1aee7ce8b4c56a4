"""The model/guide convention, checked, and the per-datapoint scoring of programs.

**The convention.** ``model(x)`` and ``guide(x)`` take a batch ``x`` whose first
dimension indexes datapoints. Every per-datapoint latent site, and every
observed site, is sampled inside ``pyro.plate("data", len(x))`` (a vectorized
plate, no subsampling); global latents, if any, are sampled outside it. The
programs must broadcast over extra leading batch dimensions (the estimators
add one for samples), as any program used with ``vectorize_particles=True``
must.

:func:`inspect_program` checks a pair against the convention and reports which
site is what; :func:`log_weights` scores ``S`` vectorized samples and returns
per-datapoint log importance weights

.. math:: \\log w_{s,i} = \\log p(x_i, z_{s,i} \\mid \\theta_s) - \\log q(z_{s,i} \\mid x_i, \\theta_s),

where :math:`\\theta_s \\sim q(\\theta)` are the global latents of sample ``s``.
The global factor :math:`p(\\theta)/q(\\theta)` belongs to no single datapoint and is
left out, so every per-datapoint quantity is conditional on ``theta ~ q``. This
is deliberately *not* Pyro's ``RenyiELBO``/``Importance``, which combine the
weights of the whole trace (pyro-ppl issues 3104, 3289).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import prune_subsample_sites

DATA_PLATE = "data"
SAMPLE_PLATE = "_num_samples"

Program = Callable[[torch.Tensor], object]


class ConventionError(ValueError):
    """A model/guide pair does not follow the package convention."""


class ProgramInfo(NamedTuple):
    """What :func:`inspect_program` learned about a model/guide pair."""

    data_dim: int  #: the (negative) tensor dim of ``pyro.plate("data")``
    max_plate_nesting: int  #: number of plate dims the programs use
    local_latents: tuple[str, ...]  #: latent sites inside the data plate
    global_latents: tuple[str, ...]  #: latent sites outside the data plate
    observed: tuple[str, ...]  #: observed sites (all inside the data plate)
    event_shapes: dict[str, tuple[int, ...]]  #: per-datapoint event shape of each local latent

    @property
    def sample_dim(self) -> int:
        """The tensor dim the estimators use for vectorized samples."""
        return -(self.max_plate_nesting + 1)


def check_data(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Refuse data that no estimate can be trusted on: not a tensor, empty, NaN or inf."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"{name} must hold at least one datapoint along dim 0, got shape {tuple(x.shape)}")
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or infinite value(s); the first is {x[first].item()} at index {first}"
            )
    return x


def trace_pair(model: Program, guide: Program, x: torch.Tensor) -> tuple[poutine.Trace, poutine.Trace]:
    """Run the guide, then the model replayed against it; return (model_trace, guide_trace)."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _sample_sites(trace: poutine.Trace) -> dict[str, dict]:
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}


def _data_frame(site: dict):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


def _check_support(name: str, site: dict) -> None:
    support = site["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    value = site["value"]
    ok = support.check(value)
    if not bool(ok.all()):
        first = tuple(int(i) for i in (~ok).nonzero()[0])
        bad = value[first] if value.dim() else value
        fn_name = type(site["fn"].base_dist if hasattr(site["fn"], "base_dist") else site["fn"]).__name__
        hint = ""
        if "Bernoulli" in fn_name:
            hint = " A Bernoulli likelihood needs binary data: binarize it (dynamic, static or threshold) or use a Gaussian likelihood."
        raise ValueError(
            f"observed site {name!r} has a value outside the support of its {fn_name} distribution: "
            f"{bad.item() if bad.numel() == 1 else bad} at index {first}.{hint}"
        )


def inspect_program(model: Program, guide: Program, x: torch.Tensor) -> ProgramInfo:
    """Check ``(model, guide)`` against the convention on ``x`` and describe its sites.

    Runs both programs on ``x``, and the model on a batch of another size, so that a latent
    whose shape grows with the batch but sits outside the data plate is caught.
    Observed values are checked against their distribution's support (e.g.
    non-binary data under a Bernoulli likelihood). Raises :class:`ConventionError`
    naming the offending site.
    """
    check_data(x)
    n = len(x)
    model_trace, guide_trace = trace_pair(model, guide, x)
    x_other = x[:-1] if n > 1 else torch.cat([x, x])
    with torch.no_grad():  # the model alone, latents from the prior: only shapes matter here
        model_other = prune_subsample_sites(poutine.trace(model).get_trace(x_other))

    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    frames = [f for s in model_sites.values() for f in s["cond_indep_stack"] if f.name == DATA_PLATE]
    if not frames:
        raise ConventionError(
            f"the model has no pyro.plate({DATA_PLATE!r}, len(x)): per-datapoint sites must be sampled inside it"
        )
    data_frame = frames[0]
    if data_frame.dim is None:
        raise ConventionError(f"pyro.plate({DATA_PLATE!r}) must be vectorized (used as a context manager with a dim), not sequential")
    if data_frame.size != n:
        raise ConventionError(
            f"pyro.plate({DATA_PLATE!r}) has size {data_frame.size} but len(x) = {n}; "
            "the convention is pyro.plate('data', len(x)) without subsampling"
        )

    local, global_, observed = [], [], []
    for name, site in {**model_sites, **guide_sites}.items():
        _check_unscaled(name, site)
    for name, site in model_sites.items():
        inside = _data_frame(site) is not None
        if site["is_observed"]:
            if not inside:
                raise ConventionError(f"observed site {name!r} is outside pyro.plate({DATA_PLATE!r}, len(x))")
            observed.append(name)
            _check_support(name, site)
        elif inside:
            local.append(name)
        else:
            other = model_other.nodes.get(name)
            if other is not None and tuple(other["value"].shape) != tuple(site["value"].shape):
                raise ConventionError(
                    f"latent site {name!r} has shape {tuple(site['value'].shape)} with len(x) = {n} and "
                    f"{tuple(other['value'].shape)} with len(x) = {len(x_other)}: it depends on the batch but is "
                    f"outside pyro.plate({DATA_PLATE!r}, len(x)). Sample per-datapoint latents inside the data plate."
                )
            global_.append(name)
    for name in local + global_:
        if name not in guide_sites:
            raise ConventionError(f"model latent site {name!r} has no counterpart in the guide")
        if (_data_frame(guide_sites[name]) is not None) != (name in local):
            where = "inside" if name in local else "outside"
            raise ConventionError(f"site {name!r} is {where} the data plate in the model but not in the guide")
    for name in guide_sites:
        if name not in model_sites:
            raise ConventionError(f"guide site {name!r} does not appear in the model")
        if model_sites[name]["is_observed"]:
            raise ConventionError(f"guide site {name!r} is observed in the model")

    dims = [-f.dim for t in (model_trace, guide_trace) for s in _sample_sites(t).values() for f in s["cond_indep_stack"] if f.vectorized]
    event_shapes = {name: tuple(guide_sites[name]["fn"].event_shape) for name in local}
    return ProgramInfo(data_frame.dim, max(dims), tuple(local), tuple(global_), tuple(observed), event_shapes)


def sample_batch_shape(num_samples: int, num_points: int, info: ProgramInfo) -> tuple[int, ...]:
    """The batch shape of a per-datapoint site under the sample plate: ``num_samples`` at the sample dim,
    ``num_points`` at the data dim, 1 at every other plate dim."""
    batch = [1] * (info.max_plate_nesting + 1)
    batch[0] = num_samples
    batch[info.max_plate_nesting + 1 + info.data_dim] = num_points
    return tuple(batch)


def inspect_without_randomness(model: Program, guide: Program, x: torch.Tensor) -> ProgramInfo:
    """:func:`inspect_program` under a forked random generator: the caller's random stream is left as it was.

    Losses that inspect their programs lazily, on the first batch, use it so that a run
    resumed from a checkpoint draws the same random numbers as the uninterrupted run.
    """
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        return inspect_program(model, guide, x)


def _check_unscaled(name: str, site: dict) -> None:
    scale = site["scale"]
    if not (isinstance(scale, (int, float)) and scale == 1.0):
        shown = f"{float(scale):.4g}" if isinstance(scale, (int, float)) or scale.numel() == 1 else "a tensor"
        raise ConventionError(
            f"site {name!r} is scaled by {shown} (poutine.scale or a subsampled plate); "
            "per-datapoint estimators need the unscaled program: use pyro.plate('data', len(x))"
        )


def per_datapoint_log_prob(name: str, site: dict, info: ProgramInfo) -> torch.Tensor:
    """``log p(site)`` summed within each datapoint: shape ``(S or 1, N or 1)``.

    Plates nested inside the data plate are summed; masks are honoured. A scaled
    site (``poutine.scale`` or a subsampled plate) has no per-datapoint meaning
    and is refused.
    """
    _check_unscaled(name, site)
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None and site["mask"] is not True:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    n_dims = info.max_plate_nesting + 1
    if log_prob.dim() > n_dims:
        raise ConventionError(
            f"site {name!r} has batch shape {tuple(log_prob.shape)}, more dims than its plates: "
            "declare per-datapoint dims as event dims with .to_event()"
        )
    log_prob = log_prob.reshape((1,) * (n_dims - log_prob.dim()) + tuple(log_prob.shape))
    keep = (0, n_dims + info.data_dim)
    other = [d for d in range(n_dims) if d not in keep]
    return log_prob.sum(other) if other else log_prob


def sampled_log_densities(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int, info: ProgramInfo
) -> tuple[torch.Tensor, torch.Tensor, poutine.Trace]:
    """:func:`log_densities` and the guide trace the samples came from (their values and distributions)."""
    with pyro.plate(SAMPLE_PLATE, num_samples, dim=info.sample_dim):
        model_trace, guide_trace = trace_pair(model, guide, x)
    log_p = torch.zeros(num_samples, len(x), dtype=torch.float64, device=x.device)
    log_q = torch.zeros(num_samples, len(x), dtype=torch.float64, device=x.device)
    for name in info.local_latents + info.observed:
        log_p = log_p + per_datapoint_log_prob(name, model_trace.nodes[name], info)
    for name in info.local_latents:
        log_q = log_q + per_datapoint_log_prob(name, guide_trace.nodes[name], info)
    return log_p, log_q, guide_trace


def log_densities(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int, info: ProgramInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x_i, z_{s,i}), log q(z_{s,i} | x_i))`` of ``num_samples`` vectorized guide samples.

    Each is a float64 tensor of shape ``(num_samples, len(x))``, differentiable with respect
    to model and guide parameters (pathwise through reparameterized sites; ``log q`` also
    through the distribution's parameters, as score-function estimators need).
    """
    log_p, log_q, _ = sampled_log_densities(model, guide, x, num_samples, info)
    return log_p, log_q


def log_weights(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int, info: ProgramInfo
) -> torch.Tensor:
    """Per-datapoint log importance weights of ``num_samples`` vectorized guide samples.

    Returns a float64 tensor of shape ``(num_samples, len(x))``; differentiable
    with respect to model and guide parameters (reparameterized sites).
    """
    log_p, log_q = log_densities(model, guide, x, num_samples, info)
    return log_p - log_q
