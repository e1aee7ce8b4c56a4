"""Verdicts on claims from paired differences: one that holds, one that fails, one within noise."""

import math

import pytest
import torch

from inference.claims import Z, judge, paired_difference


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
    assert verdict.status == status and verdict.z == Z
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
