"""Experiment 4: the generator adapts to the approximation (Cremer, Li & Duvenaud 2018, Section 5.2).

The FFG-trained and the flow-trained models of experiment 1, each evaluated with q*_FFG and
q*_flow on the same points. Claims, each a paired test on the same datapoints:

* under the FFG-trained decoder the FFG's approximation gap log p(x) − L[q*_FFG] is smaller than
  under the flow-trained decoder: a decoder trained with an FFG makes its true posteriors more
  Gaussian;
* under the flow-trained decoder q*_flow is better than q*_FFG (the FFG's approximation gap is
  the larger), while under the FFG-trained decoder the two are close.
"""

from __future__ import annotations

from inference.claims import judge

from .gaps_by_family import main_models
from .models import FLOW, iwae_log_px, per_point
from .report import Report

NAME = "generator-adapts"
TITLE = "The generator adapts to the approximation (Cremer, Li & Duvenaud 2018)"
FIGURES = ()


def run(runner) -> Report:
    models = main_models(runner)
    labels = {"ffg": "FFG-trained", FLOW: "flow-trained"}
    results, rows = {}, []
    report = Report(NAME, TITLE, results)
    for split in ("train", "test"):
        gaps = {}
        for trained in ("ffg", FLOW):
            s = models[trained]["splits"][split]
            for family in ("ffg", FLOW):  # log p(x) by the same estimator (IWAE) for both decoders
                gap = iwae_log_px(s) - per_point(s, "elbo_local", family)
                gaps[trained, family] = gap
                mean = float(gap.mean())
                se = float(gap.std() / len(gap) ** 0.5)
                results.setdefault(split, {})[f"{trained}-trained, q*_{family}"] = {"mean": mean, "se": se, "per_point": gap.tolist()}
        rows.append([split, *(f"{float(gaps[t, f].mean()):.3f} ± {float(gaps[t, f].std() / len(gaps[t, f]) ** 0.5):.3f}"
                              for t in ("ffg", FLOW) for f in ("ffg", FLOW))])
        report.claim("under the FFG-trained decoder the FFG's approximation gap is smaller (its true posteriors are more Gaussian)",
                     judge("FFG approximation gap, flow-trained decoder > FFG-trained decoder", gaps[FLOW, "ffg"], gaps["ffg", "ffg"]).to_dict(), split)
        report.claim("under the flow-trained decoder q*_FFG is worse than q*_flow",
                     judge("flow-trained decoder: FFG approximation gap > flow approximation gap", gaps[FLOW, "ffg"], gaps[FLOW, FLOW]).to_dict(), split)
    report.table(["split", *(f"{labels[t]} decoder, gap of q*_{f}" for t in ("ffg", FLOW) for f in ("ffg", FLOW))], rows)
    report.text("Approximation gap log p(x) − L[q*] of each family (nats), on the same points for both decoders; log p(x) is each "
                "model's IWAE estimate (K and proposals as in experiment 1; the same estimator for both decoders, whichever one "
                "experiment 1 reports). The paired tests compare the two decoders point by point.")
    return report
