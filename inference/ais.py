r"""Annealed importance sampling (AIS) of :math:`\log p(x)`, per datapoint, for any pair following the convention.

Neal (2001): with an initial distribution :math:`q_0(z)` (the prior :math:`p(z)` or the
amortized guide :math:`q(z|x)`) and a schedule :math:`0 = \beta_0 < \dots < \beta_T = 1`,
the intermediate targets are the geometric path

.. math:: f_t(z) = q_0(z)^{1-\beta_t}\, p(x, z)^{\beta_t} = q_0(z) \exp\big(\beta_t\, d(z)\big),
          \qquad d(z) = \log p(x, z) - \log q_0(z).

A chain draws :math:`z_0 \sim q_0`, then for :math:`t = 1..T` adds
:math:`(\beta_t - \beta_{t-1})\, d(z_{t-1})` to its log weight and moves :math:`z` by an
HMC transition that leaves :math:`f_t` invariant. Every weight is an unbiased
estimate of :math:`p(x)`; over ``C`` chains
:math:`\log \hat p(x) = \log \frac1C \sum_c w_c`, a stochastic lower bound.

HMC (:func:`hmc_transition`): ``L`` leapfrog steps with unit mass and a
Metropolis correction. Step sizes are adapted toward a target acceptance (0.65) by a
**pilot**: ``pilot_chains`` further chains per datapoint anneal alongside the weighted
ones, in the same tensor, and after each transition the datapoint's step size is
multiplied by ``1 + adapt_rate`` when the pilot chains' mean acceptance probability
exceeds the target, by ``1 - adapt_rate`` otherwise, clamped to ``[min_step_size,
max_step_size]`` (the rule of Wu, Burda, Salakhutdinov & Grosse 2017). The weighted
chains use those step sizes but never drive them: given the pilot, every transition
is a fixed kernel that leaves its target invariant, so every weight is exactly
unbiased for :math:`p(x)`, as with step sizes adapted in a separate pilot run and
frozen. Adapting from the weighted chains' own acceptances instead makes the kernels
depend on the chains' states and biases :math:`E[w]` upward, by O(1/chains) (measured:
+6.6% with one chain per datapoint and an aggressive rate, 13 standard errors; a test
checks that the pilot removes it). The pilot costs ``pilot_chains / num_chains`` more
arithmetic; ``adapt_rate = 0`` runs none. BDMC's reverse chains reuse the forward
run's step sizes, frozen.

Chains and datapoints are one tensor ``(C, N, D)`` (all local latent sites
flattened into ``D``), processed in memory-bounded blocks of datapoints.
Schedules: ``linear`` and ``sigmoid`` (Grosse, Ghahramani & Adams 2015:
:math:`\tilde\beta_t = \sigma(\delta(2t/T - 1))`, rescaled to run from 0 to 1).
Reference settings (Cremer et al. 2018; Wu et al. 2017): 100 chains, 10,000
intermediate distributions, 10 leapfrog steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from tqdm.auto import tqdm

from .estimators import Estimate, log_mean_exp_estimate
from .memory import chunk_size_for, chunks
from .nonfinite import refuse_non_finite
from .program import (
    SAMPLE_PLATE,
    Program,
    ProgramInfo,
    check_data,
    inspect_program,
    sample_batch_shape,
    score_configurations,
    score_site_groups,
)
from .streams import PointStream, draw_normal, draw_uniform, keyed, point_stream
from .validation import positive_int

SCHEDULES = ("linear", "sigmoid")
AIS_INITS = ("prior", "guide")


def annealing_schedule(name: str, num_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """``num_steps + 1`` inverse temperatures from 0 to 1 (float64): ``linear`` or ``sigmoid``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown annealing schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"AIS needs at least 1 intermediate distribution, got num_steps={num_steps!r}")
    t = torch.linspace(0.0, 1.0, int(num_steps) + 1, dtype=torch.float64)
    if name == "linear":
        return t
    if not sharpness > 0:
        raise ValueError(f"the sigmoid schedule's sharpness must be positive, got {sharpness}")
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def check_schedule(betas: torch.Tensor) -> torch.Tensor:
    """Refuse a schedule that does not run monotonically from 0 to 1."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) < 2:
        raise ValueError(f"an annealing schedule is a 1-D sequence of at least 2 inverse temperatures, got shape {tuple(betas.shape)}")
    if not torch.isfinite(betas).all():
        raise ValueError("the annealing schedule contains NaN or infinite values")
    if betas[0] != 0 or betas[-1] != 1:
        raise ValueError(f"an annealing schedule must start at 0 and end at 1, got {betas[0].item()} ... {betas[-1].item()}")
    if (betas[1:] < betas[:-1]).any():
        raise ValueError("an annealing schedule must be non-decreasing")
    return betas


@dataclass(frozen=True)
class HMCOptions:
    """HMC transitions of AIS: leapfrog steps, initial step size and its adaptation toward a target acceptance."""

    leapfrog_steps: int = 10
    step_size: float = 0.05
    target_accept: float = 0.65
    adapt_rate: float = 0.02
    min_step_size: float = 1e-4
    max_step_size: float = 0.5
    pilot_chains: int = 10  #: chains per datapoint of the pilot run that adapts the step sizes

    def __post_init__(self) -> None:
        positive_int(self.leapfrog_steps, "leapfrog_steps")
        if not (0 < self.min_step_size <= self.step_size <= self.max_step_size):
            raise ValueError(
                f"the HMC step size must be positive and within [min_step_size, max_step_size]: got step_size={self.step_size}, "
                f"min_step_size={self.min_step_size}, max_step_size={self.max_step_size}"
            )
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must lie in (0, 1), got {self.target_accept}")
        if not 0 <= self.adapt_rate < 1:
            raise ValueError(f"adapt_rate must lie in [0, 1), got {self.adapt_rate}")
        positive_int(self.pilot_chains, "pilot_chains")


#: ``log_density(z) -> (log f(z), extra)`` with ``log f`` of shape ``z.shape[:-1]``; ``extra`` is carried along.
LogDensity = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def value_and_grad(log_density: LogDensity, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log f(z), extra, d log f / dz)``, every batch element differentiated independently."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_f, extra = log_density(z)
        (grad,) = torch.autograd.grad(log_f.sum(), z)
    return log_f.detach(), extra.detach(), grad


class HMCState(NamedTuple):
    z: torch.Tensor  #: (..., D) positions
    log_f: torch.Tensor  #: (...) log density at z
    extra: torch.Tensor  #: (...) what the density function carries along (AIS: d(z))
    grad: torch.Tensor  #: (..., D) gradient of log f at z


class Noise(NamedTuple):
    """Keyed noise for the HMC transitions of AIS chains ``(chains, N, D)``: the datapoints' stream and a name."""

    stream: PointStream
    name: str

    def normal(self, step: int, like: torch.Tensor) -> torch.Tensor:
        return draw_normal(self.stream, f"{self.name}:momentum", step, like, data_axis=1, sample_axis=0)

    def uniform(self, step: int, like: torch.Tensor) -> torch.Tensor:
        return draw_uniform(self.stream, f"{self.name}:accept", step, like, data_axis=1, sample_axis=0)


def _keyed_starts(noise: Noise | None, what: str):
    """The chains' starting draws keyed by ``noise`` (as ``what``); torch's generator without it."""
    return keyed(noise.stream, f"{noise.name}:{what}") if noise is not None else keyed(None, what)


def hmc_transition(
    state: HMCState, log_density: LogDensity, step_size: torch.Tensor, num_leapfrog: int, noise: Noise | None = None, step: int = 0
) -> tuple[HMCState, torch.Tensor]:
    """One HMC transition per batch element (unit mass, ``num_leapfrog`` steps, Metropolis correction).

    ``step_size`` has the batch shape (one per chain). Returns the new state and the
    acceptance probability of each element; a proposal with a non-finite density is rejected.
    The momentum and the acceptance draw come from torch's generator, or from ``noise`` keyed by ``step``.
    """
    eps = step_size.unsqueeze(-1).to(state.z.dtype)
    momentum = torch.randn_like(state.z) if noise is None else noise.normal(step, state.z)
    z, grad = state.z, state.grad
    p = momentum + 0.5 * eps * grad
    for leap in range(num_leapfrog):  # not `step`: that keys this transition's draws
        z = z + eps * p
        log_f, extra, grad = value_and_grad(log_density, z)
        if leap < num_leapfrog - 1:
            p = p + eps * grad
    p = p + 0.5 * eps * grad
    kinetic0 = 0.5 * momentum.double().pow(2).sum(-1)
    kinetic1 = 0.5 * p.double().pow(2).sum(-1)
    log_accept = (log_f.double() - kinetic1) - (state.log_f.double() - kinetic0)
    log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
    accept_prob = log_accept.clamp(max=0).exp()
    u = torch.rand_like(accept_prob) if noise is None else noise.uniform(step, accept_prob)
    accept = u.log() < log_accept
    keep = accept.unsqueeze(-1)
    new = HMCState(
        torch.where(keep, z, state.z), torch.where(accept, log_f, state.log_f),
        torch.where(accept, extra, state.extra), torch.where(keep, grad, state.grad),
    )
    return new, accept_prob


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, hmc: HMCOptions) -> torch.Tensor:
    """Grow step sizes after a transition accepted with probability above the target, shrink them otherwise.

    ``accept_prob`` is ``(chains, ...)``: its mean over the chains (dim 0) drives ``step_size``,
    which broadcasts against it (one per datapoint, or one per chain).
    """
    accept_prob = accept_prob.mean(0, keepdim=True)
    factor = torch.where(accept_prob > hmc.target_accept, 1 + hmc.adapt_rate, 1 - hmc.adapt_rate)
    return (step_size * factor).clamp(hmc.min_step_size, hmc.max_step_size)


@dataclass(frozen=True)
class AISOptions:
    """Everything that defines an AIS run but the programs and data (see :func:`ais`)."""

    num_chains: int = 100
    num_steps: int = 10_000
    schedule: str = "sigmoid"
    init: str = "prior"
    hmc: HMCOptions = HMCOptions()

    def __post_init__(self) -> None:
        _check_chains_and_init(self.num_chains, self.init)
        annealing_schedule(self.schedule, self.num_steps)  # refuses unknown schedules and num_steps < 1


def _check_chains_and_init(num_chains: int, init: str) -> None:
    if isinstance(num_chains, bool) or int(num_chains) != num_chains or num_chains < 1:
        raise ValueError(f"AIS needs at least 1 chain, got num_chains={num_chains!r}")
    if init not in AIS_INITS:
        raise ValueError(f"unknown AIS initial distribution {init!r}; choose from {', '.join(AIS_INITS)}")


class AISResult(NamedTuple):
    log_px: Estimate  #: per-datapoint log-mean-exp over chains, with its delta-method standard error
    log_weights: torch.Tensor  #: (chains, N) float64
    acceptance: torch.Tensor  #: (N,) mean acceptance probability over chains and transitions
    step_size: torch.Tensor  #: (N,) step size of the last transition (adapted in the pilot run)


class _Layout(NamedTuple):
    """Where each local latent site sits in the flat (C, N, D) state."""

    sites: tuple[str, ...]
    event_shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]

    def unflatten(self, z: torch.Tensor, info: ProgramInfo) -> dict[str, torch.Tensor]:
        """The flat state ``(C, N, D)`` as site values under the sample and data plates."""
        batch = sample_batch_shape(z.shape[0], z.shape[1], info)
        parts = z.split(list(self.sizes), -1)
        return {name: part.reshape(batch + event) for name, event, part in zip(self.sites, self.event_shapes, parts)}

    def flatten(self, values: dict[str, torch.Tensor], c: int, n: int, info: ProgramInfo) -> torch.Tensor:
        """Site values (broadcastable to ``c`` samples of ``n`` datapoints) as one flat state ``(c, n, D)``."""
        parts = []
        for name, event in zip(self.sites, self.event_shapes):
            v = values[name].expand(sample_batch_shape(c, n, info) + event)
            v = v.movedim(info.sample_dim - len(event), 0).movedim(info.data_dim - len(event), 1)
            parts.append(v.reshape(c, n, -1))
        return torch.cat(parts, -1)


def check_initial(init: str, info: ProgramInfo) -> None:
    """Refuse to start from a guide whose log q(z) cannot be evaluated at an arbitrary z (auxiliary sites)."""
    if init == "guide" and info.auxiliary:
        raise ValueError(
            f"AIS from the guide scores log q(z) at every z the chains visit, which a guide with auxiliary sites "
            f"{list(info.auxiliary)} (an autoguide) cannot do: use init='prior'"
        )


def latent_layout(model: Program, x: torch.Tensor, info: ProgramInfo) -> _Layout:
    """The flat layout of the local latents; refuses global, non-real or nested-plate latents."""
    if info.global_latents:
        raise ValueError(f"AIS estimates log p(x) per datapoint and needs a model without global latents; this one has {list(info.global_latents)}")
    if not info.local_latents:
        raise ValueError("the model has no per-datapoint latents: nothing to anneal")
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(x[:1])
    shapes = []
    for name in info.local_latents:
        fn = trace.nodes[name]["fn"]
        support = fn.support
        while hasattr(support, "base_constraint"):  # Independent, mixtures of real-valued components, ...
            support = support.base_constraint
        if support is not constraints.real:
            raise ValueError(f"AIS with HMC needs real-valued latents; site {name!r} has support {fn.support}")
        value = trace.nodes[name]["value"]
        if any(s != 1 for s in value.shape[: value.dim() - len(fn.event_shape)]):  # one datapoint: every batch dim is 1
            raise ValueError(f"site {name!r} sits in a plate nested in the data plate; AIS does not support that")
        shapes.append(tuple(fn.event_shape))
    return _Layout(info.local_latents, tuple(shapes), tuple(math.prod(s) for s in shapes))


def _initial(
    model: Program, guide: Program, x: torch.Tensor, chains: int, info: ProgramInfo, init: str, noise: Noise | None = None, what: str = "init"
) -> dict[str, torch.Tensor]:
    program = model if init == "prior" else guide
    with torch.no_grad(), _keyed_starts(noise, what), pyro.plate(SAMPLE_PLATE, chains, dim=info.sample_dim):
        trace = poutine.trace(program).get_trace(x)
    return {name: trace.nodes[name]["value"] for name in info.local_latents}


def _annealed_density(model, guide, x, info, layout, init: str, beta: float) -> LogDensity:
    """``z -> (log q0(z) + beta d(z), d(z))`` for the flat state ``z`` (C, N, D)."""

    def log_density(z: torch.Tensor):
        values = layout.unflatten(z, info)
        # log p(z) and log p(x, z) (enumerated model sites summed out of each), then d = log p(x, z) - log q0(z)
        log_prior, log_joint = score_site_groups(model, x, values, info, (info.local_latents, info.local_latents + info.observed))
        log_q0 = log_prior if init == "prior" else score_configurations(guide, x, values, info, info.guide_local_sites)
        d = log_joint - log_q0
        return log_q0 + beta * d, d

    return log_density


def _initial_state(model, guide, x, z0, beta, info, layout, init) -> HMCState:
    return HMCState(z0.detach(), *value_and_grad(_annealed_density(model, guide, x, info, layout, init, beta), z0))


class AnnealRun(NamedTuple):
    """What :func:`anneal` returns."""

    log_weights: torch.Tensor  #: (C, N) float64, the weighted chains' (the pilot's are discarded)
    z: torch.Tensor  #: (C, N, D) the weighted chains' final states
    acceptance: torch.Tensor  #: (N,) mean acceptance probability of the weighted chains over transitions
    step_sizes: torch.Tensor  #: (T, N) the step size every chain of datapoint i used at transition t


def anneal(
    model: Program, guide: Program, x: torch.Tensor, z0: torch.Tensor, betas: torch.Tensor, hmc: HMCOptions,
    info: ProgramInfo, layout: _Layout, init: str, progress=None, *, step_sizes: torch.Tensor | None = None,
    pilot_z0: torch.Tensor | None = None, noise: Noise | None = None,
) -> AnnealRun:
    """Run chains from ``z0`` (C, N, D) along ``betas``, every datapoint's chains with one step size per transition.

    The step sizes are either given (``step_sizes``, (T, N): frozen, e.g. BDMC's reverse run) or
    adapted by a **pilot**: the chains ``pilot_z0`` (P, N, D) run in the same tensor, and after
    each transition the mean acceptance of a datapoint's pilot chains sets the step size of all
    its chains for the next one (:func:`adapt_step_size`). The pilot chains are independent of
    the weighted ones, so the weighted chains move by kernels that do not depend on their own
    states: each is a fixed HMC kernel given the pilot, and every weight stays unbiased for
    :math:`p(x)`. The pilot's weights are discarded. With neither, every step is ``hmc.step_size``.

    ``betas`` may also run from 1 down to 0 (reverse AIS, for BDMC); the log weight accumulates
    :math:`\\sum_t (\\beta_t - \\beta_{t-1}) d(z_{t-1})` either way.
    """
    c, n = z0.shape[:2]
    transitions = len(betas) - 1
    if step_sizes is not None and tuple(step_sizes.shape) != (transitions, n):
        raise ValueError(f"step_sizes must have shape {(transitions, n)} (transitions, datapoints), got {tuple(step_sizes.shape)}")
    p = 0 if pilot_z0 is None or step_sizes is not None else len(pilot_z0)
    used = torch.empty(transitions, n, dtype=torch.float64, device=x.device)
    current = torch.full((1, n), hmc.step_size, dtype=torch.float64, device=x.device)
    log_w = torch.zeros(c, n, dtype=torch.float64, device=x.device)
    accept_sum = torch.zeros(c, n, dtype=torch.float64, device=x.device)
    temperatures = betas.tolist()  # read once: a float() of a device tensor per transition would wait for the device each time
    state = _initial_state(model, guide, x, torch.cat([pilot_z0, z0]) if p else z0, temperatures[0], info, layout, init)
    for t in range(1, len(temperatures)):
        beta, previous = temperatures[t], temperatures[t - 1]
        log_w = log_w + (beta - previous) * state.extra[p:]
        density = _annealed_density(model, guide, x, info, layout, init, beta)
        if beta != previous:  # the density and its gradient at the current z under the new temperature
            state = HMCState(state.z, *value_and_grad(density, state.z))
        used[t - 1] = step_sizes[t - 1] if step_sizes is not None else current[0]
        state, accept_prob = hmc_transition(state, density, used[t - 1].expand(p + c, n), hmc.leapfrog_steps, noise, t)
        accept_sum = accept_sum + accept_prob[p:]
        if p:
            current = adapt_step_size(current, accept_prob[:p], hmc)
        if progress is not None:
            progress.update(1)
    return AnnealRun(log_w, state.z[p:], (accept_sum / max(transitions, 1)).mean(0), used)


def pilot_count(hmc: HMCOptions) -> int:
    """Pilot chains per datapoint: ``hmc.pilot_chains`` when step sizes adapt, else none."""
    return int(hmc.pilot_chains) if hmc.adapt_rate > 0 else 0


def pilot_chains(
    model: Program, guide: Program, x: torch.Tensor, hmc: HMCOptions, info: ProgramInfo, layout: _Layout, init: str, noise: Noise | None = None
):
    """Initial states of the pilot chains that adapt the step sizes, ``(P, N, D)``; None without adaptation."""
    p = pilot_count(hmc)
    if not p:
        return None
    with torch.no_grad():
        return layout.flatten(_initial(model, guide, x, p, info, init, noise, "pilot"), p, len(x), info)


def forward_run(
    model: Program, guide: Program, x: torch.Tensor, betas: torch.Tensor, num_chains: int, hmc: HMCOptions, info: ProgramInfo,
    layout: _Layout, init: str, progress=None, noise: Noise | None = None,
) -> AnnealRun:
    """``num_chains`` chains per datapoint of ``x`` from the initial distribution along ``betas``, step sizes adapted by the pilot."""
    pilot = pilot_chains(model, guide, x, hmc, info, layout, init, noise)
    with torch.no_grad():
        z0 = layout.flatten(_initial(model, guide, x, num_chains, info, init, noise), num_chains, len(x), info)
    return anneal(model, guide, x, z0, betas, hmc, info, layout, init, progress, pilot_z0=pilot, noise=noise)


def ais(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    num_chains: int = 100,
    num_steps: int = 10_000,
    schedule: str | torch.Tensor = "sigmoid",
    hmc: HMCOptions = HMCOptions(),
    init: str = "prior",
    max_elements: int | None = None,
    progress: bool = False,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    stream_name: str = "ais",
) -> AISResult:
    """Per-datapoint AIS estimate of :math:`\\log p(x_i)` (see the module docstring); shape ``(len(x),)``.

    ``schedule`` is ``"linear"``, ``"sigmoid"`` or an explicit tensor of inverse
    temperatures from 0 to 1 (then ``num_steps`` is ignored). ``init`` is ``"prior"``
    or ``"guide"`` (the amortized q as the initial distribution). With a ``seed`` every chain's draws
    (start, momenta, acceptances) are keyed by its datapoint's index (:mod:`inference.streams`), so a
    datapoint's estimate does not depend on its block or on the other points.
    """
    x = check_data(x)
    stream = point_stream(seed, x, index)
    _check_chains_and_init(num_chains, init)
    betas = check_schedule(schedule if isinstance(schedule, torch.Tensor) else annealing_schedule(schedule, num_steps))
    info = inspect_program(model, guide, x)
    layout = latent_layout(model, x, info)
    check_initial(init, info)
    block = datapoint_block(model, guide, x, info, int(num_chains) + pilot_count(hmc), max_elements)
    bar = progress_bar(len(betas) - 1, math.ceil(len(x) / block)) if progress else None
    weights, accepts, steps = [], [], []
    def run_block(start: int, n: int) -> AnnealRun:
        gb = guide_block(guide, start, start + n, len(x))
        noise = Noise(stream.rows(slice(start, start + n)), stream_name) if stream is not None else None
        return forward_run(model, gb, x[start : start + n], betas, int(num_chains), hmc, info, layout, init, bar, noise)

    for _, run in chunks(len(x), block, run_block, "ais"):  # a block out of device memory: again with half the datapoints
        weights.append(run.log_weights)
        accepts.append(run.acceptance)
        steps.append(run.step_sizes[-1])
    if bar is not None:
        bar.close()
    log_w = torch.cat(weights, 1)
    estimate = log_mean_exp_estimate(log_w, pareto=int(num_chains) > 1)
    refuse_non_finite(estimate.value, "the AIS log p(x)", model, guide, x, info)
    return AISResult(estimate, log_w, torch.cat(accepts), torch.cat(steps))


def datapoint_block(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo, num_chains: int, max_elements: int) -> int:
    """How many datapoints' chains fit in one tensor under ``max_elements``."""
    samples = chunk_size_for(info, x, model, guide, max_elements)  # samples of the whole batch that fit at once
    return max(1, samples * len(x) // num_chains)


def guide_block(guide: Program, start: int, stop: int, num_points: int) -> Program:
    """The guide for datapoints ``start:stop``: a per-datapoint (local) guide is cut to those rows, others serve any batch."""
    if hasattr(guide, "subset") and getattr(guide, "num_points", None) == num_points and (start, stop) != (0, num_points):
        return guide.subset(torch.arange(start, stop))
    return guide


def progress_bar(steps: int, blocks: int):
    """A progress bar over ``steps`` annealing steps for each of ``blocks`` blocks of datapoints."""

    return tqdm(total=steps * blocks, desc="AIS", leave=False)
