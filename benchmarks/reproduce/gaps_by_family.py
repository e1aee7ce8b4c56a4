"""Experiment 1: the gaps by family, the main table of Cremer, Li & Duvenaud (2018).

The same VAE trained twice, with an FFG encoder and with a flow encoder; for each, on training and
held-out points: log p(x) (the higher of AIS and the IWAE bound, both shown), L[q*_flow], L[q*_FFG]
(the best per-datapoint member of each family), L[q], and the approximation gap
log p(x) − L[q*] and the amortization gap L[q*] − L[q], with q* in the family the encoder was
trained with. Claim checked per model and split by a paired test: the amortization gap is the
larger part of the inference gap.
"""

from __future__ import annotations

from inference.claims import judge

from .models import FLOW, family_stat, gap_claim, per_point, vae
from .report import Report, stat

NAME = "gaps-by-family"
TITLE = "Gaps by family (Cremer, Li & Duvenaud 2018, the main table)"
FIGURES = ()
PAPER_CLAIM = "the amortization gap is the larger part of the inference gap"


def main_models(runner, families: tuple[str, ...] = ("ffg", FLOW)):
    """The FFG-trained and flow-trained models (or those of ``families``), and their gap summaries on both splits (shared
    with experiments 4 and 7; experiments 2 and 3 need only the trained FFG model, :func:`benchmarks.reproduce.models.vae`)."""
    out = {}
    for family in families:
        name, model, guide, done = vae(runner, family)
        out[family] = {"name": name, "model": model, "guide": guide, "done": done,
                       "splits": {split: runner.gaps(name, model, guide, split) for split in ("train", "test")}}
    return out


def run(runner) -> Report:
    models = main_models(runner)
    results = {family: {"model": m["name"], "train_seconds": m["done"]["train_seconds"], "splits": m["splits"]} for family, m in models.items()}
    report = Report(NAME, TITLE, results)
    report.table(*main_table(results))
    b = runner.budget
    report.text(f"{b.num_points} training and {b.num_points} held-out points; the gaps use q* in the family the encoder was trained with "
                f"(FFG, or a per-datapoint {FLOW} flow of the encoder's size: {b.flow_layers} transforms of {b.flow_hidden} hidden units). "
                f"log p(x): the decoder's, shared by every experiment that evaluates it on these points (the section below): the "
                f"higher mean of AIS ({b.ais_chains} chains, sigmoid steps from the prior, {b.ais_leapfrog} leapfrog steps, the steps "
                f"calibrated against the IWAE) and the IWAE bound (K = {b.log_px_samples}, per point the proposal with the highest "
                "ELBO among every q and q* fitted for the decoder).")
    for family, m in models.items():
        for split, s in m["splits"].items():
            gap_claim(report, PAPER_CLAIM, s, f"{LABELS[family]}, {split}")
            flow_short_of_ffg(report, s, f"{LABELS[family]}, {split}")
    return report


LABELS = {"ffg": "FFG-trained", FLOW: "flow-trained"}


def main_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """The main table's header and rows from the experiment's results (in memory or read back from its JSON)."""
    columns = [(family, split) for family in ("ffg", FLOW) for split in ("train", "test") if family in results]

    def row(label, get):
        return [label, *(get(results[f]["splits"][s]) for f, s in columns)]

    def estimate(name):
        return lambda s: stat(s["log_px"]["estimates"].get(name)) if s["log_px"]["estimates"] else "—"

    def best(s):
        return stat(s["quantities"]["elbo_best"]) if "elbo_best" in s["quantities"] else "—"

    header = ["", *(f"{LABELS[f]}, {s}" for f, s in columns)]
    return header, [
        row("log p(x) (reported)", lambda s: stat(s["quantities"]["log_px"]) + f" ({s['log_px']['method']})"),
        row("log p(x), AIS", estimate("ais")),
        row("log p(x), IWAE", estimate("iwae")),
        row("L[q*_flow]", lambda s: stat(family_stat(s, FLOW))),
        row("L[q*_FFG]", lambda s: stat(family_stat(s, "ffg"))),
        row("L[q*], best for the decoder", best),
        row("L[q]", lambda s: stat(s["quantities"]["elbo_amortized"])),
        row("approximation gap", lambda s: stat(s["quantities"]["approximation_gap"])),
        row("amortization gap", lambda s: stat(s["quantities"]["amortization_gap"])),
        row("inference gap", lambda s: stat(s["quantities"]["inference_gap"])),
        row("PSIS k̂ > 0.7 (share of points)", lambda s: "—" if s["log_px"]["pareto_k"] is None else f"{s['log_px']['pareto_k']['high_fraction']:.2f}"),
        row("q* stopped by the rule", lambda s: f"{s['local']['converged_fraction']:.2f}"),
    ]


def flow_short_of_ffg(report: Report, summary: dict, context: str) -> dict | None:
    """Warn when L[q*_flow] falls short of L[q*_FFG] beyond noise (paired): the per-datapoint flow family holds the FFG
    (zero output weights make it the identity), so its optimum is at least as high, and a shortfall means its optimization
    stopped early and the gaps measured with it overstate the approximation gap. Returns the verdict when it warns."""
    if "ffg" not in _families(summary) or FLOW not in _families(summary):
        return None
    verdict = judge("L[q*_FFG] > L[q*_flow]", per_point(summary, "elbo_local", "ffg"), per_point(summary, "elbo_local", FLOW)).to_dict()
    if verdict["status"] != "holds":
        return None
    report.text(f"⚠ {context}: q*_flow fell short of q*_FFG ({verdict['text']}). The flow family contains the FFG, so its local "
                "optimization stopped early here: read its L[q*_flow] as a lower bound on the family's best, and its approximation "
                "gap as an overestimate.")
    return verdict


def _families(summary: dict) -> set[str]:
    return {summary["local"]["family"], *summary.get("others", {})}
