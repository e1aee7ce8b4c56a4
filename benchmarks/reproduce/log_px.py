r"""One log p(x) per decoder: every experiment that evaluates the same decoder on the same points uses the same estimate.

A gap decomposition measures :math:`\log p(x)` with its own proposals, so two experiments on one decoder
and one set of points used to report two approximation gaps (on MNIST, 1.967 in experiment 1 against
1.826 in experiment 2 for the same 50 test points). Here :math:`\log p(x)` belongs to the
**decoder** (the model's weights), a split and the first ``n`` points of it:

1. **IWAE, best proposal over every fitted q\***. Each gap evaluation of the decoder (any encoder, any
   family of q\*, any experiment) leaves a *candidate*: per point, the ELBO of the proposal its IWAE
   used (the highest of q and its q\*'s) and that IWAE estimate (:func:`candidate`). Per point the
   estimate whose proposal has the highest ELBO is taken (:func:`best_iwae`). The ELBOs come from
   draws independent of the IWAE's, so the choice does not favour a lucky IWAE draw: each chosen value
   is still a stochastic lower bound.
2. **AIS, calibrated against it.** On a check subset (the first ``ais_check_points`` points) AIS runs at
   the budget's steps, doubled until its mean matches or beats the best IWAE's on that subset or the
   budget's cap is reached (:func:`calibration_ladder`); AIS then runs on all the points at that budget.
3. **The winner** is the estimator with the higher mean over the points (both are stochastic lower
   bounds; Cremer et al.'s code reports the larger), named in every report with its margin over the
   other (a paired difference and its standard error).
4. **Its error bar**: BDMC (Grosse et al. 2015; Wu et al. 2017) on data simulated from the decoder with
   the calibrated AIS settings: the mean gap between the reverse (upper) and forward (lower) bounds.

The decomposition of every evaluation is then recomputed with this :math:`\log p(x)`
(:func:`with_log_px`), which also sets beside it the **common yardstick** of every encoder on the
decoder: per point the highest ELBO of any q or q\* fitted for it (``elbo_best``) and the amortization
gap to it, :math:`\mathcal L[q^*_{best}] - \mathcal L[q]` (``amortization_gap_to_best``), so that encoders
of different families are compared on the same reference (their order is that of their
:math:`\mathcal L[q]`). Every :math:`\mathcal L[q^*]` is checked against log p(x): one above it beyond
3 standard errors (paired) means the estimate is too low, and the report says so (:func:`bound_checks`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from inference.claims import judge, paired_difference
from inference.stats import mean_se

#: The version of the decoder-level log p(x) protocol, part of every gap evaluation's configuration.
PROTOCOL = "decoder-log-px-1"


def proposal_elbos(summary: dict[str, Any]) -> torch.Tensor:
    """Per point, the highest ELBO among q and the q*'s of a gap summary: the proposal its IWAE estimate used."""
    candidates = [summary["per_point"]["elbo_amortized"], summary["per_point"]["elbo_local"],
                  *(other["per_point"] for other in summary.get("others", {}).values())]
    return torch.tensor(candidates, dtype=torch.float64).max(0).values


def candidate(summary: dict[str, Any], source: str) -> dict[str, Any]:
    """What one gap evaluation contributes to its decoder's log p(x): per point its proposal's ELBO and its IWAE estimate."""
    estimate = (summary["log_px"].get("estimates") or {}).get("iwae")
    if estimate is None:
        raise ValueError(f"gap evaluation {source!r} kept no IWAE estimate of log p(x)")
    if "per_point_se" not in estimate:
        raise ValueError(f"gap evaluation {source!r} predates per-point standard errors: evaluate it again")
    return {"source": source, "proposal_elbo": proposal_elbos(summary).tolist(), "iwae": list(estimate["per_point"]),
            "iwae_se": list(estimate["per_point_se"]), "num_samples": summary["log_px"]["num_samples"]}


def best_iwae(candidates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per point, the IWAE estimate of the candidate whose proposal has the highest ELBO (ties: the first key in sorted order)."""
    if not candidates:
        raise ValueError("no gap evaluation of this decoder to take log p(x) from")
    keys = sorted(candidates)
    sizes = {len(candidates[k]["iwae"]) for k in keys}
    if len(sizes) != 1:
        raise ValueError(f"the candidates of one decoder's log p(x) cover different numbers of points: {sorted(sizes)}")
    elbo = torch.tensor([candidates[k]["proposal_elbo"] for k in keys], dtype=torch.float64)
    value = torch.tensor([candidates[k]["iwae"] for k in keys], dtype=torch.float64)
    se = torch.tensor([candidates[k]["iwae_se"] for k in keys], dtype=torch.float64)
    choice = elbo.argmax(0)  # argmax returns the first maximum
    rows = torch.arange(value.shape[1])
    return {"per_point": value[choice, rows].tolist(), "per_point_se": se[choice, rows].tolist(),
            "source": [keys[int(c)] for c in choice], "candidates": keys, "best_elbo": elbo.max(0).values.tolist()}


def calibration_ladder(steps: int, cap: int) -> list[int]:
    """AIS step counts tried on the check subset: ``steps``, doubled while at most ``cap`` (at least ``steps`` itself)."""
    ladder = [int(steps)]
    while ladder[-1] * 2 <= cap:
        ladder.append(ladder[-1] * 2)
    return ladder


def matches(ais: list[float], iwae: list[float]) -> bool:
    """AIS matches or beats the IWAE estimate on the check subset: its mean is at least the IWAE's."""
    return float(torch.tensor(ais, dtype=torch.float64).mean()) >= float(torch.tensor(iwae, dtype=torch.float64).mean())


def statistics(values: list[float], se: list[float] | None = None) -> dict[str, float]:
    """``{"mean", "se", "mc_se"}`` of per-point values (``mc_se`` from per-point Monte Carlo errors where given)."""
    v = torch.tensor(values, dtype=torch.float64)
    mean, spread = mean_se(v)
    out = {"mean": mean, "se": spread}
    if se is not None:
        out["mc_se"] = float(torch.tensor(se, dtype=torch.float64).pow(2).sum().sqrt() / len(v))
    return out


def choose(iwae: dict[str, Any], ais: dict[str, Any] | None) -> dict[str, Any]:
    """The decoder's log p(x): the estimator with the higher mean, and its paired margin over the other."""
    estimates = {"iwae": iwae} if ais is None else {"iwae": iwae, "ais": ais}
    winner = max(estimates, key=lambda k: float(torch.tensor(estimates[k]["per_point"]).mean()))
    margin = None
    if ais is not None:
        loser = "ais" if winner == "iwae" else "iwae"
        d = paired_difference(torch.tensor(estimates[winner]["per_point"], dtype=torch.float64),
                              torch.tensor(estimates[loser]["per_point"], dtype=torch.float64))
        margin = {"over": loser, "mean": d.mean, "se": d.se}
    return {"method": winner, "per_point": list(estimates[winner]["per_point"]), "per_point_se": list(estimates[winner]["per_point_se"]),
            "margin": margin, "best_elbo": iwae.get("best_elbo"), "estimates": {k: {**statistics(v["per_point"], v["per_point_se"]), "per_point": list(v["per_point"]),
                                                "per_point_se": list(v["per_point_se"])} for k, v in estimates.items()}}


def with_log_px(summary: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """A gap summary recomputed with its decoder's log p(x) ``shared`` (:func:`choose`, with ``decoder`` details): the
    approximation and inference gaps, their statistics, the log p(x) record and the paper's claim; its own estimates kept
    as ``log_px["own"]``."""
    out = copy.deepcopy(summary)
    log_px = torch.tensor(shared["per_point"], dtype=torch.float64)
    se = torch.tensor(shared["per_point_se"], dtype=torch.float64)
    if len(log_px) != out["n_points"]:
        raise ValueError(f"the decoder's log p(x) covers {len(log_px)} points, the evaluation {out['n_points']}")
    points = out["per_point"]
    local, amortized = torch.tensor(points["elbo_local"], dtype=torch.float64), torch.tensor(points["elbo_amortized"], dtype=torch.float64)
    values = {"log_px": log_px, "approximation_gap": log_px - local, "inference_gap": log_px - amortized}
    q = out["quantities"]
    mc_local, mc_amortized = q["elbo_local"]["mc_se"], q["elbo_amortized"]["mc_se"]
    mc_log_px = float(se.pow(2).sum().sqrt() / len(se))
    for key, value in values.items():
        points[key] = value.tolist()
        mean, spread = mean_se(value)
        other = {"log_px": 0.0, "approximation_gap": mc_local, "inference_gap": mc_amortized}[key]
        q[key] = {"mean": mean, "se": spread, "mc_se": (mc_log_px**2 + other**2) ** 0.5}
    own = out["log_px"]
    out["log_px"] = {"method": shared["method"], "num_samples": own.get("num_samples"), "estimates": shared["estimates"],
                     "margin": shared["margin"], "decoder": shared.get("decoder"), "own": {"method": own["method"], "estimates": own["estimates"]},
                     "proposal_local_fraction": own.get("proposal_local_fraction"), "pareto_k": own.get("pareto_k")}
    if out.get("claims"):
        out["claims"] = [judge("amortization gap > approximation gap", torch.tensor(points["amortization_gap"]),
                               values["approximation_gap"]).to_dict()] if len(log_px) > 1 else []
    if shared.get("best_elbo") is not None:  # the common yardstick of every encoder on this decoder
        best = torch.tensor(shared["best_elbo"], dtype=torch.float64)
        for key, value in (("elbo_best", best), ("amortization_gap_to_best", best - amortized)):
            points[key] = value.tolist()
            mean, spread = mean_se(value)
            q[key] = {"mean": mean, "se": spread}
    out["bound_checks"] = bound_checks(out)
    return out


def bound_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every L[q*] of a summary (own family and further ones) against its log p(x), paired: a verdict "L[q*] > log p(x)"
    that holds means log p(x) is underestimated (an L[q*] is a lower bound on it)."""
    log_px = torch.tensor(summary["per_point"]["log_px"], dtype=torch.float64)
    if len(log_px) < 2:
        return []
    fits = {summary["local"]["family"]: summary["per_point"]["elbo_local"], **{k: v["per_point"] for k, v in summary.get("others", {}).items()}}
    checks = []
    for family, values in fits.items():
        verdict = judge(f"L[q*_{family}] > log p(x)", torch.tensor(values, dtype=torch.float64), log_px).to_dict()
        checks.append({"family": family, "violated": verdict["status"] == "holds", "verdict": verdict})
    return checks


def decoder_section(report, decoders: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    """Append to ``report`` the log p(x) of every decoder it used (estimator, margin, AIS budget, BDMC bound) and the
    L[q*] <= log p(x) checks of every evaluation."""
    if not decoders:
        return
    rows = []
    for record in decoders.values():
        d, margin = record["decoder"], record["margin"]
        ais = d.get("ais")
        won = record["method"].upper() + ("" if margin is None else f", above {margin['over'].upper()} by {margin['mean']:.3f} ± {margin['se']:.3f}")
        ais_text = "not run" if ais is None else (f"{ais['steps']} steps × {ais['chains']} chains; " + (
            "matched the IWAE" if ais["matched"] else f"below the IWAE at the cap ({ais['cap']})") + f" on {ais['check_points']} check points")
        bdmc = d.get("bdmc")
        bdmc_text = "—" if bdmc is None else f"{bdmc['gap']['mean']:.3f} ± {bdmc['gap']['se']:.3f} ({bdmc['points']} simulated points)"
        chosen = " + ".join(f"{n}" for n in d["iwae_chosen_from"].values())
        rows.append([", ".join(d["models"]), record["split"], record["n"], f"{record['log_px']['mean']:.3f} ± {record['log_px']['se']:.3f}", won,
                     ais_text, bdmc_text, f"{len(d['candidates'])} ({chosen} points)"])
    report.text("### log p(x), one per decoder\n\nEvery evaluation of a decoder on the same points uses one log p(x): per point the IWAE "
                "estimate whose proposal has the highest ELBO among every q and q* fitted for that decoder (the candidates), and AIS "
                "from the prior with its steps doubled until it matches that IWAE on a check subset; the estimator with the higher "
                "mean is reported. BDMC: the mean gap between reverse and forward AIS on data simulated from the decoder, with "
                "the same AIS settings (a bound on forward AIS's error on such data).")
    report.table(["models on this decoder", "split", "points", "log p(x)", "estimator", "AIS", "BDMC upper − lower",
                  "IWAE candidates (points taken from those chosen)"], rows)
    violated = [(c["model"], c["split"], v) for c in checks for v in c["checks"] if v["violated"]]
    if violated:
        for model, split, v in violated:
            report.text(f"⚠ {model}, {split}: L[q*_{v['family']}] lies above log p(x) beyond 3 standard errors "
                        f"({v['verdict']['text']}): log p(x) is underestimated there, and the approximation gap with it.")
    else:
        count = sum(len(c["checks"]) for c in checks)
        report.text(f"No L[q*] lies above its decoder's log p(x) beyond 3 standard errors (paired; {count} checks).")
    inclusion = [(c["model"], c["split"], c["inclusion"]) for c in checks if c.get("inclusion")]
    if inclusion:
        lines = []
        for model, split, inc in inclusion:
            before, after = inc["before"], inc["after"]
            verdicts = "" if before is None else f"; before: {before['text']}; after: {after['text']}"
            warn = "⚠ " if after is not None and after["status"] == "holds" else ""
            lines.append(f"- {warn}{model}, {split}: {inc['continued_points']} point(s) continued{verdicts}")
        report.text("Family inclusion: the flow family contains the FFG, so every evaluation fitting both continued the flow q* "
                    "of each point left below its FFG q* from that FFG q* (inference.inclusion):\n\n" + "\n".join(lines))
