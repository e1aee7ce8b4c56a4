"""No silent NaN: a non-finite estimate is refused with the reason found for it.

An estimator whose per-datapoint value comes out NaN or infinite raises
:class:`NonFiniteError` instead of returning it. :func:`diagnose` looks for the
cause in the order a user would check it:

1. non-finite parameters of the model or the guide (a diverged training run);
2. data so large that float32 arithmetic overflows (squares beyond 3.4e38);
3. the first sample site whose distribution has a non-finite or zero scale-like
   parameter, or whose log density is NaN or infinite, naming the program, the site
   and the datapoint.
"""

from __future__ import annotations

import math

import pyro
import torch
from torch import nn

from .program import Program, ProgramInfo, per_datapoint_log_prob, trace_pair
from .sampling import fork_rng

#: Data beyond this magnitude overflow float32 once squared (sqrt of 3.4e38 is 1.8e19); 1e15 leaves room for sums.
LARGE_DATA = 1e15


class NonFiniteError(ValueError):
    """An estimate came out NaN or infinite; the message says where and, when found, why."""


def non_finite_parameters(*programs: Program) -> list[str]:
    """Names of the non-finite parameters of the ``nn.Module`` programs and of Pyro's parameter store."""
    found = []
    for which, program in zip(("model", "guide", "program"), programs):
        if isinstance(program, nn.Module):
            found += [f"{which}.{name}" for name, p in program.named_parameters() if not bool(torch.isfinite(p).all())]
    store = pyro.get_param_store()
    found += [f"pyro.param {name!r}" for name in store.keys() if not bool(torch.isfinite(store[name]).all())]
    return found


def describe_parameters(names: list[str]) -> str:
    """``names`` shown, at most three, for a message."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _bad_parameters_of(fn) -> list[str]:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    bad = []
    for key, value in vars(fn).items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or key.startswith("_"):
            continue
        if not bool(torch.isfinite(value).all()):
            bad.append(f"its {key} is not finite")
        elif key in ("scale", "scale_tril", "concentration", "rate") and bool((value == 0).any()):
            bad.append(f"its {key} is zero")
    return bad


def _first_bad_site(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo) -> str | None:
    with torch.no_grad(), fork_rng(x.device):
        model_trace, guide_trace = trace_pair(model, guide, x, info)
    checks = (("guide", guide_trace, info.guide_local_sites), ("model", model_trace, info.local_latents + info.observed))
    for which, trace, names in checks:
        for name in names:
            site = trace.nodes[name]
            lp = per_datapoint_log_prob(name, site, info).reshape(-1, len(x))[0]
            bad_points = (~torch.isfinite(lp)).nonzero().flatten()
            reasons = _bad_parameters_of(site["fn"])
            if len(bad_points) or reasons:
                where = f"datapoint {int(bad_points[0])}" if len(bad_points) else "some datapoints"
                why = f" ({'; '.join(reasons)})" if reasons else ""
                return f"{which} site {name!r} has a non-finite log density at {where}{why}"
    return None


def diagnose(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo) -> str:
    """The likeliest reason the pair's log weights on ``x`` are not finite, in words."""
    reasons = []
    params = non_finite_parameters(model, guide)
    if params:
        reasons.append(f"non-finite parameters: {describe_parameters(params)} (a diverged training run?)")
    if x.is_floating_point():
        largest = float(x.abs().max())
        if largest > LARGE_DATA:
            reasons.append(f"the data hold values up to {largest:.3g}, beyond what float32 networks can square ({math.sqrt(3.4e38):.2g}); rescale them")
    try:
        site = _first_bad_site(model, guide, x, info)
    except Exception as err:  # the diagnosis must not hide the refusal
        site = f"(tracing the programs to find the site failed: {type(err).__name__}: {err})"
    if site:
        reasons.append(site)
    return "; ".join(reasons) if reasons else "no non-finite parameter or site was found on a fresh sample (a rare sample overflowed?)"


def refuse_non_finite(
    value: torch.Tensor, what: str, model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo
) -> torch.Tensor:
    """``value`` (per datapoint) if every entry is finite, else :class:`NonFiniteError` with :func:`diagnose`'s reason."""
    bad = ~torch.isfinite(value)
    if not bool(bad.any()):
        return value
    index = int(bad.nonzero().flatten()[0])
    raise NonFiniteError(
        f"{what} is {float(value[index])} for {int(bad.sum())} of {len(value)} datapoints (the first: index {index}); "
        f"refusing to return it. Cause: {diagnose(model, guide, x, info)}"
    )
