"""Verdicts on claims from paired differences: one that holds, one that fails, one within noise."""

import math

import pytest
import torch

from inference.claims import Z, critical_value, judge, judge_equal, paired_difference


def correlated(n=50, shift=0.3, noise=0.05, seed=0):
    """Two quantities that move together over the datapoints (a hard point is hard for both): a = b + shift + noise, the
    noise centred so that the mean difference is exactly ``shift`` and its standard error about noise / sqrt(n)."""
    g = torch.Generator().manual_seed(seed)
    b = 5 * torch.randn(n, generator=g, dtype=torch.float64)
    e = torch.randn(n, generator=g, dtype=torch.float64)
    return b + shift + noise * (e - e.mean()), b


def test_the_paired_standard_error_is_that_of_the_differences_and_far_below_the_unpaired_one():
    a, b = correlated()
    d = paired_difference(a, b)
    diffs = (a - b).tolist()
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((v - mean) ** 2 for v in diffs) / (len(diffs) - 1))
    assert d.mean == pytest.approx(mean, abs=1e-12) and d.se == pytest.approx(sd / math.sqrt(50), rel=1e-12) and d.n == 50
    unpaired = math.sqrt(a.var().item() / 50 + b.var().item() / 50)
    assert d.se < unpaired / 20  # two overlapping error bars, yet a clear paired difference


@pytest.mark.parametrize("shift, status", [(0.3, "holds"), (-0.3, "fails"), (0.01, "within noise"), (-0.01, "within noise")])
def test_a_claim_holds_fails_or_is_within_noise(shift, status):
    a, b = correlated(shift=shift)
    verdict = judge("a > b", a, b)
    assert verdict.difference.mean == pytest.approx(shift, abs=1e-12)
    assert verdict.status == status and verdict.z == Z and verdict.threshold == pytest.approx(critical_value(50))
    assert verdict.text().startswith(f"{status}: a > b") and "paired difference" in verdict.text()
    assert verdict.to_dict()["difference"]["n"] == 50


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same datapoints, got 3 and 2"):
        paired_difference(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="at least 2 datapoints"):
        paired_difference(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="finite"):
        paired_difference(torch.tensor([1.0, math.nan]), torch.ones(2))
    with pytest.raises(ValueError, match="z must be positive"):
        judge("a > b", torch.ones(3), torch.zeros(3), z=0)


def test_a_comparison_judges_every_run_against_the_first_point_by_point():
    from inference.compare import add_paired_differences

    a, b = correlated(shift=0.3)
    runs = [{"objective": "elbo", "num_particles": 1, "per_point": {"test_log_px": b.tolist(), "test_elbo": b.tolist()}},
            {"objective": "iwae", "num_particles": 5, "per_point": {"test_log_px": a.tolist(), "test_elbo": (b - 0.3).tolist()}}]
    add_paired_differences(runs)
    assert "paired" not in runs[0]
    paired = runs[1]["paired"]
    assert paired["against"] == "elbo K=1"
    assert paired["test_log_px"]["status"] == "holds" and paired["test_elbo"]["status"] == "fails"
    assert paired["test_log_px"]["claim"] == "iwae K=5 test log px > elbo K=1"


def test_the_threshold_is_students_t_at_the_level_of_3_normal_standard_errors():
    """Few points need more standard errors: the same level as 3 normal SE (two-sided 0.27%) on n - 1 degrees of freedom."""
    assert critical_value(10**6) == pytest.approx(3.0, abs=1e-3)
    assert critical_value(50) == pytest.approx(3.16, abs=0.01)
    assert critical_value(4) == pytest.approx(9.22, abs=0.05)
    a, b = correlated(n=4, shift=0.3, noise=0.1)  # 0.3 is about 6 SE: "holds" at 3 normal SE, not at the t threshold
    verdict = judge("a > b", a, b)
    assert 3 * verdict.difference.se < 0.3 < verdict.threshold * verdict.difference.se and verdict.status == "within noise"


@pytest.mark.parametrize("shift, noise, status", [(0.0, 0.05, "holds"), (0.5, 0.05, "fails"), (0.0, 2.0, "within noise"), (0.1, 0.05, "within noise")])
def test_an_equivalence_claim_needs_the_whole_interval_inside_the_margin(shift, noise, status):
    """"The approximation gap stays" holds only when mean ± t SE lies inside the margin: a noisy difference near zero
    is within noise, not support."""
    a, b = correlated(shift=shift, noise=noise)
    verdict = judge_equal("a = b", a, b, margin=0.1)
    assert verdict.status == status, verdict.text()
    assert "margin 0.1" in verdict.text() and verdict.to_dict()["margin"] == 0.1


def test_an_unpaired_claim_uses_the_unpaired_standard_error_and_welchs_threshold():
    """Growth on held-out against growth on training points: other points, so the SE is sqrt(s_a^2/n_a + s_b^2/n_b)."""
    from inference.claims import judge_unpaired

    g = torch.Generator().manual_seed(1)
    a, b = 0.5 + torch.randn(40, generator=g, dtype=torch.float64), torch.randn(60, generator=g, dtype=torch.float64)
    verdict = judge_unpaired("a > b", a, b)
    assert verdict.difference.se == pytest.approx(math.sqrt(a.var().item() / 40 + b.var().item() / 60), rel=1e-12)
    assert verdict.difference.mean == pytest.approx((a.mean() - b.mean()).item(), rel=1e-12)
    assert 3.0 < verdict.threshold < 3.3 and verdict.status == ("holds" if verdict.difference.mean > verdict.threshold * verdict.difference.se else "within noise")
    assert judge_unpaired("a > b", a + 3, b).status == "holds" and judge_unpaired("a > b", a - 3, b).status == "fails"


def test_a_claim_on_one_point_is_judged_against_its_own_monte_carlo_error():
    from inference.claims import judge_monte_carlo

    v = judge_monte_carlo("L[a] > L[b]", -10.0, 0.03, -10.2, 0.04)  # difference 0.2 against 3 x 0.05
    assert v.status == "holds" and v.difference.mean == pytest.approx(0.2) and v.difference.se == pytest.approx(0.05)
    assert judge_monte_carlo("L[a] > L[b]", -10.0, 0.03, -10.1, 0.04).status == "within noise"  # 0.1 < 0.15
    assert judge_monte_carlo("L[a] > L[b]", -10.3, 0.03, -10.1, 0.04).status == "fails"
    record = v.to_dict()
    assert record["basis"] == "monte carlo" and "Monte Carlo error of this one point" in record["text"] and "df" not in record["text"]
    with pytest.raises(ValueError, match="finite estimates and non-negative errors"):
        judge_monte_carlo("x", float("nan"), 0.1, 0.0, 0.1)
    with pytest.raises(ValueError, match="finite estimates and non-negative errors"):
        judge_monte_carlo("x", 0.0, -0.1, 0.0, 0.1)
