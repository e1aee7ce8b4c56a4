"""One log p(x) per decoder (benchmarks.reproduce.log_px): the choice of proposal, the recomputed gaps, the bound checks."""

import math

import pytest
import torch

from benchmarks.reproduce import log_px as shared


def summary(log_px, local, amortized, iwae_se=None, others=None, family="ffg"):
    """A gap summary as inference.gaps writes it, with IWAE's per-point estimates as log p(x)."""
    n = len(log_px)
    iwae_se = iwae_se or [0.01] * n
    stat = {"mean": 0.0, "se": 0.0, "mc_se": 0.02}
    return {
        "n_points": n,
        "quantities": {k: dict(stat) for k in ("log_px", "elbo_local", "elbo_amortized", "approximation_gap", "amortization_gap", "inference_gap")},
        "per_point": {"log_px": list(log_px), "elbo_local": list(local), "elbo_amortized": list(amortized),
                      "approximation_gap": [a - b for a, b in zip(log_px, local)], "amortization_gap": [a - b for a, b in zip(local, amortized)],
                      "inference_gap": [a - b for a, b in zip(log_px, amortized)]},
        "claims": [{"status": "within noise"}],
        "local": {"family": family, "converged_fraction": 1.0, "steps_mean": 10.0},
        "others": {k: {"per_point": v, "elbo": dict(stat), "converged_fraction": 1.0} for k, v in (others or {}).items()},
        "log_px": {"method": "iwae", "num_samples": 100, "proposal_local_fraction": 1.0, "pareto_k": None,
                   "estimates": {"iwae": {"mean": sum(log_px) / n, "se": 0.1, "mc_se": 0.01, "per_point": list(log_px), "per_point_se": iwae_se}}},
    }


def test_each_point_takes_the_iwae_of_the_proposal_with_the_highest_elbo_not_the_highest_iwae():
    # candidate a: the better proposal on point 0 (ELBO -10.0 > -10.5) but the lower IWAE there; b the better on point 1
    a = shared.candidate(summary([-9.9, -20.0], [-10.0, -21.0], [-10.2, -21.5]), "a")
    b = shared.candidate(summary([-9.5, -19.5], [-10.5, -20.2], [-10.6, -20.4], others={"iaf": [-10.4, -20.1]}), "b")
    assert b["proposal_elbo"] == [-10.4, -20.1]  # the highest of q, q*_own and further q*'s
    best = shared.best_iwae({"b": b, "a": a})
    assert best["per_point"] == [-9.9, -19.5] and best["source"] == ["a", "b"] and best["candidates"] == ["a", "b"]
    tie = shared.best_iwae({"b": dict(b, proposal_elbo=a["proposal_elbo"]), "a": a})
    assert tie["source"] == ["a", "a"]  # ties: the first key in sorted order, whatever the dict's order
    with pytest.raises(ValueError, match="different numbers of points: \\[2, 3\\]"):
        shared.best_iwae({"a": a, "c": shared.candidate(summary([-1.0] * 3, [-2.0] * 3, [-3.0] * 3), "c")})
    with pytest.raises(ValueError, match="no gap evaluation"):
        shared.best_iwae({})


def test_a_summary_without_iwae_or_per_point_errors_is_refused_by_name():
    s = summary([-1.0, -2.0], [-1.5, -2.5], [-1.6, -2.6])
    del s["log_px"]["estimates"]["iwae"]["per_point_se"]
    with pytest.raises(ValueError, match="'old' predates per-point standard errors"):
        shared.candidate(s, "old")
    s["log_px"]["estimates"] = {}
    with pytest.raises(ValueError, match="'old' kept no IWAE estimate"):
        shared.candidate(s, "old")


def test_the_gaps_are_recomputed_with_the_decoders_log_px_and_the_higher_mean_estimator_wins():
    s = summary([-10.0, -20.0, -30.0], [-10.5, -20.4, -30.9], [-11.0, -21.0, -31.0])
    iwae = {"per_point": [-9.8, -19.9, -29.9], "per_point_se": [0.01, 0.02, 0.02]}
    ais = {"per_point": [-9.7, -19.8, -29.6], "per_point_se": [0.03, 0.03, 0.04]}
    choice = shared.choose(iwae, ais)
    assert choice["method"] == "ais" and choice["margin"]["over"] == "iwae"
    assert choice["margin"]["mean"] == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    assert choice["margin"]["se"] == pytest.approx(float(torch.tensor([0.1, 0.1, 0.3]).std()) / math.sqrt(3), rel=1e-5)
    out = shared.with_log_px(s, choice)
    assert out["per_point"]["log_px"] == ais["per_point"]
    assert out["per_point"]["approximation_gap"] == pytest.approx([0.8, 0.6, 1.3])
    assert out["per_point"]["inference_gap"] == pytest.approx([1.3, 1.2, 1.4])
    assert out["per_point"]["amortization_gap"] == s["per_point"]["amortization_gap"]  # L[q*] - L[q] does not involve log p(x)
    assert out["quantities"]["approximation_gap"]["mean"] == pytest.approx(0.9)
    mc = math.sqrt(0.03**2 + 0.03**2 + 0.04**2) / 3
    assert out["quantities"]["log_px"]["mc_se"] == pytest.approx(mc)
    assert out["quantities"]["approximation_gap"]["mc_se"] == pytest.approx(math.sqrt(mc**2 + 0.02**2))
    assert out["log_px"]["method"] == "ais" and out["log_px"]["own"]["estimates"]["iwae"]["per_point"] == s["per_point"]["log_px"]
    assert out["claims"][0]["claim"] == "amortization gap > approximation gap"
    assert s["per_point"]["log_px"] == [-10.0, -20.0, -30.0]  # the input is not changed
    assert shared.choose(iwae, None)["method"] == "iwae" and shared.choose(iwae, None)["margin"] is None
    with pytest.raises(ValueError, match="covers 2 points, the evaluation 3"):
        shared.with_log_px(s, shared.choose({"per_point": [-1.0, -2.0], "per_point_se": [0.0, 0.0]}, None))


def test_an_elbo_above_log_px_beyond_three_standard_errors_is_flagged_per_family():
    n = 20
    gen = torch.Generator().manual_seed(0)
    log_px = (-50 + torch.randn(n, generator=gen)).tolist()
    below = [v - 0.5 - 0.05 * float(e) for v, e in zip(log_px, torch.rand(n, generator=gen))]
    above = [v + 0.3 + 0.05 * float(e) for v, e in zip(log_px, torch.rand(n, generator=gen))]
    s = summary(log_px, below, [v - 1 for v in below], others={"iaf": above})
    checks = {c["family"]: c for c in shared.bound_checks(s)}
    assert not checks["ffg"]["violated"] and checks["ffg"]["verdict"]["status"] == "fails"
    assert checks["iaf"]["violated"] and checks["iaf"]["verdict"]["status"] == "holds"
    noisy = [v + (0.01 if i % 2 else -0.01) for i, v in enumerate(log_px)]  # as often above as below: within noise
    assert not shared.bound_checks(summary(log_px, noisy, below))[0]["violated"]


def test_the_ais_ladder_doubles_up_to_its_cap_and_matching_means_a_mean_at_least_the_iwaes():
    assert shared.calibration_ladder(200, 3200) == [200, 400, 800, 1600, 3200]
    assert shared.calibration_ladder(300, 2400) == [300, 600, 1200, 2400]
    assert shared.calibration_ladder(300, 1000) == [300, 600]
    assert shared.calibration_ladder(500, 100) == [500]
    assert shared.matches([-1.0, -3.0], [-2.0, -2.0]) and not shared.matches([-1.0, -3.1], [-2.0, -2.0])
