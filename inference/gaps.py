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
Further families (``local_families``, e.g. a flow whose optimum approximates the
best achievable bound) are fitted too and reported beside it as
``elbo_local_<family>``, never instead of it, as Cremer et al. report
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
from typing import NamedTuple

import torch

from .ais import AISOptions, ais
from .diagnostics import PARETO_K_THRESHOLD
from .estimators import MAX_ELEMENTS, Estimate, check_num_samples, elbo, log_likelihood
from .families import OWN, FlowOptions, check_family
from .local import AdamConfig, LocalPosterior, StoppingRule, local_posterior
from .program import Program

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
    log_px_estimates: dict[str, Estimate] | None = None  #: with ``log_px="max"``, both estimates, by estimator

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

    def summary(self) -> dict[str, float]:
        """Mean over datapoints of each quantity, with two standard errors.

        ``<q>_se`` is the standard error of the mean over the evaluated datapoints
        (sd / sqrt(N); it covers both the spread of the data and Monte Carlo noise);
        ``<q>_mc_se`` is the Monte Carlo part alone, sqrt(sum of per-point SE^2) / N.
        """
        values, mc = self.per_datapoint(), self.monte_carlo_stderr()
        n = len(self.log_px.value)
        out: dict[str, float] = {"n_points": n}
        for key in QUANTITIES:
            v = values[key]
            out[key] = float(v.mean())
            out[f"{key}_se"] = float(v.std() / math.sqrt(n)) if n > 1 else math.nan
            out[f"{key}_mc_se"] = float(mc[key].pow(2).sum().sqrt() / n)
        out["local_converged_fraction"] = float(self.local.converged.double().mean())
        out["local_steps_mean"] = float(self.local.num_steps.double().mean())
        out["log_px_proposal_local_fraction"] = float(self.proposal_is_local.double().mean())
        out["log_px_samples"] = self.log_px.num_samples
        out["log_px_method"] = self.log_px_method
        if self.log_px.pareto_k is not None and not self.log_px.pareto_k.isnan().all():
            k_hat = self.log_px.pareto_k
            high = (k_hat > PARETO_K_THRESHOLD).nonzero().squeeze(-1)
            out["pareto_k_mean"], out["pareto_k_max"] = float(k_hat.mean()), float(k_hat.max())
            out["pareto_k_high_fraction"] = len(high) / n
            out["pareto_k_high_points"] = [int(i) for i in high]
        for name, est in (self.log_px_estimates or {}).items():
            out[f"log_px_{name}"] = float(est.value.mean())
            out[f"log_px_{name}_se"] = float(est.value.std() / math.sqrt(n)) if n > 1 else math.nan
            out[f"log_px_{name}_mc_se"] = float(est.stderr.pow(2).sum().sqrt() / n)
        out["local_family"] = self.family
        for name, other in (self.others or {}).items():
            v = other.elbo.value
            out[f"elbo_local_{name}"] = float(v.mean())
            out[f"elbo_local_{name}_se"] = float(v.std() / math.sqrt(n)) if n > 1 else math.nan
            out[f"elbo_local_{name}_mc_se"] = float(other.elbo.stderr.pow(2).sum().sqrt() / n)
            out[f"local_{name}_converged_fraction"] = float(other.converged.double().mean())
        return out


def gap_decomposition(
    model: Program,
    guide: Program,
    x: torch.Tensor,
    *,
    log_px_samples: int = 5000,
    elbo_samples: int = 1000,
    local_samples: int = 50,
    local_families: tuple[str, ...] = (),
    flow: FlowOptions = FlowOptions(),
    adam: AdamConfig = AdamConfig(),
    rule: StoppingRule = StoppingRule(),
    init: str = "encoder",
    log_px: str = "iwae",
    ais_options: AISOptions = AISOptions(),
    max_elements: int = MAX_ELEMENTS,
    progress: bool = False,
) -> GapDecomposition:
    """Estimate log p(x), L[q*] and L[q] for every row of ``x`` (see module docstring).

    q* is fitted in the guide's own family; ``local_families`` are further families fitted and
    reported beside it (a family named like the guide's own is not fitted twice).
    """
    log_px_samples = check_num_samples(log_px_samples, "log_px_samples")
    if log_px not in LOG_PX_METHODS:
        raise ValueError(f"unknown log p(x) estimator {log_px!r}; choose from {', '.join(LOG_PX_METHODS)}")
    extras = [check_family(f) for f in local_families]
    amortized = elbo(model, guide, x, elbo_samples, max_elements=max_elements)

    def fit(family: str) -> LocalPosterior:
        return local_posterior(
            model, guide, x, family=family, num_samples=local_samples, eval_samples=elbo_samples, adam=adam, rule=rule,
            init=init, flow=flow, max_elements=max_elements, progress=progress,
        )

    own = fit(OWN)
    fits = {own.guide.family: own}
    for family in extras:
        if family != OWN and family not in fits:
            fits[family] = fit(family)
    families = tuple(fits)
    # per datapoint, the proposal with the highest ELBO: q (index 0) or one of the q*'s
    candidates = [guide, *(f.guide for f in fits.values())]
    elbos = torch.stack([amortized.value, *(f.elbo.value for f in fits.values())])
    choice = len(elbos) - 1 - elbos.flip(0).argmax(0)  # ties go to the last, a q*
    primary = fits[families[0]]
    others = {f: fits[f] for f in families[1:]}
    estimates: dict[str, Estimate] = {}
    if log_px in ("iwae", "max"):
        estimates["iwae"] = _iwae_log_px(model, candidates, choice, x, log_px_samples, max_elements)
    if log_px in ("ais", "max"):
        o = ais_options
        estimates["ais"] = ais(model, guide, x, num_chains=o.num_chains, num_steps=o.num_steps, schedule=o.schedule, hmc=o.hmc,
                               init=o.init, max_elements=max_elements, progress=progress).log_px
    # "max": both are stochastic lower bounds; the one with the higher mean over these points is reported, as Cremer et al. do
    method = max(estimates, key=lambda name: float(estimates[name].value.mean()))
    proposal_is_local = choice > 0 if method == "iwae" else torch.zeros_like(choice, dtype=torch.bool)
    return GapDecomposition(
        estimates[method], primary.elbo, amortized, proposal_is_local, primary, families[0], others, method,
        estimates if log_px == "max" else None,
    )


def _iwae_log_px(model, candidates, choice: torch.Tensor, x: torch.Tensor, num_samples: int, max_elements: int) -> Estimate:
    """The importance-weighted bound of every datapoint with ``candidates[choice[i]]`` as its proposal (index 0: the amortized q)."""
    value, stderr, k_hat = (torch.empty(len(x), dtype=torch.float64, device=x.device) for _ in range(3))
    for k in [*range(1, len(candidates)), 0]:
        proposal, mask = candidates[k], choice == k
        if mask.any():
            index = mask.nonzero().squeeze(-1)
            proposal = proposal if k == 0 else proposal.subset(index)
            est = log_likelihood(model, proposal, x[index], num_samples, max_elements=max_elements, pareto=num_samples > 1)
            value[index], stderr[index] = est.value, est.stderr
            k_hat[index] = est.pareto_k if est.pareto_k is not None else math.nan
    return Estimate(value, stderr, num_samples, k_hat if num_samples > 1 else None)
