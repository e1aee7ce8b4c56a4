r"""Exact per-datapoint answers for models whose local latents are few and discrete.

When every per-datapoint latent takes finitely many values (Bernoulli units,
categorical assignments) and the joint has at most ``max_configurations``
configurations :math:`z_1, \dots, z_C` (4096 = 12 binary units by default), the
marginal likelihood and the ELBO of any guide are finite sums:

.. math::
    \log p(x_i) = \operatorname{logsumexp}_c \log p(x_i, z_c), \qquad
    \mathcal{L}_i[q] = \sum_c q(z_c \mid x_i)\,\big[\log p(x_i, z_c) - \log q(z_c \mid x_i)\big].

These are the exact oracles for every estimator on discrete latents (mixtures,
small sigmoid belief nets). Every configuration is scored for every datapoint at
once, by conditioning the program on the grid of values inside a vectorized
plate; configurations are processed in memory-bounded chunks.
"""

from __future__ import annotations

import itertools
import math

import torch
from pyro import poutine

from .memory import chunk_size_for, resolve_max_elements
from .nonfinite import refuse_non_finite
from .program import Program, ProgramInfo, check_data, inspect_program, sample_batch_shape, score_configurations

#: Default bound on the number of joint configurations (12 binary units).
MAX_CONFIGURATIONS = 4096


def unwrap_independent(fn):
    """The distribution under any ``Independent`` (``.to_event``) wrappers."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def site_values(name: str, fn, event_shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every value one datapoint's site ``name`` can take: shape ``(V, *event_shape)``.

    Bernoulli values take ``dtype`` (the site's own, so a float64 program stays float64); categories are integers.
    """
    base = unwrap_independent(fn)
    if not fn.support.is_discrete:
        raise ValueError(f"exact enumeration needs finite discrete latents; site {name!r} is a {type(base).__name__}")
    if isinstance(base, torch.distributions.Bernoulli):
        arity = 2
    elif isinstance(base, torch.distributions.Categorical):
        arity = base.logits.shape[-1]
    else:
        raise ValueError(f"exact enumeration supports Bernoulli and Categorical sites; site {name!r} is a {type(base).__name__}")
    elements = math.prod(event_shape)
    if arity**elements > 2**62:
        raise ValueError(f"site {name!r} has {arity}^{elements} values: far too many to enumerate")
    dtype = torch.long if isinstance(base, torch.distributions.Categorical) else (dtype or torch.get_default_dtype())
    grid = torch.tensor(list(itertools.product(range(arity), repeat=elements)), dtype=dtype)
    return grid.reshape((len(grid), *event_shape))


def configurations(
    model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo, max_configurations: int = MAX_CONFIGURATIONS,
    names: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """The joint grid of values of the local latents ``names`` (default: all): ``{site: (C, *per_point_shape)}``.

    Refuses models with global latents, continuous sites among ``names``, local sites that
    sit in plates nested inside the data plate, or more than ``max_configurations``
    joint configurations.
    """
    names = info.local_latents if names is None else tuple(names)
    if info.global_latents:
        raise ValueError(f"exact enumeration handles per-datapoint latents only; the model has global latents {info.global_latents}")
    if not names:
        raise ValueError("the model has no per-datapoint latents to enumerate")
    with torch.no_grad():  # the model alone: only the sites' distributions and shapes matter here
        model_trace = poutine.trace(model).get_trace(x[:1])
    grids, sizes = [], []
    for name in names:
        site = model_trace.nodes[name]
        fn = site["fn"]
        batch_dims = site["value"].dim() - len(fn.event_shape)
        if batch_dims > 1 and any(s != 1 for s in site["value"].shape[: batch_dims - 1]):
            raise ValueError(f"site {name!r} sits in a plate nested in the data plate; exact enumeration does not support that")
        grid = site_values(name, fn, tuple(fn.event_shape), site["value"].dtype)
        grids.append(grid)
        sizes.append(len(grid))
    total = math.prod(sizes)
    if total > max_configurations:
        raise ValueError(
            f"exact enumeration would need {total} joint configurations of {', '.join(names)}, "
            f"more than max_configurations={max_configurations} (about {int(math.log2(max_configurations))} binary units)"
        )
    index = torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(total, len(sizes))
    return {name: grid[index[:, k]].to(x.device) for k, (name, grid) in enumerate(zip(names, grids))}


def _expand_site(values: torch.Tensor, n: int, info: ProgramInfo) -> torch.Tensor:
    """Shape a ``(C, *event_shape)`` grid as a site value under the sample and data plates."""
    c, event = values.shape[0], tuple(values.shape[1:])
    return values.reshape((c,) + (1,) * info.max_plate_nesting + event).expand(sample_batch_shape(c, n, info) + event)


def expand_grid(grid: dict[str, torch.Tensor], n: int, info: ProgramInfo) -> dict[str, torch.Tensor]:
    """Shape each site's ``(C, *event_shape)`` grid as its value under the sample and data plates (``n`` datapoints)."""
    return {name: _expand_site(values, n, info) for name, values in grid.items()}


def _chunked(grid: dict[str, torch.Tensor], size: int):
    total = len(next(iter(grid.values())))
    for start in range(0, total, size):
        yield {k: v[start : start + size] for k, v in grid.items()}


def exact_log_px(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    max_configurations: int = MAX_CONFIGURATIONS,
    max_elements: int | None = None,
) -> torch.Tensor:
    """:math:`\\log p(x_i)` by summing over every configuration of the local latents; shape ``(len(x),)``.

    The guide is only run to check the convention and learn the site layout. A NaN or
    infinite result is refused (:class:`inference.nonfinite.NonFiniteError`) with its cause.
    """
    x = check_data(x)
    info = inspect_program(model, guide, x)
    grid = configurations(model, guide, x, info, max_configurations)
    value = log_joint_on_grid(model, guide, x, info, grid, max_elements).logsumexp(0)
    return refuse_non_finite(value, "the exact log p(x)", model, guide, x, info)


def log_joint_on_grid(
    model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo, grid: dict[str, torch.Tensor], max_elements: int | None = None
) -> torch.Tensor:
    """:math:`\\log p(x_i, z_c)` for every configuration ``c`` of ``grid`` and datapoint ``i``: ``(C, len(x))``, no graph."""
    size = chunk_size_for(info, x, model, guide, max_elements)
    parts = []
    with torch.no_grad():
        for chunk in _chunked(grid, size):
            values = expand_grid(chunk, len(x), info)
            parts.append(score_configurations(model, x, values, info, info.local_latents + info.observed))
    return torch.cat(parts)


def exact_elbo(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    model_grad: bool = False,
    max_configurations: int = MAX_CONFIGURATIONS,
    max_elements: int | None = None,
    info: ProgramInfo | None = None,
    grid: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """:math:`\\mathcal{L}_i[q] = \\sum_c q(z_c|x_i) [\\log p(x_i, z_c) - \\log q(z_c|x_i)]`; shape ``(len(x),)``.

    Differentiable with respect to the guide's parameters, and to the model's when
    ``model_grad=True`` (otherwise the model is scored without a graph, as for a
    frozen model). ``info`` and ``grid`` (from :func:`configurations`) may be passed
    to skip re-inspecting the programs, as a training loop does.
    """
    if info is None:
        info = inspect_program(model, guide, x)
    if grid is None:
        grid = configurations(model, guide, x, info, max_configurations)
    size = max(1, resolve_max_elements(max_elements, x.device) // (8 * len(x) * max(1, _footprint(grid))))
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for chunk in _chunked(grid, size):
        values = expand_grid(chunk, len(x), info)
        with torch.set_grad_enabled(model_grad and torch.is_grad_enabled()):
            log_p = score_configurations(model, x, values, info, info.local_latents + info.observed)
        log_q = score_configurations(guide, x, values, info, info.local_latents)
        total = total + (log_q.exp() * (log_p - log_q)).sum(0)
    return total


def _footprint(grid: dict[str, torch.Tensor]) -> int:
    """Elements per configuration and datapoint, generously counted (observations dominate elsewhere)."""
    return 64 * sum(v[0].numel() for v in grid.values())


def is_enumerable(model: Program, guide: Program, x: torch.Tensor, max_configurations: int = MAX_CONFIGURATIONS) -> bool:
    """Whether :func:`exact_log_px` can handle this pair (all local latents discrete and few)."""
    try:
        configurations(model, guide, x[:1], inspect_program(model, guide, x[:1]), max_configurations)
    except ValueError:
        return False
    return True
