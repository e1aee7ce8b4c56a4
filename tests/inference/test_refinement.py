"""Test-time refinement on PPCA: from the encoder's output towards the exact best FFG, k steps at a time."""

import pytest
import torch

from inference.estimators import elbo
from inference.local import AdamOptions, LocalOptions
from inference.refinement import refine, share_closed
from tests.oracles import best_ffg_guide, make_ppca, sample_ppca


@pytest.mark.slow
def test_refinement_closes_the_amortization_gap_towards_the_exact_best_ffg():
    model, guide = make_ppca(latent_dim=2, seed=4, collinear=0.5)
    x = sample_ppca(model, 12)
    torch.manual_seed(0)
    best = elbo(model, best_ffg_guide(model, x), x, 4000).value  # the exact q*_FFG (closed form), as the reference
    options = LocalOptions(num_samples=20, adam=AdamOptions(lr=0.05))
    result = refine(model, guide, x, steps=(2, 300), reference=best, options=options, eval_samples=4000)
    assert sorted(result.elbos) == [0, 2, 300] and result.seconds_per_step > 0
    assert result.closed[0].value == 0.0
    zero, few, many = (result.closed[k] for k in (0, 2, 300))
    assert few.value > 3 * few.se  # two steps already close a share, measurably
    assert many.value > few.value + 3 * (few.se + many.se)  # more steps close more
    assert abs(many.value - 1.0) < 3 * many.se + 0.02  # and 300 steps reach the exact best FFG


def test_share_closed_is_a_ratio_of_paired_means():
    amortized = torch.tensor([-10.0, -12.0, -11.0, -13.0])
    best = amortized + torch.tensor([1.0, 2.0, 1.5, 2.5])
    refined = amortized + 0.5 * (best - amortized)
    share = share_closed(refined, amortized, best)
    assert share.value == pytest.approx(0.5) and share.se == pytest.approx(0.0, abs=1e-12)  # exactly half at every point
    with pytest.raises(ValueError, match="closes no amortization gap"):
        share_closed(refined, amortized, amortized)
