"""The gap decomposition against PPCA's closed forms, and its standard errors on hand-built components."""

import math

import pytest
import torch

from inference.estimators import Estimate
from inference.gaps import QUANTITIES, GapDecomposition, gap_decomposition
from inference.local import AdamOptions, LocalOptions, LocalPosterior, StoppingRule
from tests.oracles import make_ppca, sample_ppca


@pytest.mark.slow
def test_every_gap_matches_ppca_closed_forms():
    """log p(x), the approximation gap and the amortization gap, each against its own closed form.

    Exact values: log p(x) = log N(x; b, WW^T + s^2 I); L[q] = the ELBO of the encoder's Gaussian; L[q*] = the ELBO of
    the best diagonal Gaussian (closed form), so the amortization gap L[q*] - L[q] is known without any optimizer.
    """
    model, guide = make_ppca()
    x = sample_ppca(model, 10)
    result = gap_decomposition(
        model, guide, x, log_px_samples=3000, elbo_samples=2000,
        local=LocalOptions(num_samples=100, adam=AdamOptions(lr=2e-2), rule=StoppingRule(window=50, patience=4, max_steps=3000)),
    )
    per, mc = result.per_datapoint(), result.monte_carlo_stderr()
    with torch.no_grad():
        exact_log_px = model.log_px(x).double()
        exact_gap = model.approximation_gap(x).double()
        best_loc, best_scale = model.best_ffg(x)
        enc_loc, enc_scale = guide.posterior_params(x)
        exact_amortization = (model.elbo(x, best_loc, best_scale) - model.elbo(x, enc_loc, enc_scale)).double()
    n = len(x)
    mean_se = lambda key: mc[key].pow(2).sum().sqrt() / n  # noqa: E731
    assert abs((per["log_px"] - exact_log_px).mean()) < 3 * mean_se("log_px") + 0.01
    # q* is found by a stochastic optimizer stopped by the window rule: it may fall short by a few hundredths
    assert abs((per["approximation_gap"] - exact_gap).mean()) < 3 * mean_se("approximation_gap") + 0.02
    assert abs((per["amortization_gap"] - exact_amortization).mean()) < 3 * mean_se("amortization_gap") + 0.02
    assert exact_amortization.mean() > 0.5  # the untrained encoder is far from q*: the check has teeth
    summary = result.summary()
    for key in QUANTITIES:
        assert set(summary["quantities"][key]) == {"mean", "se", "mc_se"}
    assert summary["n_points"] == 10 and summary["log_px"]["proposal_local_fraction"] == 1.0


def hand_built(values: dict[str, list[float]], stderrs: dict[str, list[float]]) -> GapDecomposition:
    est = {k: Estimate(torch.tensor(values[k], dtype=torch.float64), torch.tensor(stderrs[k], dtype=torch.float64), 100)
           for k in ("log_px", "elbo_local", "elbo_amortized")}
    n = len(values["log_px"])
    local = LocalPosterior(None, est["elbo_local"], torch.full((n,), 7), torch.ones(n, dtype=torch.bool))
    return GapDecomposition(est["log_px"], est["elbo_local"], est["elbo_amortized"], torch.zeros(n, dtype=torch.bool), local)


def test_each_gap_and_its_standard_errors_come_from_the_right_pair_of_estimates():
    values = {"log_px": [-10.0, -12.0, -11.0], "elbo_local": [-10.5, -12.2, -11.6], "elbo_amortized": [-11.0, -13.0, -11.9]}
    stderrs = {"log_px": [0.01, 0.02, 0.03], "elbo_local": [0.1, 0.2, 0.3], "elbo_amortized": [1.0, 2.0, 3.0]}
    result = hand_built(values, stderrs)
    per, mc = result.per_datapoint(), result.monte_carlo_stderr()
    torch.testing.assert_close(per["approximation_gap"], torch.tensor([0.5, 0.2, 0.6], dtype=torch.float64))
    torch.testing.assert_close(per["amortization_gap"], torch.tensor([0.5, 0.8, 0.3], dtype=torch.float64))
    torch.testing.assert_close(per["inference_gap"], torch.tensor([1.0, 1.0, 0.9], dtype=torch.float64))
    # independent estimates: each gap's Monte Carlo SE combines the SEs of exactly its two terms
    quad = lambda a, b: torch.tensor([math.hypot(u, v) for u, v in zip(stderrs[a], stderrs[b])], dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(mc["approximation_gap"], quad("log_px", "elbo_local"))
    torch.testing.assert_close(mc["amortization_gap"], quad("elbo_local", "elbo_amortized"))
    torch.testing.assert_close(mc["inference_gap"], quad("log_px", "elbo_amortized"))
    summary = result.summary()
    gap, approximation = summary["quantities"]["amortization_gap"], summary["quantities"]["approximation_gap"]
    assert gap["mean"] == pytest.approx(1.6 / 3)
    assert gap["se"] == pytest.approx(torch.tensor([0.5, 0.8, 0.3]).std().item() / math.sqrt(3))
    assert gap["mc_se"] == pytest.approx(math.sqrt(sum(a**2 + b**2 for a, b in zip([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]))) / 3)
    assert approximation["mc_se"] == pytest.approx(math.sqrt(sum(a**2 + b**2 for a, b in zip([0.01, 0.02, 0.03], [0.1, 0.2, 0.3]))) / 3)
    assert summary["local"]["steps_mean"] == 7 and summary["local"]["converged_fraction"] == 1.0
    assert all(isinstance(v, float) for q in summary["quantities"].values() for v in q.values())  # numbers apart from metadata


def test_a_bad_sample_count_is_named_as_the_caller_passed_it():
    """gap_decomposition(..., elbo_samples=-1) once named `num_samples`, a parameter the caller never passed."""
    from inference.gaps import gap_decomposition
    from tests.oracles import make_ppca, sample_ppca

    model, guide = make_ppca()
    x = sample_ppca(model, 3)
    with pytest.raises(ValueError, match="elbo_samples must be an integer >= 1, got -1"):
        gap_decomposition(model, guide, x, elbo_samples=-1)
    with pytest.raises(ValueError, match="log_px_samples must be an integer >= 1, got 0"):
        gap_decomposition(model, guide, x, log_px_samples=0)
