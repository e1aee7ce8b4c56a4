"""The gap decomposition adds up, and on PPCA its approximation gap is the exact one."""

import torch

from inference.gaps import QUANTITIES, gap_decomposition
from inference.local import AdamConfig, StoppingRule
from tests.oracles import make_ppca, sample_ppca


def test_gaps_add_up_and_match_ppca_closed_forms():
    model, guide = make_ppca()
    x = sample_ppca(model, 10)
    result = gap_decomposition(
        model, guide, x, log_px_samples=3000, elbo_samples=2000, local_samples=100,
        adam=AdamConfig(lr=2e-2), rule=StoppingRule(window=50, patience=4, max_steps=3000),
    )
    per = result.per_datapoint()
    torch.testing.assert_close(per["inference_gap"], per["approximation_gap"] + per["amortization_gap"])
    mc = result.monte_carlo_stderr()
    exact_log_px = model.log_marginal(x).detach().double()
    exact_gap = model.approximation_gap(x).detach().double()
    n = len(x)
    assert abs((per["log_px"] - exact_log_px).mean()) < 3 * mc["log_px"].pow(2).sum().sqrt() / n + 0.01
    assert abs((per["approximation_gap"] - exact_gap).mean()) < 3 * mc["approximation_gap"].pow(2).sum().sqrt() / n + 0.02
    # the untrained encoder is far from q*: a clear amortization gap, and L[q*] >= L[q]
    assert (per["elbo_local"] >= per["elbo_amortized"] - 3 * mc["amortization_gap"]).all()
    assert per["amortization_gap"].mean() > 0.5
    summary = result.summary()
    for key in QUANTITIES:
        assert {key, f"{key}_se", f"{key}_mc_se"} <= set(summary)
    assert summary["n_points"] == 10 and summary["log_px_proposal_local_fraction"] == 1.0
