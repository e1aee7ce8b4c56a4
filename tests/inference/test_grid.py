"""The grid-normalized posterior of a 2-D latent against PPCA's closed forms and the IWAE estimate."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators import iwae_log_px
from inference.grid import GridCutsOffMass, GridTooCoarse, grid_posterior, guide_on_grid
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
    assert torch.allclose(guide_on_grid(exact_q, model, x, grid.axes), grid.log_posterior, atol=1e-5)


def test_a_grid_that_cuts_off_posterior_mass_is_refused():
    model, guide = make_ppca(latent_dim=2, seed=3)
    x = sample_ppca(model, 2)
    with pytest.raises(GridCutsOffMass, match="cuts off posterior mass.*widen the bounds"):
        grid_posterior(model, guide, x, bounds=(-0.5, 0.5), points=20)
    with pytest.raises(ValueError, match="exactly one per-datapoint latent site.*global \\('theta',\\)"):
        grid_posterior(global_latent_model, global_guide, torch.randn(3))


def exact_log_px(model, x):
    """PPCA's closed-form log p(x) in float64 (float32 is off by 0.02 nats when the noise is 0.005)."""
    with torch.no_grad():
        return copy.deepcopy(model).double().log_px(x.double())


def global_guide(x):
    pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


@pytest.mark.parametrize("noise, points", [(0.1, 25), (0.1, 50), (0.005, 50)])
def test_a_grid_whose_cells_are_wider_than_a_quarter_of_the_posterior_sd_is_refused(noise, points):
    """PPCA posteriors of sd 0.036 and 0.0018 over [-4, 4]²: the midpoint rule was 8.7, 1.4 and 271 nats off, unrefused."""
    model, guide = make_ppca(latent_dim=2, noise=noise)
    x = sample_ppca(model, 3)
    with pytest.raises(GridTooCoarse, match=r"on axis \d a cell is 0.\d+ wide against a posterior sd of .*under 4 cells per sd"):
        grid_posterior(model, guide, x, bounds=(-4.0, 4.0), points=points)
    unchecked = grid_posterior(model, guide, x, bounds=(-4.0, 4.0), points=points, check=False)
    assert (unchecked.log_px - exact_log_px(model, x)).abs().max() > 0.1  # what the refusal prevents


def test_per_axis_bounds_resolve_a_narrow_posterior_whose_coordinates_lie_far_apart():
    """Bounds of their own per axis around a posterior of sd 0.0018 whose means differ by 0.4: exact to 1e-4."""
    model, guide = make_ppca(latent_dim=2, noise=0.005)
    x = sample_ppca(model, 1)
    exact = exact_log_px(model, x)
    with torch.no_grad():
        post = copy.deepcopy(model).double().posterior(x.double())
    loc, sd = post.loc[0], post.covariance.reshape(-1, 2, 2)[0].diagonal().sqrt()
    assert abs(float(loc[0] - loc[1])) > 50 * float(sd.max())  # one square window would need cells far wider than sd/4
    bounds = tuple((float(m - 8 * s), float(m + 8 * s)) for m, s in zip(loc, sd))
    grid = grid_posterior(model, guide, x, bounds=bounds, points=80)
    assert torch.allclose(grid.log_px, exact, atol=1e-4), (grid.log_px, exact)
    assert torch.allclose(grid.mean()[0], loc, atol=1e-2 * float(sd.min()))
    assert torch.allclose(grid.std()[0], sd, rtol=1e-2)
    assert (grid.cells_per_sd() >= 4).all()
    assert grid.axes.shape == (2, 80) and not torch.allclose(grid.axes[0], grid.axes[1])
    exact_q = exact_posterior_guide(model)  # the guide is scored on the same rectangle
    assert torch.allclose(guide_on_grid(exact_q, model, x, grid.axes), grid.log_posterior, atol=1e-3)


@pytest.mark.parametrize("bounds", [(1.0, -1.0), (0.0, float("nan")), ((0.0, 1.0), (2.0, 2.0)), ((0.0, 1.0),), "ab"])
def test_bad_bounds_are_refused_by_value(bounds):
    model, guide = make_ppca(latent_dim=2)
    with pytest.raises(ValueError, match="bounds"):
        grid_posterior(model, guide, sample_ppca(model, 1), bounds=bounds, points=10)


def test_the_resolution_is_the_conditional_sd_in_cells_so_a_diagonal_ridge_is_refused():
    """A posterior with correlation 0.999: cells a quarter of the marginal sd are 11 times the conditional one (0.045 sd)."""
    cov = torch.tensor([[1.0, 0.999], [0.999, 1.0]], dtype=torch.float64)
    scale = torch.linalg.cholesky(cov)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), scale_tril=scale))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) * 0.0, 1.0).to_event(1), obs=x)  # uninformative: posterior = prior

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), scale_tril=scale))

    x = torch.zeros(1, 1, dtype=torch.float64)
    exact = dist.Normal(0.0, 1.0).log_prob(x[0, 0])
    unchecked = grid_posterior(model, guide, x, bounds=(-6.0, 6.0), points=48, check=False)  # a quarter of the marginal sd
    assert abs(float(unchecked.log_px[0] - exact)) > 0.05  # the lattice misses the ridge
    with pytest.raises(GridTooCoarse, match="given the other axis"):
        grid_posterior(model, guide, x, bounds=(-6.0, 6.0), points=48)
    fine = grid_posterior(model, guide, x, bounds=(-5.0, 5.0), points=1000)
    assert abs(float(fine.log_px[0] - exact)) < 1e-4
    assert torch.allclose(fine.std()[0], torch.ones(2, dtype=torch.float64), atol=1e-3)
    assert abs(float(fine.correlation()[0]) - 0.999) < 1e-4
    assert torch.allclose(fine.conditional_std()[0], torch.full((2,), (1 - 0.999**2) ** 0.5, dtype=torch.float64), rtol=1e-2)
