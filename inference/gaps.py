r"""The inference-gap decomposition of Cremer, Li & Duvenaud (2018).

For each datapoint, with :math:`q` the amortized guide and :math:`q^*` the best
member of its family found for that datapoint alone (:mod:`inference.local`):

.. math::
    \underbrace{\log p(x) - \mathcal{L}[q]}_{\text{inference gap}}
    = \underbrace{\log p(x) - \mathcal{L}[q^*]}_{\text{approximation gap}}
    + \underbrace{\mathcal{L}[q^*] - \mathcal{L}[q]}_{\text{amortization gap}}.

:math:`q^*` is always sought in the amortized guide's *own* family
(:func:`inference.families.own_family`: an FFG encoder's q* is a free FFG, a flow
encoder's a per-datapoint flow of the same size, the ladder guide's free bottom-up
statistics merged with the model's top-down networks), so that the amortization gap
compares q with the best member of *its* family and is never negative beyond noise.
Further families (``local.families``, e.g. a flow whose optimum approximates the
best achievable bound) are fitted too and reported beside it as
``others[<family>]``, never instead of it, as Cremer et al. report
:math:`\mathcal{L}[q^*_{FFG}]` and :math:`\mathcal{L}[q^*_{Flow}]` side by side.

:math:`\log p(x)` is estimated by the importance-weighted bound with ``K``
samples whose proposal, per datapoint, is whichever of :math:`q` and the
:math:`q^*`'s has the highest ELBO (chosen on independent samples, so the
estimate stays a stochastic lower bound), or (``log_px="ais"``) by annealed
importance sampling (:mod:`inference.ais`), or (``log_px="max"``) by both, reporting
the one with the higher mean over the evaluated points (both are stochastic lower
bounds; Cremer et al.'s code reports the larger of the two dataset averages). Either way each datapoint's weights get
a PSIS :math:`\hat k` (:func:`inference.diagnostics.pareto_k`); the summary
reports the share of points above 0.7, whose estimates are unreliable.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .ais import AISOptions, ais
from .claims import judge
from .diagnostics import PARETO_K_THRESHOLD
from .enumeration import exact_log_px, is_enumerable
from .estimators import Estimate, elbo, iwae_log_px
from .families import OWN
from .inclusion import continue_within, inclusion_verdict, is_ffg, is_flow
from .local import LocalOptions, LocalPosterior, local_posterior
from .program import Program
from .stats import mean_se
from .streams import point_stream
from .validation import positive_int

LOG_PX_METHODS = ("iwae", "ais", "max")
QUANTITIES = ("log_px", "elbo_local", "elbo_amortized", "approximation_gap", "amortization_gap", "inference_gap")


class GapDecomposition(NamedTuple):
    """Per-datapoint results, each of shape ``(N,)`` (float64)."""

    log_px: Estimate
    elbo_local: Estimate
    elbo_amortized: Estimate
    proposal_is_local: torch.Tensor  #: (N,) bool: a q* (not q) was the proposal for log p(x)
    local: LocalPosterior
    family: str = "ffg"  #: the name of ``local``'s family (the guide's own), the q* of the approximation gap
    others: dict[str, LocalPosterior] | None = None  #: q* of further families, by name
    log_px_method: str = "iwae"  #: "iwae" or "ais": the estimator of ``log_px``
    log_px_estimates: dict[str, Estimate] | None = None  #: every estimate computed (both with ``log_px="max"``), by estimator
    iwae_proposal_is_local: torch.Tensor | None = None  #: (N,) bool: a q* was the IWAE estimate's proposal (whichever is reported)
    #: with a flow and an FFG q* both fitted: ``{"flow", "ffg"}`` (their families), ``flow_before`` (N,) L[q*_flow] before
    #: the points below L[q*_FFG] were continued (:mod:`inference.inclusion`) and ``continued`` (N,) bool
    inclusion: dict[str, Any] | None = None

    def per_datapoint(self) -> dict[str, torch.Tensor]:
        """Every quantity of :data:`QUANTITIES` per datapoint; the gaps add up exactly."""
        lp, ll, la = self.log_px.value, self.elbo_local.value, self.elbo_amortized.value
        return {
            "log_px": lp, "elbo_local": ll, "elbo_amortized": la,
            "approximation_gap": lp - ll, "amortization_gap": ll - la, "inference_gap": lp - la,
        }

    def monte_carlo_stderr(self) -> dict[str, torch.Tensor]:
        """Per-datapoint Monte Carlo standard errors (independent estimates, added in quadrature)."""
        sp, sl, sa = self.log_px.stderr, self.elbo_local.stderr, self.elbo_amortized.stderr
        quad = lambda a, b: (a**2 + b**2).sqrt()  # noqa: E731
        return {
            "log_px": sp, "elbo_local": sl, "elbo_amortized": sa,
            "approximation_gap": quad(sp, sl), "amortization_gap": quad(sl, sa), "inference_gap": quad(sp, sa),
        }

    def summary(self) -> dict[str, Any]:
        """Means over datapoints with their standard errors, apart from what describes them.

        Returns ``{"n_points", "quantities", "per_point", "claims", "local", "others", "log_px"}``: ``quantities`` maps each
        of :data:`QUANTITIES` to ``{"mean", "se", "mc_se"}``, where ``se`` is the standard error of
        the mean over the evaluated datapoints (sd / sqrt(N); it covers both the spread of the data
        and Monte Carlo noise) and ``mc_se`` the Monte Carlo part alone, sqrt(sum of per-point SE^2) / N;
        ``local`` describes the q* (family, share stopped by the rule, mean steps); ``others`` gives each
        further family's L[q*] (with its per-point values) and stopping share; ``log_px`` the estimator, its K, the share of points
        whose proposal was a q*, both estimates under ``log_px="max"`` (with their per-point values and Monte Carlo standard errors), and the PSIS k-hat of the weights.
        ``per_point`` holds every quantity per datapoint, in the order of the points (so runs can be
        compared point by point), and ``claims`` the verdict on Cremer et al.'s claim that the
        amortization gap is the larger part, by a paired test (:func:`inference.claims.judge`).
        """
        values, mc = self.per_datapoint(), self.monte_carlo_stderr()
        n = len(self.log_px.value)
        log_px: dict[str, Any] = {
            "method": self.log_px_method, "num_samples": self.log_px.num_samples,
            "proposal_local_fraction": float(self.proposal_is_local.double().mean()),
            "estimates": {name: {**_statistics(est.value, est.stderr), "per_point": [float(v) for v in est.value],
                                 "per_point_se": [float(v) for v in est.stderr]}
                          for name, est in (self.log_px_estimates or {}).items()},
            "pareto_k": None,
        }
        if self.log_px.pareto_k is not None and not self.log_px.pareto_k.isnan().all():
            k_hat = self.log_px.pareto_k
            high = (k_hat > PARETO_K_THRESHOLD).nonzero().squeeze(-1)
            log_px["pareto_k"] = {
                "mean": float(k_hat.mean()), "max": float(k_hat.max()), "high_fraction": len(high) / n,
                "high_points": [int(i) for i in high],
            }
        claims = []
        if n > 1:  # Cremer et al. (2018): the amortization gap is the larger part of the inference gap (a paired test)
            claims.append(judge("amortization gap > approximation gap", values["amortization_gap"], values["approximation_gap"]).to_dict())
        return {
            "n_points": n,
            "inclusion": self._inclusion_summary(),
            "quantities": {key: _statistics(values[key], mc[key]) for key in QUANTITIES},
            "per_point": {key: [float(v) for v in values[key]] for key in QUANTITIES},
            "claims": claims,
            "local": {
                "family": self.family, "converged_fraction": float(self.local.converged.double().mean()),
                "steps_mean": float(self.local.num_steps.double().mean()),
            },
            "others": {
                name: {"elbo": _statistics(other.elbo.value, other.elbo.stderr), "converged_fraction": float(other.converged.double().mean()),
                       "per_point": [float(v) for v in other.elbo.value]}
                for name, other in (self.others or {}).items()
            },
            "log_px": log_px,
        }


    def fits(self) -> dict[str, LocalPosterior]:
        """Every q* by family: the guide's own and the further ones."""
        return {self.family: self.local, **(self.others or {})}

    def _inclusion_summary(self) -> dict[str, Any] | None:
        """The family-inclusion check (:mod:`inference.inclusion`): the points continued and the paired verdict on
        "L[q*_FFG] > L[q*_flow]" before and after; None unless a flow and an FFG q* were both fitted."""
        if self.inclusion is None:
            return None
        fits = self.fits()
        ffg, flow = fits[self.inclusion["ffg"]].elbo.value, fits[self.inclusion["flow"]].elbo.value
        continued = self.inclusion["continued"]
        several = len(ffg) > 1
        return {"flow": self.inclusion["flow"], "ffg": self.inclusion["ffg"], "continued_points": int(continued.sum()),
                "continued": [int(i) for i in continued.nonzero().squeeze(-1)],
                "before": inclusion_verdict(ffg, self.inclusion["flow_before"]) if several else None,
                "after": inclusion_verdict(ffg, flow) if several else None}


def _statistics(values: torch.Tensor, stderr: torch.Tensor) -> dict[str, float]:
    """``{"mean", "se", "mc_se"}`` of per-datapoint ``values`` with per-datapoint Monte Carlo ``stderr``."""
    mean, se = mean_se(values)
    return {"mean": mean, "se": se, "mc_se": float(stderr.pow(2).sum().sqrt() / len(values))}


class ExactReference(NamedTuple):
    """The exact answers known for a pair, to set beside the estimates."""

    log_px: torch.Tensor  #: (N,) exact log p(x) per datapoint (float64)
    source: str  #: "closed form" or "enumeration"
    approximation_gap: float | None  #: the exact mean approximation gap of the q* family, where known

    def summary(self) -> dict[str, Any]:
        mean, se = mean_se(self.log_px)
        return {"log_px": {"mean": mean, "se": se}, "source": self.source, "approximation_gap": self.approximation_gap}


def exact_reference(model: Program, guide: Program, x: torch.Tensor, family: str, max_elements: int | None = None) -> ExactReference | None:
    """Exact log p(x) where it is known, and the exact approximation gap of q*'s ``family`` where the family allows.

    log p(x): the model's closed form (``model.log_px``, PPCA and the mixture), else
    enumeration for few discrete latents; None when neither applies. Approximation gap:
    the model's closed form (``model.approximation_gap``, PPCA) for ``ffg``; 0 for ``full`` on
    such a model and for ``categorical`` (those families hold the exact posterior).
    """
    with torch.no_grad():
        if hasattr(model, "log_px"):
            exact, source = model.log_px(x).double(), "closed form"
        elif is_enumerable(model, guide, x):
            exact, source = exact_log_px(model, guide, x, max_elements=max_elements), "enumeration"
        else:
            return None
        gap = None
        if hasattr(model, "approximation_gap") and family == "ffg":
            gap = float(model.approximation_gap(x).double().mean())
        elif (hasattr(model, "approximation_gap") and family == "full") or family == "categorical":
            gap = 0.0
    return ExactReference(exact, source, gap)


def gap_decomposition(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    log_px_samples: int = 5000,
    elbo_samples: int = 1000,
    local: LocalOptions = LocalOptions(),
    log_px: str = "iwae",
    ais_options: AISOptions = AISOptions(),
    max_elements: int | None = None,
    progress: bool = False,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    continue_flows: bool = True,
) -> GapDecomposition:
    """Estimate log p(x), L[q*] and L[q] for every row of ``x`` (see module docstring).

    With a flow q* and an FFG q* both fitted, the flow fit of every point left below its FFG q* is continued from it
    (``continue_flows``, :func:`inference.inclusion.continue_within`): the flow family contains the FFG.

    q* is fitted in the guide's own family with ``local`` (samples per step, Adam, stopping rule,
    start); ``local.families`` are further families fitted and reported beside it (a family
    named like the guide's own is not fitted twice). With a ``seed``, every estimate draws numbers
    keyed by (seed, index of the datapoint) (:mod:`inference.streams`; ``index`` defaults to
    ``0..N-1``): a datapoint's results do not depend on the points evaluated with it, except that
    ``log_px="max"`` picks its estimator by the mean over all of them (:func:`choose_log_px`).
    """
    stream = point_stream(seed, x, index)  # checks seed and index
    index = stream.index if stream is not None else None
    log_px_samples = positive_int(log_px_samples, "log_px_samples")
    elbo_samples = positive_int(elbo_samples, "elbo_samples")  # the caller's own argument, not the estimator's num_samples
    if log_px not in LOG_PX_METHODS:
        raise ValueError(f"unknown log p(x) estimator {log_px!r}; choose from {', '.join(LOG_PX_METHODS)}")
    amortized = elbo(model, guide, x, elbo_samples, max_elements=max_elements, seed=seed, index=index)

    def fit(family: str) -> LocalPosterior:
        return local_posterior(model, guide, x, local, family=family, eval_samples=elbo_samples, max_elements=max_elements,
                               progress=progress, seed=seed, index=index)

    own = fit(OWN)
    fits = {own.guide.family: own}
    for family in local.families:
        if family != OWN and family not in fits:
            fits[family] = fit(family)
    inclusion = None
    ffg = next((f for f in fits.values() if is_ffg(f)), None)
    flow_family = next((name for name, f in fits.items() if is_flow(f)), None)
    if continue_flows and ffg is not None and flow_family is not None:  # the flow family contains the FFG: no flow q* below it
        before = fits[flow_family].elbo.value
        continued = continue_within(model, guide, x, fits[flow_family], ffg, local, eval_samples=elbo_samples, max_elements=max_elements,
                                    progress=progress, seed=seed, index=index)
        fits[flow_family] = continued.fit
        mask = torch.zeros(len(x), dtype=torch.bool, device=before.device)
        mask[continued.points] = True
        inclusion = {"flow": flow_family, "ffg": ffg.guide.family, "flow_before": before, "continued": mask}
    families = tuple(fits)
    # per datapoint, the proposal with the highest ELBO: q (index 0) or one of the q*'s
    candidates = [guide, *(f.guide for f in fits.values())]
    elbos = torch.stack([amortized.value, *(f.elbo.value for f in fits.values())])
    choice = len(elbos) - 1 - elbos.flip(0).argmax(0)  # ties go to the last, a q*
    primary = fits[families[0]]
    others = {f: fits[f] for f in families[1:]}
    estimates: dict[str, Estimate] = {}
    if log_px in ("iwae", "max"):
        estimates["iwae"] = _iwae_log_px(model, candidates, choice, x, log_px_samples, max_elements, seed, index)
    if log_px in ("ais", "max"):
        o = ais_options
        estimates["ais"] = ais(model, guide, x, num_chains=o.num_chains, num_steps=o.num_steps, schedule=o.schedule, hmc=o.hmc,
                               init=o.init, max_elements=max_elements, progress=progress, seed=seed, index=index).log_px
    found = GapDecomposition(amortized, primary.elbo, amortized, choice > 0, primary, families[0], others, "iwae", estimates, choice > 0,
                             inclusion)
    return choose_log_px(found)


def choose_log_px(result: GapDecomposition) -> GapDecomposition:
    """``result`` reporting whichever of its ``log_px_estimates`` has the higher mean over its points.

    With ``log_px="max"`` both are stochastic lower bounds and the larger is reported, as Cremer et al.
    do; with one estimator, that one. ``proposal_is_local`` follows the reported estimator. Every
    estimate is kept (``log_px_estimates``, with per-point standard errors in the summary). A sharded
    evaluation calls it again on the gathered points, so the choice is the same as in one process.
    """
    estimates = result.log_px_estimates
    method = max(estimates, key=lambda name: float(estimates[name].value.mean()))
    iwae_local = result.iwae_proposal_is_local
    return result._replace(log_px=estimates[method], log_px_method=method,
                           proposal_is_local=iwae_local if method == "iwae" else torch.zeros_like(iwae_local),
                           log_px_estimates=estimates)


def _iwae_log_px(
    model, candidates, choice: torch.Tensor, x: torch.Tensor, num_samples: int, max_elements: int, seed: int | None = None,
    index: torch.Tensor | None = None,
) -> Estimate:
    """The importance-weighted bound of every datapoint with ``candidates[choice[i]]`` as its proposal (index 0: the amortized q)."""
    value, stderr, k_hat = (torch.empty(len(x), dtype=torch.float64, device=x.device) for _ in range(3))
    for k in [*range(1, len(candidates)), 0]:
        proposal, mask = candidates[k], choice == k
        if mask.any():
            rows = mask.nonzero().squeeze(-1)
            proposal = proposal if k == 0 else proposal.subset(rows)
            est = iwae_log_px(model, proposal, x[rows], num_samples, max_elements=max_elements, pareto=num_samples > 1,
                              seed=seed, index=None if index is None else index[rows])
            value[rows], stderr[rows] = est.value, est.stderr
            k_hat[rows] = est.pareto_k if est.pareto_k is not None else math.nan
    return Estimate(value, stderr, num_samples, k_hat if num_samples > 1 else None)


# ---- gathering shards -------------------------------------------------------------------------------------------------


def portable(result: GapDecomposition) -> GapDecomposition:
    """``result`` with its tensors on the CPU and the fitted q* guides dropped: what one shard sends to rank 0."""
    return from_state(to_state(result))[0]


def _cat_estimates(parts: list[Estimate]) -> Estimate:
    pareto = None if any(p.pareto_k is None for p in parts) else torch.cat([p.pareto_k for p in parts])
    return Estimate(torch.cat([p.value for p in parts]), torch.cat([p.stderr for p in parts]), parts[0].num_samples, pareto)


def _cat_local(parts: list[LocalPosterior]) -> LocalPosterior:
    return LocalPosterior(None, _cat_estimates([p.elbo for p in parts]), torch.cat([p.num_steps for p in parts]),
                          torch.cat([p.converged for p in parts]))


def concatenate(parts: list[GapDecomposition]) -> GapDecomposition:
    """The decomposition of consecutive shards' points, in order (:func:`portable` parts); with both log p(x) estimates
    kept (``log_px="max"``) the reported one is chosen again over all the points, as one process would."""
    first = parts[0]
    both = first.log_px_estimates is not None
    merged = first._replace(
        log_px=_cat_estimates([p.log_px for p in parts]), elbo_local=_cat_estimates([p.elbo_local for p in parts]),
        elbo_amortized=_cat_estimates([p.elbo_amortized for p in parts]),
        proposal_is_local=torch.cat([p.proposal_is_local for p in parts]), local=_cat_local([p.local for p in parts]),
        others={k: _cat_local([p.others[k] for p in parts]) for k in (first.others or {})},
        log_px_estimates={k: _cat_estimates([p.log_px_estimates[k] for p in parts]) for k in first.log_px_estimates} if both else None,
        iwae_proposal_is_local=torch.cat([p.iwae_proposal_is_local for p in parts]),
        inclusion=None if first.inclusion is None else {
            **{k: first.inclusion[k] for k in ("flow", "ffg")},
            **{k: torch.cat([p.inclusion[k] for p in parts]) for k in ("flow_before", "continued")}},
    )
    return choose_log_px(merged) if both else merged


def concatenate_exact(parts: list[ExactReference | None]) -> ExactReference | None:
    """The exact reference of consecutive shards' points (its mean approximation gap weighted by the shards' sizes)."""
    if not parts or parts[0] is None:
        return None
    log_px = torch.cat([p.log_px.cpu() for p in parts])
    gaps = [p.approximation_gap for p in parts]
    gap = None if any(g is None for g in gaps) else sum(g * len(p.log_px) for g, p in zip(gaps, parts)) / len(log_px)
    return ExactReference(log_px, parts[0].source, gap)


def _estimate_state(est: Estimate) -> dict[str, Any]:
    return {"value": est.value.cpu(), "stderr": est.stderr.cpu(), "num_samples": est.num_samples,
            "pareto_k": None if est.pareto_k is None else est.pareto_k.cpu()}


def _local_state(fit: LocalPosterior) -> dict[str, Any]:
    return {"elbo": _estimate_state(fit.elbo), "num_steps": fit.num_steps.cpu(), "converged": fit.converged.cpu()}


def _local_from(state: dict[str, Any]) -> LocalPosterior:
    return LocalPosterior(None, Estimate(**state["elbo"]), state["num_steps"], state["converged"])


def to_state(result: GapDecomposition, exact: ExactReference | None = None) -> dict[str, Any]:
    """``result`` (and its exact reference) as plain dicts of CPU tensors: what ``torch.load(..., weights_only=True)``
    reads back (:func:`from_state`), for the finished blocks of a resumable evaluation. The q* guides are not kept."""
    return {
        "log_px": _estimate_state(result.log_px), "elbo_local": _estimate_state(result.elbo_local),
        "elbo_amortized": _estimate_state(result.elbo_amortized), "proposal_is_local": result.proposal_is_local.cpu(),
        "local": _local_state(result.local), "family": result.family,
        "others": {k: _local_state(v) for k, v in (result.others or {}).items()}, "log_px_method": result.log_px_method,
        "log_px_estimates": {k: _estimate_state(v) for k, v in result.log_px_estimates.items()} if result.log_px_estimates else None,
        "iwae_proposal_is_local": None if result.iwae_proposal_is_local is None else result.iwae_proposal_is_local.cpu(),
        "exact": None if exact is None else {"log_px": exact.log_px.cpu(), "source": exact.source, "approximation_gap": exact.approximation_gap},
        "inclusion": None if result.inclusion is None else {
            "flow": result.inclusion["flow"], "ffg": result.inclusion["ffg"], "flow_before": result.inclusion["flow_before"].cpu(),
            "continued": result.inclusion["continued"].cpu()},
    }


def from_state(state: dict[str, Any]) -> tuple[GapDecomposition, ExactReference | None]:
    """The decomposition (q* guides dropped) and exact reference that :func:`to_state` wrote."""
    estimates = state["log_px_estimates"]
    result = GapDecomposition(
        Estimate(**state["log_px"]), Estimate(**state["elbo_local"]), Estimate(**state["elbo_amortized"]), state["proposal_is_local"],
        _local_from(state["local"]), state["family"], {k: _local_from(v) for k, v in state["others"].items()}, state["log_px_method"],
        {k: Estimate(**v) for k, v in estimates.items()} if estimates else None, state["iwae_proposal_is_local"], state.get("inclusion"),
    )
    exact = state["exact"]
    return result, None if exact is None else ExactReference(exact["log_px"], exact["source"], exact["approximation_gap"])
