"""Markdown tables and figures of the benchmarks' results: the one place that turns result dicts into text and PNG."""

from __future__ import annotations

from typing import Any

from inference.gaps import QUANTITIES

LABELS = {
    "log_px": "log p(x)", "elbo_local": "L[q*]", "elbo_amortized": "L[q]",
    "approximation_gap": "approximation gap", "amortization_gap": "amortization gap", "inference_gap": "inference gap",
}


def cell(stat: dict[str, float], digits: int = 3) -> str:
    """``mean ± se`` of a ``{"mean", "se"}`` statistic."""
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def gap_table(splits: dict[str, dict[str, Any]]) -> str:
    """One row per split: log p(x), L[q*] of the guide's own family, L[q*] of the further families, L[q] and the gaps."""
    first = next(iter(splits.values()))
    family, others = first["local"]["family"], list(first["others"])
    labels = [LABELS["log_px"], f"L[q*_{family}]", *(f"L[q*_{o}]" for o in others), *(LABELS[q] for q in QUANTITIES[2:])]
    rows = ["| split | N | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for split, s in splits.items():
        q = s["quantities"]
        cells = [cell(q["log_px"]), cell(q["elbo_local"]), *(cell(s["others"][o]["elbo"]) for o in others), *(cell(q[k]) for k in QUANTITIES[2:])]
        rows.append(f"| {split} | {s['n_points']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gaps_markdown(result: dict[str, Any]) -> str:
    """The gap benchmark's report: the table, Monte Carlo errors, q* stopping, PSIS k-hat, exact answers, the protocol."""
    cfg = result["config"]
    guide = cfg["model"].get("guide", "own")
    lines = [
        f"# Inference gaps: {cfg['model']['name']} ({guide} guide) on {cfg['data']['dataset']} ({cfg['data']['likelihood']})",
        "",
        "Nats per datapoint; mean ± standard error of the mean over the evaluated datapoints.",
        "",
        gap_table(result["splits"]),
        "",
        "Monte Carlo standard errors alone (given these datapoints):",
        "",
    ]
    for split, s in result["splits"].items():
        lines.append(f"- {split}: " + ", ".join(f"{LABELS[q]} {s['quantities'][q]['mc_se']:.4f}" for q in QUANTITIES))
        log_px, local = s["log_px"], s["local"]
        proposal = (f"; a q* was the log p(x) proposal for {100 * log_px['proposal_local_fraction']:.0f}% of points"
                    if log_px["method"] == "iwae" else "")
        lines.append(f"  local q* ({local['family']}): {100 * local['converged_fraction']:.0f}% stopped by the rule, "
                     f"{local['steps_mean']:.0f} steps on average{proposal}")
        k = log_px["pareto_k"]
        if k is not None:
            flagged = k["high_points"]
            lines.append(
                f"  PSIS k̂ of the log p(x) weights: mean {k['mean']:.2f}, max {k['max']:.2f}; "
                + (f"**{100 * k['high_fraction']:.0f}% of points above 0.7 (unreliable estimates): {', '.join(map(str, flagged[:20]))}"
                   + (" ..." if len(flagged) > 20 else "") + "**" if flagged else "no point above 0.7")
            )
        exact = s.get("exact")
        if exact is not None:
            gap = exact["approximation_gap"]
            lines.append(f"  exact ({exact['source']}): log p(x) {exact['log_px']['mean']:.3f}"
                         + (f", approximation gap {gap:.4f}" if gap is not None else ""))
    ev = cfg["evaluation"]
    ais_text = (f"AIS with {ev.get('ais_chains')} chains, {ev.get('ais_steps')} {ev.get('ais_schedule')} steps from the {ev.get('ais_init')}, "
                f"HMC with {ev.get('ais_leapfrog')} leapfrog steps")
    iwae_text = f"IWAE bound with K={ev['log_px_samples']}"
    estimator = {"ais": ais_text, "iwae": iwae_text}.get(ev.get("log_px"), f"the higher of {ais_text} and the {iwae_text}")
    for split, s in result["splits"].items():
        estimates = s["log_px"]["estimates"]
        if "ais" in estimates and "iwae" in estimates:
            lines.append(f"- {split}: log p(x) by AIS {cell(estimates['ais'])}, by IWAE {cell(estimates['iwae'])}; "
                         f"reported: {s['log_px']['method']}")
    lines += ["", f"log p(x): {estimator}; ELBOs with {ev['elbo_samples']} samples; "
              f"local q*: Adam lr {ev['local_lr']}, {ev['local_samples']} samples/step, stop after {ev['local_patience']} "
              f"windows of {ev['local_window']} steps without improvement (cap {ev['local_max_steps']})."]
    return "\n".join(lines) + "\n"
