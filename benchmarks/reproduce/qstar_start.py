"""Experiment 11: where q* starts — from the prior (the reference code) or from the encoder (ours).

The reference code's local optimization starts every datapoint's q* at a standard normal; this project
starts it at the encoder's output (``LocalOptions(init="encoder")``). Both look for the same optimum, the
best per-datapoint FFG, so the approximation gap log p(x) − L[q*_FFG] should not depend on the start —
unless the stopping rule or the step cap ends one of them short of it. On experiment 1's FFG-trained model
and its points (both splits), q*_FFG is fitted twice with the budget's rule, samples and learning rate,
once from each start, with the same random streams keyed by datapoint (common random numbers, so the
paired difference carries little Monte Carlo noise); L[q*] is estimated with the budget's ELBO samples.
log p(x) is experiment 1's for those points (the higher of AIS and IWAE), shared by both starts.

Claims, paired on the same points: the approximation gap does not depend on q*'s start — an equivalence
test (:func:`inference.claims.judge_equal`) with the margin of experiment 2's "stays" claims (a share
:data:`benchmarks.reproduce.encoder_capacity.STAYS_MARGIN` of the gaps' mean, at least
:data:`~benchmarks.reproduce.encoder_capacity.STAYS_FLOOR` nats); and starting at the encoder saves steps.
"""

from __future__ import annotations

import dataclasses

import torch

from inference.claims import judge, judge_equal
from inference.local import LocalOptions, local_posterior

from .encoder_capacity import STAYS_FLOOR, STAYS_MARGIN
from .gaps_by_family import main_models
from .models import per_point
from .report import Report, stat

NAME = "qstar-start"
TITLE = "Where q* starts: the prior (reference code) or the encoder (ours)"
FIGURES = ()
STARTS = ("encoder", "prior")  #: :data:`inference.local.LOCAL_INITS`, ours first
SPLITS = ("train", "test")


def q_star_from_each_start(model, guide, x: torch.Tensor, options: LocalOptions, *, eval_samples: int, family: str = "ffg",
                           max_elements: int | None = None, seed: int | None = None) -> dict[str, dict[str, list]]:
    """q* of ``family`` fitted on every row of ``x`` from each of :data:`STARTS` under ``options`` (its ``init`` replaced).

    Returns, per start, per-point lists: ``elbo`` (L[q*], ``eval_samples`` samples), ``elbo_se`` (its Monte Carlo SE),
    ``steps`` and ``converged`` (stopped by the rule rather than the cap). With a ``seed`` every draw is keyed by
    (seed, datapoint), the same for both starts."""
    index = torch.arange(len(x), device=x.device)
    out = {}
    for start in STARTS:
        fit = local_posterior(model, guide, x, dataclasses.replace(options, init=start, families=()), family=family, eval_samples=eval_samples,
                              max_elements=max_elements, seed=seed, index=index if seed is not None else None)
        out[start] = {"elbo": fit.elbo.value.tolist(), "elbo_se": fit.elbo.stderr.tolist(), "steps": fit.num_steps.tolist(),
                      "converged": fit.converged.tolist()}
    return out


def start_claims(report: Report, log_px: torch.Tensor, fits: dict[str, dict[str, list]], context: str) -> dict[str, dict]:
    """The equivalence claim on the approximation gap (and the claim on steps) for one split; returns the two verdicts."""
    gaps = {start: log_px.double() - torch.tensor(fits[start]["elbo"]).double() for start in STARTS}
    margin = max(STAYS_FLOOR, STAYS_MARGIN * float(torch.cat(list(gaps.values())).mean()))
    same = judge_equal(f"approximation gap, q* from the prior = from the encoder (within {margin:.3f} nats)", gaps["prior"], gaps["encoder"],
                       margin).to_dict()
    report.claim("the approximation gap does not depend on q*'s start", same, context)
    steps = judge("steps from the prior > steps from the encoder", torch.tensor(fits["prior"]["steps"]).double(),
                  torch.tensor(fits["encoder"]["steps"]).double()).to_dict()
    report.claim("starting q* at the encoder takes fewer steps", steps, context)
    return {"same_gap": same, "steps": steps}


def fits_for(runner, name: str, model, guide, split: str) -> dict:
    """:func:`q_star_from_each_start` on ``split``'s points with the budget's local options, cached in ``OUT/evals``."""
    b = runner.budget
    x = runner.points(split)
    options = runner.local_options()
    config = {"what": "q*-start", "model": name, "split": split, "n": len(x), "starts": list(STARTS), "family": "ffg",
              "local": options.__repr__(), "elbo_samples": b.elbo_samples, "weights": runner._weights_digest(model, guide),
              "streams": "keyed"}

    def compute() -> dict:
        return q_star_from_each_start(model, guide, x, options, eval_samples=b.elbo_samples, max_elements=b.max_elements,
                                      seed=runner.eval_seed(config))

    return runner.evaluation(f"qstar-start-{name}-{split}-{runner._weights_digest(model, guide)}", config, compute)


def run(runner) -> Report:
    b = runner.budget
    m = main_models(runner, ("ffg",))["ffg"]
    results, rows = {"model": m["name"], "splits": {}}, []
    report = Report(NAME, TITLE, results)
    for split in SPLITS:
        summary = m["splits"][split]
        fits = fits_for(runner, m["name"], m["model"], m["guide"], split)
        log_px = per_point(summary, "log_px")
        verdicts = start_claims(report, log_px, fits, split)
        entry = {"log_px": summary["quantities"]["log_px"], "log_px_method": summary["log_px"]["method"], "starts": {}, "verdicts": verdicts}
        for start in STARTS:
            elbo = torch.tensor(fits[start]["elbo"]).double()
            steps = torch.tensor(fits[start]["steps"]).double()
            entry["starts"][start] = {"elbo": _mean_se(elbo), "approximation_gap": _mean_se(log_px.double() - elbo), "steps": _mean_se(steps),
                                      "converged_fraction": float(torch.tensor(fits[start]["converged"]).double().mean()),
                                      "per_point": fits[start]}
            s = entry["starts"][start]
            rows.append([split, start, stat(entry["log_px"]), stat(s["elbo"]), stat(s["approximation_gap"]), stat(s["steps"], 0),
                         f"{s['converged_fraction']:.2f}"])
        rows.append([split, "experiment 1's q* (encoder)", stat(entry["log_px"]), stat(summary["quantities"]["elbo_local"]),
                     stat(summary["quantities"]["approximation_gap"]), f"{summary['local']['steps_mean']:.0f}",
                     f"{summary['local']['converged_fraction']:.2f}"])
        results["splits"][split] = entry
    report.table(["split", "q* starts at", "log p(x)", "L[q*_FFG]", "approximation gap", "steps", "stopped by the rule"], rows)
    report.text(f"Model `{m['name']}` (experiment 1) on its {b.num_points} training and {b.num_points} held-out points; q*_FFG by Adam "
                f"(lr {b.local_lr}, {b.local_samples} samples a step), stopped after {b.local_patience} windows of {b.local_window} steps "
                f"without improvement or at {b.local_max_steps} steps; L[q*] with {b.elbo_samples} samples. The prior start is a standard "
                "normal (mean 0, scale 1) for every point, the reference code's; the encoder start is q itself. log p(x): experiment 1's "
                "(the higher of AIS and IWAE), shared by both starts. The last row of each split is experiment 1's own q* (encoder start, "
                "its own draws), for comparison.")
    return report


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    n = len(values)
    return {"mean": float(values.mean()), "se": float(values.std() / n**0.5) if n > 1 else float("nan")}
