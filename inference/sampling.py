r"""Draws every objective and estimator shares: the global latents once per batch, a dream from the model, the batch's share of the global factor.

* :func:`global_share` — ``B/N``, how often a mini-batch counts the global factor;
* :func:`draw_globals` — :math:`\theta \sim q(\theta)` once, with :math:`\log p(\theta) - \log q(\theta)`;
* :func:`dream` — :math:`(x', z') \sim p`, the model run with its observation ignored
  (the sleep phase of wake-sleep, Hinton et al. 1995; BDMC's simulated data, Grosse et al. 2015);
* :func:`set_seed` — seed Python, NumPy and torch from a seed derived from the run's seed;
* :func:`fork_rng` — a side computation that leaves the random state of the CPU *and* of the device untouched.
"""

from __future__ import annotations

import contextlib

import pyro
import torch
from pyro import poutine

from .program import ConventionError, ProgramInfo


def set_seed(derived: int) -> None:
    """``pyro.set_rng_seed`` of a seed derived from a run's seed (``seed * 1000 + i``): reduced modulo 2**32, NumPy's range."""
    pyro.set_rng_seed(int(derived) % 2**32)


def fork_rng(device: torch.device | str | None = None) -> contextlib.AbstractContextManager:
    """``torch.random.fork_rng`` over the CPU generator and, for a CUDA ``device``, that device's generator.

    Forking only the CPU (``devices=[]``) leaves a GPU's generator advanced by the side computation,
    so training on a GPU would depend on whether (and how often) it ran.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def generator_state(device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The state of torch's CPU generator and, for a CUDA ``device``, that device's: what :func:`set_generator_state`
    restores, so that a computation resumed from a saved point draws the numbers an uninterrupted one would."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_generator_state(state: dict[str, torch.Tensor], device: torch.device | str | None = None) -> None:
    """Restore what :func:`generator_state` returned (the CUDA generator's only for a CUDA ``device``)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        if "cuda" not in state:
            raise ValueError("the saved generator state was taken on a CPU run: it cannot continue a run on a CUDA device")
        torch.cuda.set_rng_state(state["cuda"], device)


def global_share(batch_size: int, dataset_size: int | None) -> float:
    """``B/N``: how often a batch of B counts the global factor, so that N/B batches count it once (1 without N)."""
    if dataset_size is None:
        return 1.0
    if isinstance(dataset_size, bool) or int(dataset_size) != dataset_size or dataset_size < batch_size:
        raise ValueError(f"dataset_size must be an integer >= the batch size {batch_size}, got {dataset_size!r}")
    return batch_size / int(dataset_size)


def draw_globals(
    model, guide, x: torch.Tensor, info: ProgramInfo, dataset_size: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw the global latents once, ``theta ~ q(theta)``; return ``log p(theta) - log q(theta)`` (float64) and ``theta``.

    Both keep their graph (pathwise through a reparameterized ``q(theta)``). Without
    global latents: ``(0, {})``. With ``dataset_size`` N the term is the batch's share,
    ``B/N`` times it (:func:`global_share`).
    """
    term = x.new_zeros((), dtype=torch.float64)
    if not info.global_latents:
        return term, {}
    latents, guide_sites = list(info.global_latents), list(info.guide_global_sites)
    global_trace = poutine.trace(poutine.block(guide, expose=guide_sites)).get_trace(x)
    for n in guide_sites:
        if not global_trace.nodes[n]["fn"].has_rsample:
            raise ValueError(
                f"global guide site {n!r} is not reparameterized: the importance-weighted and wake-sleep objectives fit "
                "global latents through their samples; use objective 'elbo' or 'tracegraph' (score-function gradients) "
                "on the full batch, or a reparameterized q for it"
            )
    theta = {n: global_trace.nodes[n]["value"] for n in guide_sites}  # auxiliary values too, so a re-run draws the same theta
    prior_trace = poutine.trace(poutine.block(poutine.condition(model, data=theta), expose=latents)).get_trace(x)
    for n in latents:
        term = term + prior_trace.nodes[n]["fn"].log_prob(theta[n]).sum()
    for n in guide_sites:
        term = term - global_trace.nodes[n]["fn"].log_prob(theta[n]).sum()
    return global_share(len(x), dataset_size) * term, theta


def dream(model, x: torch.Tensor, info: ProgramInfo) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``(x', z') ~ p`` with ``len(x)`` datapoints: the model run with its observation ignored.

    Returns ``x'`` shaped like ``x`` and the values of every latent site. The model must
    observe ``x`` itself (up to a reshape) at a single site, or there is nothing to dream.
    """
    if len(info.observed) != 1:
        raise ConventionError(
            f"the sleep phase dreams x from the model, which needs exactly one observed site; this model has {list(info.observed)}"
        )
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(x)
    x_dream = trace.nodes[info.observed[0]]["value"]
    if x_dream.numel() != x.numel():
        raise ConventionError(
            f"the sleep phase needs the observed site {info.observed[0]!r} to be x itself; it holds "
            f"{tuple(x_dream.shape)} values for x of shape {tuple(x.shape)}"
        )
    latents = {n: trace.nodes[n]["value"] for n in info.local_latents + info.global_latents}
    return x_dream.reshape(x.shape).to(x.dtype), latents
