"""Active units and gradient signal-to-noise ratios against known answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.diagnostics import active_units, gradient_snr, posterior_means


def linear_pair(scales=(1.0, 0.05, 0.0)):
    """z ~ N(0, I_3), x ~ N(z_0, 1); guide mean = scales * x: the variance of the mean over x is scales^2 var(x)."""
    s = torch.tensor(scales)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z[..., 0], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(s * x.unsqueeze(-1), 0.5).to_event(1))

    return model, guide


def test_active_units_count_the_units_whose_posterior_mean_moves():
    model, guide = linear_pair()
    x = torch.linspace(-2, 2, 201)  # var(x) ~ 1.35: unit 0 varies by 1.35, unit 1 by 0.0034, unit 2 not at all
    units = active_units(model, guide, x)
    assert (units.active, units.total) == (1, 3)
    torch.testing.assert_close(units.variances["z"], torch.tensor([1.0, 0.0025, 0.0], dtype=torch.float64) * x.double().var(), rtol=1e-5, atol=1e-9)
    assert active_units(model, guide, x, threshold=0.001).active == 2


def test_posterior_means_fall_back_to_samples_without_a_closed_form():
    from pyro.distributions.transforms import AffineTransform

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):  # a transformed distribution: no .mean, mean 2x + 1
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.TransformedDistribution(dist.Normal(x, 1.0), [AffineTransform(1.0, 2.0)]))

    x = torch.tensor([0.0, 1.0, -1.0])
    means = posterior_means(guide, x, model, num_samples=4000)["z"][:, 0]
    assert ((means - (2 * x + 1).double()).abs() < 3 * 2 / math.sqrt(4000)).all()


def test_gradient_snr_is_mean_over_sd():
    """loss = sum_j theta_j (1 + sigma_j eps_j): gradient 1 + sigma_j eps_j, SNR_j = 1 / sigma_j."""
    theta = torch.nn.Parameter(torch.zeros(2))
    phi = torch.nn.Parameter(torch.zeros(1))
    sigma = torch.tensor([0.5, 2.0])

    def loss(x):
        return (theta * (1 + sigma * torch.randn(2))).sum() + (phi * 3.0).sum()  # phi: no noise, left out

    draws = 4000
    snr = gradient_snr(loss, torch.zeros(1), {"a": [theta], "b": [phi]}, draws=draws)
    expected = (1 / sigma).mean().item()
    se = math.sqrt(sum((1 + (1 / s) ** 2 / 2) / draws for s in sigma.tolist())) / 2
    assert snr["a"].mean == pytest.approx(expected, abs=3 * se)
    assert snr["a"].components == 2 and snr["b"].components == 0 and math.isnan(snr["b"].mean)


def test_bad_settings_are_refused():
    model, guide = linear_pair()
    with pytest.raises(ValueError, match="at least 2 datapoints"):
        active_units(model, guide, torch.zeros(1))
    with pytest.raises(ValueError, match="threshold must be positive"):
        active_units(model, guide, torch.zeros(3), threshold=0)
    with pytest.raises(ValueError, match="at least 2 draws"):
        gradient_snr(lambda x: x.sum(), torch.zeros(1), {}, draws=1)


def test_pareto_k_is_low_for_a_good_proposal_and_high_for_a_bad_one():
    """Gaussian1D: the posterior is N((m + x)/2, 1/2). Proposals: exact, 1.2x too wide, 8x too narrow."""
    from inference.diagnostics import MIN_PSIS_SAMPLES, PARETO_K_THRESHOLD, pareto_k
    from inference.estimators import iwae_log_px
    from tests.inference.objectives.test_iwae import Gaussian1D, LinearGuide

    model, x = Gaussian1D(), torch.linspace(-2, 2, 20)
    sd = math.sqrt(0.5)
    k = {name: iwae_log_px(model, LinearGuide(0.5, 0.15, math.log(scale * sd)), x, 2000, pareto=True).pareto_k
         for name, scale in (("exact", 1.0), ("wide", 1.2), ("narrow", 0.125))}
    assert (k["exact"] < 0.5).all() and (k["wide"] < 0.5).all()
    assert k["narrow"].mean() > PARETO_K_THRESHOLD and (k["narrow"] > 0.5).all()  # k-hat itself is noisy per point
    assert pareto_k(torch.randn(MIN_PSIS_SAMPLES - 1, 3)).isnan().all()  # too few weights to fit a tail
    assert iwae_log_px(model, LinearGuide(), x, 10).pareto_k is None  # only on request


def test_active_units_of_a_categorical_site_count_its_categories_by_the_variation_of_their_probabilities():
    """A categorical site has no mean: each category is a unit, active when q(z = k | x) varies over the data."""
    from ppl_models import build_model, model_config

    model, guide = build_model(model_config("gmm", 2, "gaussian", components=3, encoder_hidden=[]))
    x = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, -3.0], [1.0, 1.0]])
    with torch.no_grad():
        guide.net[0].weight.copy_(torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.0]]))
        guide.net[0].bias.zero_()
    result = active_units(model, guide, x)
    assert not any(v.isnan().any() for v in result.variances.values())
    assert result.per_site["z"] == (3, 3)  # every category's probability moves with x
    with torch.no_grad():
        guide.net[0].weight.zero_()  # q(z | x) ignores x
    assert active_units(model, guide, x).per_site["z"] == (0, 3)


def heavy_tailed_log_weights(num_samples, seed=0):
    """Log weights of light, heavy and tied tails, one datapoint each (float64)."""
    g = torch.Generator().manual_seed(seed)
    light = torch.randn(num_samples, 2, generator=g, dtype=torch.float64) * 2
    t = torch.distributions.StudentT(torch.tensor([1.5, 3.0], dtype=torch.float64))
    torch.manual_seed(seed)
    heavy = t.sample((num_samples,)).abs().log() * 2
    tied = torch.zeros(num_samples, 1, dtype=torch.float64)
    tied[: num_samples // 2] = 1.0
    return torch.cat([light, heavy, tied], 1)


@pytest.mark.parametrize("num_samples", [25, 26, 100, 1000, 5000])
def test_pareto_k_is_arviz_psis_k_hat(num_samples):
    """Our Zhang-Stephens fit of the tail against ArviZ's psislw (an independent implementation) on the same weights."""
    import arviz

    from inference.diagnostics import pareto_k

    lw = heavy_tailed_log_weights(num_samples)
    _, expected = arviz.psislw(lw.T.numpy().copy())
    ours = pareto_k(lw)
    assert ours.dtype == torch.float64 and ours.shape == (5,)
    assert torch.allclose(ours, torch.as_tensor(expected), rtol=0, atol=1e-12)  # including inf where a tie leaves no tail


def test_pareto_k_streamed_in_chunks_is_exact_and_keeps_only_the_tail():
    from inference.diagnostics import LargestLogWeights, pareto_k, psis_tail_length

    lw = heavy_tailed_log_weights(20_000, seed=1)
    largest = LargestLogWeights(len(lw))
    for chunk in lw.split(333):
        largest.add(chunk)
        assert largest.rows <= 3 * (psis_tail_length(len(lw)) + 1) + 333  # O(sqrt S) rows, not S
    assert torch.equal(largest.pareto_k(), pareto_k(lw))
    with pytest.raises(ValueError, match="19999 log weights were added, not the 20000"):
        partial = LargestLogWeights(len(lw))
        partial.add(lw[:-1])
        partial.pareto_k()


def test_nan_log_weights_and_no_samples_are_refused_by_name():
    """pareto_k once returned inf for NaN weights, and active_units(num_samples=0) divided by zero inside Pyro."""
    from inference.diagnostics import active_units, pareto_k
    from tests.oracles import make_ppca, sample_ppca

    log_w = torch.randn(100, 3, dtype=torch.float64)
    log_w[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN log weights for datapoint\(s\) \[1\]"):
        pareto_k(log_w)
    log_w[5, 1] = -float("inf")  # a zero weight is a weight
    assert torch.isfinite(pareto_k(log_w)).all()
    model, guide = make_ppca()
    with pytest.raises(ValueError, match="num_samples must be"):
        active_units(model, guide, sample_ppca(model, 4), num_samples=0)
