"""The grid-normalized posterior of a 2-D latent against PPCA's closed forms and the IWAE estimate."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators import iwae_log_px
from inference.grid import grid_posterior, guide_on_grid
from tests.oracles import exact_posterior_guide, global_latent_model, make_ppca, sample_ppca


def test_grid_log_px_and_posterior_mean_match_the_closed_form_and_the_iwae_estimate():
    model, guide = make_ppca(latent_dim=2, seed=3)
    x = sample_ppca(model, 4)
    grid = grid_posterior(model, guide, x, bounds=(-6.0, 6.0), points=240)
    with torch.no_grad():
        exact = model.log_px(x).double()
        posterior = model.posterior(x)
    assert torch.allclose(grid.log_px, exact, atol=1e-6)  # the midpoint rule on a smooth Gaussian: far below MC noise
    assert torch.allclose(grid.mean(), posterior.loc.double(), atol=1e-4)
    assert float(grid.edge_mass.max()) < 1e-6
    torch.manual_seed(0)
    iwae = iwae_log_px(model, guide, x, 2000)
    assert ((iwae.value - grid.log_px).abs() <= 3 * iwae.stderr + 1e-3).all()
    exact_q = exact_posterior_guide(model)  # the true posterior as a guide: its log q on the grid is the grid posterior
    assert torch.allclose(guide_on_grid(exact_q, model, x, grid.axis), grid.log_posterior, atol=1e-5)


def test_a_grid_that_cuts_off_posterior_mass_is_refused():
    model, guide = make_ppca(latent_dim=2, seed=3)
    x = sample_ppca(model, 2)
    with pytest.raises(ValueError, match="cuts off posterior mass.*widen the bounds"):
        grid_posterior(model, guide, x, bounds=(-0.5, 0.5), points=20)
    with pytest.raises(ValueError, match="exactly one per-datapoint latent site.*global \\('theta',\\)"):
        grid_posterior(global_latent_model, global_guide, torch.randn(3))


def global_guide(x):
    pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.7))
