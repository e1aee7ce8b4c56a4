"""Experiment 3: flows and amortization (Cremer, Li & Duvenaud 2018, Section 5.3, "the influence of flows on amortization").

As in the paper's code, the decoder is fixed (the FFG-trained model of experiment 1, frozen) and only
encoders are trained on it, from small (linear) encoders: an FFG encoder, a flow encoder (the same
linear base through the flow), and an FFG encoder with one hidden layer sized so that it has as many
parameters as the flow encoder ("matched size"). With the decoder fixed, log p(x) is the same for all
three, so the gaps compare the encoders alone. Claim: the flow's extra parameters reduce the
amortization gap L[q*] − L[q] (q* in each encoder's own family), not only the approximation gap, and
more than the same number of parameters spent on an FFG encoder does (paired tests on the same points).
"""

from __future__ import annotations

from inference.claims import judge

from .models import FLOW, encoder_on_fixed_decoder, num_parameters, per_point, vae
from .report import Report, stat

NAME = "flows-amortization"
TITLE = "Flows and amortization (Cremer, Li & Duvenaud 2018)"
FIGURES = ()


def matched_width(runner, target: int) -> int:
    """The hidden width w of a one-hidden-layer FFG encoder with about ``target`` parameters: D w + w + 2k w + 2k."""
    d, k = runner.data_dim, runner.budget.latent_dim
    return max(1, round((target - 2 * k) / (d + 1 + 2 * k)))


def run(runner) -> Report:
    name, model, _, _ = vae(runner, "ffg")  # experiment 1's FFG model: its decoder is the fixed one (its evaluation is not needed)
    base = {"name": name, "model": model}
    decoder = (base["name"], base["model"])
    encoders = {}
    name, model, guide, done = encoder_on_fixed_decoder(runner, FLOW, (), *decoder)
    encoders["flow, linear"] = (name, model, guide)
    flow_params = num_parameters(guide)
    width = matched_width(runner, flow_params)
    for label, sizes in (("FFG, linear", ()), (f"FFG, one hidden layer of {width} (matched)", (width,))):
        name, model, guide, done = encoder_on_fixed_decoder(runner, "ffg", sizes, *decoder)
        encoders[label] = (name, model, guide)
    results, rows = {}, []
    for label, (name, model, guide) in encoders.items():
        splits = {split: runner.gaps(name, model, guide, split, families=(), log_px="iwae") for split in ("train", "test")}
        results[label] = {"model": name, "parameters": num_parameters(guide), "splits": splits}
        for split, s in splits.items():
            q = s["quantities"]
            rows.append([label, results[label]["parameters"], split, stat(q["log_px"]), stat(q["elbo_local"]), stat(q["elbo_amortized"]),
                         stat(q["approximation_gap"]), stat(q["amortization_gap"])])
    report = Report(NAME, TITLE, {"decoder": base["name"], "encoders": results, "matched_width": width})
    report.table(["encoder", "parameters", "split", "log p(x)", "L[q*] (own family)", "L[q]", "approximation gap", "amortization gap"], rows)
    report.text(f"Decoder: `{base['name']}` (experiment 1), frozen; each encoder trained alone for {runner.budget.epochs} epochs. "
                "log p(x): the decoder's, shared by every evaluation of it on these points (the section below).")
    labels = list(encoders)
    flow, ffg, matched = labels[0], labels[1], labels[2]
    for split in ("train", "test"):
        gap = {label: per_point(results[label]["splits"][split], "amortization_gap") for label in labels}
        report.claim("the flow's parameters reduce the amortization gap", judge(
            f"amortization gap of {ffg} > of {flow}", gap[ffg], gap[flow]).to_dict(), split)
        report.claim("... more than as many parameters in an FFG encoder do", judge(
            f"amortization gap of {matched} > of {flow}", gap[matched], gap[flow]).to_dict(), split)
    return report
