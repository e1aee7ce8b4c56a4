"""The model/guide convention, checked, and the per-datapoint scoring of programs.

**The convention.** ``model(x)`` and ``guide(x)`` take a batch ``x`` whose first
dimension indexes datapoints. Every per-datapoint latent site, and every
observed site, is sampled inside ``pyro.plate("data", len(x))`` (a vectorized
plate, no subsampling: a mini-batch is scaled to the full data by the trainer,
not by the program); global latents, if any, are sampled outside it. The
programs must broadcast over extra leading batch dimensions (the estimators
add one for samples), as any program used with ``vectorize_particles=True``
must. Two extensions of Pyro's own conventions are understood:

* guide sites marked ``infer={"is_auxiliary": True}`` (Pyro's ``AutoNormal`` draws one per
  latent and puts the latent itself in a ``Delta`` with a ``log_density``): they belong
  to :math:`\\log q` and not to the model;
* model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not sample:
  discrete per-datapoint latents summed out exactly in every :math:`\\log p`.

:func:`inspect_program` checks a pair against the convention and reports which
site is what; :func:`log_weights` scores ``S`` vectorized samples and returns
per-datapoint log importance weights

.. math:: \\log w_{s,i} = \\log p(x_i, z_{s,i} \\mid \\theta_s) - \\log q(z_{s,i} \\mid x_i, \\theta_s),

where :math:`\\theta_s \\sim q(\\theta)` are the global latents, drawn afresh for every
sample ``s``. The global factor :math:`p(\\theta)/q(\\theta)` belongs to no single
datapoint and is left out. So with global latents the per-datapoint estimators
target the predictive quantities of :math:`q(\\theta)`: ``iwae_log_px`` tends to
:math:`\\log E_{q(\\theta)}[p(x_i \\mid \\theta)]` as K grows and ``elbo`` estimates
:math:`E_{q(\\theta)}[\\mathcal{L}_i(\\theta)]`. This is deliberately *not* Pyro's
``RenyiELBO``/``Importance``, which combine the weights of the whole trace (pyro-ppl
issues 3104, 3289).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import nn

DATA_PLATE = "data"
SAMPLE_PLATE = "_num_samples"
#: A vectorized sample plate of this size is run by :func:`inspect_program` to check that programs broadcast.
BROADCAST_CHECK_SIZE = 2

Program = Callable[[torch.Tensor], object]


class ConventionError(ValueError):
    """A model/guide pair does not follow the package convention."""


class ProgramInfo(NamedTuple):
    """What :func:`inspect_program` learned about a model/guide pair."""

    data_dim: int  #: the (negative) tensor dim of ``pyro.plate("data")``
    max_plate_nesting: int  #: number of plate dims the programs use
    local_latents: tuple[str, ...]  #: latent sites inside the data plate, sampled by the guide
    global_latents: tuple[str, ...]  #: latent sites outside the data plate
    observed: tuple[str, ...]  #: observed sites (all inside the data plate)
    auxiliary: tuple[str, ...] = ()  #: guide-only auxiliary sites inside the data plate (part of log q)
    global_auxiliary: tuple[str, ...] = ()  #: guide-only auxiliary sites outside it
    enumerated: tuple[str, ...] = ()  #: model-only discrete local sites, summed out of every log p

    @property
    def sample_dim(self) -> int:
        """The tensor dim the estimators use for vectorized samples."""
        return -(self.max_plate_nesting + 1)

    @property
    def guide_local_sites(self) -> tuple[str, ...]:
        """Every guide site whose log density is part of a datapoint's :math:`\\log q`."""
        return self.local_latents + self.auxiliary

    @property
    def guide_global_sites(self) -> tuple[str, ...]:
        """Every guide site of the global factor :math:`q(\\theta)`."""
        return self.global_latents + self.global_auxiliary


def check_data(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Refuse data that no estimate can be trusted on; return ``x`` ready for the programs.

    Refused by name: not a tensor, empty, NaN or inf, half-precision floats (the programs
    compute in full precision), integer or boolean data other than 0/1. Integer and boolean
    0/1 data (binary images stored compactly) are returned as floats of the default dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"{name} must hold at least one datapoint along dim 0, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} has dtype {x.dtype}: the models take real-valued data")
    if x.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"{name} has dtype {x.dtype}; the programs compute in {torch.get_default_dtype()}: pass {name}.float() "
            "(half-precision data would meet full-precision weights)"
        )
    if not x.is_floating_point():
        values = x.unique()
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(
                f"{name} is {x.dtype} data with values from {values.min().item()} to {values.max().item()}: integer data are "
                "taken only as binary 0/1 (cast to floats). Convert grey levels yourself, e.g. x.float() / 255"
            )
        return x.to(torch.get_default_dtype())
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s); the first is {x[first].item()} at index {first}"
        )
    return x


def enumerated_model(model: Program, info: ProgramInfo) -> Program:
    """``model`` with its enumerated sites given parallel values in dims left of the sample plate (itself when it has none)."""
    if not info.enumerated:
        return model
    return poutine.enum(model, first_available_dim=info.sample_dim - 1)


def trace_pair(
    model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo | None = None
) -> tuple[poutine.Trace, poutine.Trace]:
    """Run the guide, then the model replayed against it; return (model_trace, guide_trace).

    With ``info`` naming enumerated sites, the model runs under parallel enumeration.
    """
    guide_trace = poutine.trace(guide).get_trace(x)
    if info is not None:
        model = enumerated_model(model, info)
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


def _check_observed_shape(name: str, site: dict, x: torch.Tensor) -> None:
    """Refuse an observed value that its distribution broadcasts: the data's shape does not fit the model.

    A single datapoint of shape ``(D,)`` (read as D datapoints) and a batch with an extra
    dim (``x.unsqueeze(1)``, which makes the data plate pair every datapoint with every
    other) both give numbers without this check, and wrong ones.
    """
    value, fn = site["value"], site["fn"]
    if value.numel() <= 1 or _is_auxiliary(site) or site["infer"].get("_deterministic"):
        return  # a constant observation, a pyro.factor or a pyro.deterministic: broadcasting them is meant
    expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if tuple(value.shape) != expected:
        hint = ""
        if x.dim() == 1:
            hint = " A 1-D x is read as len(x) datapoints; a single datapoint is x.unsqueeze(0)."
        elif 1 in x.shape[1:]:
            hint = " x has a dim of size 1 after the datapoint dim (an unsqueeze?) that the model broadcasts against the data plate."
        raise ConventionError(
            f"the data do not fit observed site {name!r}: x has shape {tuple(x.shape)} and the site's value has shape "
            f"{tuple(value.shape)}, but its distribution has shape {expected} (batch {tuple(fn.batch_shape)}, event "
            f"{tuple(fn.event_shape)}); the observed value must fill the distribution's shape, not broadcast against it.{hint}"
        )


def _refuse_global_vector_autoguides(guide: Program) -> None:

    if isinstance(guide, AutoContinuous):
        raise ConventionError(
            f"{type(guide).__name__} puts every latent into one global vector, so no datapoint has a log q of its own; "
            "use pyro.infer.autoguide.AutoNormal, which keeps one site per latent inside its plates"
        )


def _is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") == "parallel"


def _is_auxiliary(site: dict) -> bool:
    return bool(site["infer"].get("is_auxiliary"))


def inspect_program(model: Program, guide: Program, x: torch.Tensor) -> ProgramInfo:
    """Check ``(model, guide)`` against the convention on ``x`` and describe its sites.

    Runs both programs on ``x``, the model on a batch of another size (so that a latent
    whose shape grows with the batch but sits outside the data plate is caught), and
    both under a vectorized sample plate (so that a program that does not broadcast
    over the estimators' sample dimension is caught here, by name, and not deep inside
    an estimator). Observed values are checked against their distribution's support
    (e.g. non-binary data under a Bernoulli likelihood). Raises :class:`ConventionError`
    naming the offending site.
    """
    x = check_data(x)
    _refuse_global_vector_autoguides(guide)
    n = len(x)
    x_other = x[:-1] if n > 1 else torch.cat([x, x])
    try:
        model_trace, guide_trace = trace_pair(model, guide, x)
        with torch.no_grad():  # the model alone, latents from the prior: only shapes matter here
            model_other = prune_subsample_sites(poutine.trace(model).get_trace(x_other))
    except Exception as err:
        from .nonfinite import NonFiniteError, describe_parameters, non_finite_parameters  # it scores programs with this module

        bad = non_finite_parameters(model, guide)
        if bad:
            first = str(err).splitlines()[0] if str(err) else ""
            raise NonFiniteError(
                f"the programs fail on x and have non-finite parameters: {describe_parameters(bad)} (a diverged training run?); "
                f"{type(err).__name__}: {first}"
            ) from err
        raise

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

    for name, site in {**model_sites, **guide_sites}.items():
        _check_unscaled(name, site)
    local, global_, observed, enumerated = [], [], [], []
    for name, site in model_sites.items():
        inside = _data_frame(site) is not None
        if site["is_observed"]:
            if not inside:
                raise ConventionError(f"observed site {name!r} is outside pyro.plate({DATA_PLATE!r}, len(x))")
            observed.append(name)
            _check_observed_shape(name, site, x)
            _check_support(name, site)
        elif name not in guide_sites and _is_enumerated(site):
            if not inside:
                raise ConventionError(
                    f"enumerated site {name!r} is outside pyro.plate({DATA_PLATE!r}, len(x)): only per-datapoint "
                    "discrete latents can be summed out per datapoint"
                )
            enumerated.append(name)
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
            hint = ""
            if name in local and model_sites[name]["fn"].support.is_discrete:
                hint = " (or mark it infer={'enumerate': 'parallel'} in the model to sum it out)"
            raise ConventionError(f"model latent site {name!r} has no counterpart in the guide{hint}")
        if (_data_frame(guide_sites[name]) is not None) != (name in local):
            where = "inside" if name in local else "outside"
            raise ConventionError(f"site {name!r} is {where} the data plate in the model but not in the guide")
    auxiliary, global_auxiliary = [], []
    for name, site in guide_sites.items():
        if name not in model_sites:
            if not _is_auxiliary(site):
                raise ConventionError(
                    f"guide site {name!r} does not appear in the model (a guide-only site must be marked "
                    "infer={'is_auxiliary': True})"
                )
            (auxiliary if _data_frame(site) is not None else global_auxiliary).append(name)
        elif model_sites[name]["is_observed"]:
            raise ConventionError(f"guide site {name!r} is observed in the model")

    dims = [-f.dim for t in (model_trace, guide_trace) for s in _sample_sites(t).values() for f in s["cond_indep_stack"] if f.vectorized]
    info = ProgramInfo(
        data_frame.dim, max(dims), tuple(local), tuple(global_), tuple(observed),
        tuple(auxiliary), tuple(global_auxiliary), tuple(enumerated),
    )
    _check_broadcasting(model, guide, x, info)
    return info


def _traced(program: Program, x: torch.Tensor, which: str, info: ProgramInfo, replay_trace=None) -> poutine.Trace:
    """Trace ``program`` under the check's sample plate; a failure names the last site reached."""
    if replay_trace is not None:
        program = poutine.replay(enumerated_model(program, info), trace=replay_trace)
    tracer = poutine.trace(program)
    try:
        return tracer.get_trace(x)
    except Exception as err:
        sites = [name for name, site in tracer.msngr.trace.nodes.items() if site["type"] == "sample"]
        where = f"after its site {sites[-1]!r}" if sites else "before its first sample site"
        raise ConventionError(
            f"the {which} fails {where} when run under a vectorized pyro.plate of size {BROADCAST_CHECK_SIZE} at dim "
            f"{info.sample_dim} (the estimators draw their samples that way): {type(err).__name__}: {err}. Programs must "
            "broadcast over extra leading dims: index from the right (x.shape[-1], z[..., i], reshape(*z.shape[:-1], ...)) "
            "rather than by len(x) or dim 0"
        ) from err


def _check_broadcasting(model: Program, guide: Program, x: torch.Tensor, info: ProgramInfo) -> None:
    """Run the pair under a sample plate and refuse a site whose per-datapoint log density lost the sample dim or the data dim."""
    from .sampling import fork_rng  # sampling imports this module

    s, n = BROADCAST_CHECK_SIZE, len(x)
    with torch.no_grad(), fork_rng(x.device), pyro.plate(SAMPLE_PLATE, s, dim=info.sample_dim):
        guide_trace = _traced(guide, x, "guide", info)
        model_trace = _traced(model, x, "model", info, replay_trace=guide_trace)
        checks = [("guide", guide_trace, info.guide_local_sites), ("model", model_trace, info.local_latents + info.observed)]
        for which, trace, names in checks:
            for name in names:
                try:
                    lp = per_datapoint_log_prob(name, trace.nodes[name], info)
                except ConventionError:
                    raise
                except Exception as err:
                    raise ConventionError(
                        f"{which} site {name!r} cannot be scored under {s} vectorized samples: {type(err).__name__}: {err}. "
                        "Programs must broadcast over extra leading dims: index from the right rather than by len(x) or dim 0"
                    ) from err
                got = tuple(lp.shape[-2:])
                needs_samples = name not in info.observed or bool(info.local_latents)
                if got[-1] != n or (needs_samples and got[0] != s):
                    raise ConventionError(
                        f"{which} site {name!r} has a per-datapoint log density of shape {got} under {s} vectorized "
                        f"samples of {n} datapoints, expected {(s, n)}: the program collapses or ignores the sample dim"
                    )


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
    from .sampling import fork_rng  # sampling imports this module

    with fork_rng(x.device):
        return inspect_program(model, guide, x)


def _check_unscaled(name: str, site: dict, num_points: int | None = None) -> None:
    scale = site["scale"]
    if not (isinstance(scale, (int, float)) and scale == 1.0):
        shown = f"{float(scale):.4g}" if isinstance(scale, (int, float)) or scale.numel() == 1 else "a tensor"
        frame = _data_frame(site)
        if frame is not None and frame.full_size is not None and frame.full_size != frame.size:
            raise ConventionError(
                f"site {name!r} is scaled by {shown}: pyro.plate({DATA_PLATE!r}) is subsampled (a mini-batch of {frame.size} "
                f"out of {frame.full_size}). Write pyro.plate('data', len(x)) and let the trainer scale the batch: fit() "
                "passes the dataset size to every objective (loss.dataset_size), which counts global latents once per "
                "dataset, not once per batch"
            )
        raise ConventionError(
            f"site {name!r} is scaled by {shown} (poutine.scale or a subsampled plate); "
            "per-datapoint estimators need the unscaled program: use pyro.plate('data', len(x))"
        )


def per_datapoint_log_prob(name: str, site: dict, info: ProgramInfo) -> torch.Tensor:
    """``log p(site)`` summed within each datapoint: shape ``(S or 1, N or 1)``.

    Plates nested inside the data plate are summed; masks are honoured. A scaled
    site (``poutine.scale`` or a subsampled plate) has no per-datapoint meaning
    and is refused. A site of a model run under parallel enumeration keeps the
    enumeration dims on its left: ``(*enum, S or 1, N or 1)``.
    """
    _check_unscaled(name, site)
    return _within_datapoints(name, _masked(site, site["fn"].log_prob(site["value"])), info, 0)


def per_dimension_log_prob(name: str, site: dict, info: ProgramInfo) -> torch.Tensor:
    """``log p`` of each coordinate of a factorized site with one event dim, summed within each datapoint:
    ``(S or 1, N or 1, D)``. Its sum over the last dim is :func:`per_datapoint_log_prob`. A site whose
    distribution does not factorize over its event dim (a flow, a full covariance) is refused by name."""
    _check_unscaled(name, site)
    fn = site["fn"]
    if not isinstance(fn, torch.distributions.Independent) or fn.reinterpreted_batch_ndims != 1 or len(fn.event_shape) != 1:
        raise ValueError(f"site {name!r} is a {type(fn).__name__}, not a factorized distribution over one event dim "
                         "(Independent(..., 1), e.g. Normal(loc, scale).to_event(1)): it has no per-dimension log density")
    log_prob = _masked(site, fn.base_dist.log_prob(site["value"]), trailing=1)
    return _within_datapoints(name, log_prob, info, 1)


def global_log_prob(name: str, site: dict) -> torch.Tensor:
    """``log p(site)`` of a site outside the data plate, summed over everything (masks honoured): a scalar."""
    _check_unscaled(name, site)
    return _masked(site, site["fn"].log_prob(site["value"])).sum()


def _masked(site: dict, log_prob: torch.Tensor, trailing: int = 0) -> torch.Tensor:
    if site["mask"] is not None and site["mask"] is not True:
        mask = site["mask"].reshape(site["mask"].shape + (1,) * trailing) if isinstance(site["mask"], torch.Tensor) else site["mask"]
        log_prob = torch.where(mask, log_prob, log_prob.new_zeros(()))
    return log_prob


def _within_datapoints(name: str, log_prob: torch.Tensor, info: ProgramInfo, trailing: int) -> torch.Tensor:
    """Sum the plates nested in the data plate out of ``log_prob`` (batch dims, then ``trailing`` dims kept)."""
    n_dims = info.max_plate_nesting + 1
    batch = log_prob.dim() - trailing
    lead = max(0, batch - n_dims)
    if lead > len(info.enumerated):
        raise ConventionError(
            f"site {name!r} has batch shape {tuple(log_prob.shape[:batch])}, more dims than its plates: "
            "declare per-datapoint dims as event dims with .to_event()"
        )
    log_prob = log_prob.reshape((1,) * (n_dims - batch) + tuple(log_prob.shape))
    keep = (0, n_dims + info.data_dim)
    other = [lead + d for d in range(n_dims) if d not in keep]
    return log_prob.sum(other) if other else log_prob


def _enumerated_in(trace: poutine.Trace, info: ProgramInfo) -> list[str]:
    """The enumerated sites of ``info`` that ``trace`` gave parallel values."""
    return [n for n in info.enumerated if n in trace.nodes and trace.nodes[n]["infer"].get("_enumerate_dim") is not None]


def log_prob_sum(trace: poutine.Trace, names: Iterable[str], info: ProgramInfo, shape: tuple[int, int]) -> torch.Tensor:
    """Per-datapoint :math:`\\sum_{\\text{site} \\in \\text{names}} \\log p(\\text{site})` in float64, shape ``shape`` = (S, N).

    Sites enumerated in ``trace`` are summed out exactly:
    :math:`\\log \\sum_c p(c) \\prod_{\\text{site}} p(\\text{site} \\mid c)`.
    """
    names = list(names)
    enumerated = [n for n in _enumerated_in(trace, info) if n not in names]
    total = torch.zeros(shape, dtype=torch.float64, device=_device_of(trace, names + enumerated))
    for name in names + enumerated:
        total = total + per_datapoint_log_prob(name, trace.nodes[name], info)
    if total.dim() > 2:
        total = total.logsumexp(tuple(range(total.dim() - 2)))
    return total


def _device_of(trace: poutine.Trace, names: list[str]) -> torch.device:
    """The device of the scored sites' values (not of any sample site: a plate's subsample indices live on the CPU)."""
    for name in names:
        if isinstance(trace.nodes[name]["value"], torch.Tensor):
            return trace.nodes[name]["value"].device
    return torch.device("cpu")


def score_site_groups(
    program: Program, x: torch.Tensor, values: dict[str, torch.Tensor], info: ProgramInfo, groups: tuple[tuple[str, ...], ...]
) -> list[torch.Tensor]:
    """``program`` conditioned on each row of ``values``, scored per group of sites: one ``(C, len(x))`` sum per group.

    ``values`` hold ``C`` rows (configurations, or samples that keep their graph) at the
    sample dim; enumerated model sites are summed out of every group.
    """
    c = len(next(iter(values.values())))
    with pyro.plate(SAMPLE_PLATE, c, dim=info.sample_dim):
        trace = poutine.trace(poutine.condition(enumerated_model(program, info), data=values)).get_trace(x)
    return [log_prob_sum(trace, sites, info, (c, len(x))) for sites in groups]


def score_configurations(
    program: Program, x: torch.Tensor, values: dict[str, torch.Tensor], info: ProgramInfo, sites: tuple[str, ...]
) -> torch.Tensor:
    """``sum over sites of log prob`` of ``program`` conditioned on each row of ``values`` (configurations, or samples that keep their graph): ``(C, len(x))``."""
    return score_site_groups(program, x, values, info, (sites,))[0]


class _StopParamSites(Messenger):
    """Values read through ``pyro.param`` are cut from the graph: all of them, or those of the parameters ``owned``."""

    def __init__(self, owned: set[int] | None = None):
        super().__init__()
        self.owned = owned

    def _postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "param":
            return
        if self.owned is not None:
            ref = getattr(msg["value"], "unconstrained", None)
            source = ref() if callable(ref) else msg["value"]
            if id(source) not in self.owned:
                return
        msg["value"] = msg["value"].detach()


class _Scope(nn.Module):
    """Holds the modules whose parameters a call replaces; its forward runs the call."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(modules)

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def with_stopped_parameters(modules: Iterable[object], fn: Callable[[], Any], param_sites: str = "all") -> Any:
    """``fn()`` with every parameter of ``modules`` cut from the graph, and values read through ``pyro.param``:
    all of them (``param_sites="all"``) or only those of the modules' parameters (``"owned"``).

    The stop is *by parameter*: a parameter shared between modules (a guide that runs
    the model's networks, as the ladder VAE's does) is stopped wherever it is read, and
    every distribution built and scored inside ``fn`` sees only stopped parameters, even
    one that evaluates its networks lazily in ``log_prob`` (flows). Tensors that
    reach ``fn`` from outside (sampled values) keep their graph. This is the
    :math:`\\log q_{\\bar\\phi}` of the STL and DReG estimators.
    """
    unique: dict[int, nn.Module] = {}
    for m in modules:
        if isinstance(m, nn.Module):
            unique.setdefault(id(m), m)
    owned = None if param_sites == "all" else {id(p) for m in unique.values() for p in m.parameters()}
    with _StopParamSites(owned):
        if not unique:
            return fn()
        scope = _Scope(list(unique.values()))
        params = {name: p.detach() for name, p in scope.named_parameters()}
        return torch.func.functional_call(scope, params, (fn,))


def sampled_log_densities(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int, info: ProgramInfo
) -> tuple[torch.Tensor, torch.Tensor, poutine.Trace]:
    """:func:`log_densities` and the guide trace the samples came from (their values and distributions)."""
    with pyro.plate(SAMPLE_PLATE, num_samples, dim=info.sample_dim):
        model_trace, guide_trace = trace_pair(model, guide, x, info)
    shape = (num_samples, len(x))
    log_p = log_prob_sum(model_trace, info.local_latents + info.observed, info, shape)
    log_q = log_prob_sum(guide_trace, info.guide_local_sites, info, shape)
    return log_p, log_q, guide_trace


def log_densities(
    model: Program, guide: Program, x: torch.Tensor, num_samples: int, info: ProgramInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x_i, z_{s,i}), log q(z_{s,i} | x_i))`` of ``num_samples`` vectorized guide samples.

    Each is a float64 tensor of shape ``(num_samples, len(x))``, differentiable with respect
    to model and guide parameters (pathwise through reparameterized sites; ``log q`` also
    through the distribution's parameters, as score-function estimators need).
    Enumerated model sites are summed out of ``log p``; auxiliary guide sites are part of ``log q``.
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
