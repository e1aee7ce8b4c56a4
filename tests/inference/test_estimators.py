"""Per-datapoint ELBO and IWAE estimators against PPCA's closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators import elbo, log_likelihood
from inference.program import inspect_program, log_weights
from tests.oracles import best_ffg_guide, exact_posterior_guide, global_latent_model, make_ppca, sample_ppca


def test_exact_posterior_proposal_gives_exact_log_likelihood_with_zero_variance():
    model, _ = make_ppca()
    x = sample_ppca(model, 6)
    guide = exact_posterior_guide(model)
    exact = model.log_marginal(x).detach().double()
    for estimator in (log_likelihood, elbo):
        est = estimator(model, guide, x, 3)
        torch.testing.assert_close(est.value, exact, atol=2e-4, rtol=0)
        assert (est.stderr < 1e-3).all()


def test_elbo_of_the_best_ffg_matches_closed_form_within_3_se():
    model, _ = make_ppca()
    x = sample_ppca(model, 20)
    est = elbo(model, best_ffg_guide(model, x), x, 2000)
    loc, scale = model.best_ffg(x)
    exact = model.elbo(x, loc, scale).detach().double()
    z = (est.value - exact) / est.stderr
    assert z.abs().max() < 4
    assert abs((est.value - exact).mean()) < 3 * est.stderr.pow(2).sum().sqrt() / len(x)


def test_elbo_of_the_amortized_guide_matches_closed_form():
    model, guide = make_ppca()
    x = sample_ppca(model, 20)
    est = elbo(model, guide, x, 2000)
    loc, scale = guide.posterior_params(x)
    exact = model.elbo(x, loc, scale).detach().double()
    assert abs((est.value - exact).mean()) < 3 * est.stderr.pow(2).sum().sqrt() / len(x)


def test_log_likelihood_reaches_the_exact_value_within_3_se():
    model, _ = make_ppca()
    x = sample_ppca(model, 20)
    est = log_likelihood(model, best_ffg_guide(model, x), x, 5000)
    exact = model.log_marginal(x).detach().double()
    se_mean = est.stderr.pow(2).sum().sqrt() / len(x)
    assert abs((est.value - exact).mean()) < 3 * se_mean
    assert (est.value - exact).abs().max() < 0.05


def test_iwae_bound_rises_with_k_toward_exact():
    model, guide = make_ppca()  # untrained encoder: a poor proposal, so the bound moves
    x = sample_ppca(model, 30)
    exact = model.log_marginal(x).detach().double().mean()
    means = []
    for k in (1, 10, 100, 1000):
        est = log_likelihood(model, guide, x, k)
        se = est.stderr.nan_to_num(0).pow(2).sum().sqrt() / len(x)
        means.append(est.value.mean())
        assert est.value.mean() <= exact + 3 * se + 1e-9
    assert all(b > a for a, b in zip(means, means[1:])), means
    assert exact - means[-1] < exact - means[0]


def test_chunked_streaming_equals_one_logsumexp():
    model, guide = make_ppca()
    x = sample_ppca(model, 5)
    info = inspect_program(model, guide, x)
    pyro.set_rng_seed(7)
    chunked = log_likelihood(model, guide, x, 10, chunk_size=3)
    pyro.set_rng_seed(7)
    inspect_program(model, guide, x)  # the estimator inspects first: consume the same draws
    lw = torch.cat([log_weights(model, guide, x, n, info) for n in (3, 3, 3, 1)]).detach()
    torch.testing.assert_close(chunked.value, torch.logsumexp(lw, 0) - math.log(10))
    w = (lw - lw.max(0).values).exp()
    mean, sd = w.mean(0), w.std(0)
    torch.testing.assert_close(chunked.stderr, sd / math.sqrt(10) / mean)
    pyro.set_rng_seed(7)
    chunked_elbo = elbo(model, guide, x, 10, chunk_size=4)
    pyro.set_rng_seed(7)
    inspect_program(model, guide, x)
    lw = torch.cat([log_weights(model, guide, x, n, info) for n in (4, 4, 2)]).detach()
    torch.testing.assert_close(chunked_elbo.value, lw.mean(0))
    torch.testing.assert_close(chunked_elbo.stderr, lw.std(0) / math.sqrt(10))


def test_global_latents_are_excluded_from_per_datapoint_weights():
    # theta ~ N(0,1) global, z_i ~ N(theta, 1), x_i ~ N(z_i, 1). Given theta, the guide below is the
    # exact local posterior, so every weight equals p(x_i | theta) = N(x_i; theta, 2): no p(theta)/q(theta).
    m = 0.7
    model = global_latent_model

    def guide(x):
        theta = pyro.sample("theta", dist.Normal(m, 1e-6))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((theta + x) / 2, math.sqrt(0.5)))

    x = torch.randn(8) * 2
    exact = dist.Normal(m, math.sqrt(2.0)).log_prob(x).double()
    torch.testing.assert_close(log_likelihood(model, guide, x, 4).value, exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(elbo(model, guide, x, 4).value, exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sample_counts_are_refused(bad):
    model, guide = make_ppca()
    x = sample_ppca(model, 2)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        log_likelihood(model, guide, x, bad)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        elbo(model, guide, x, bad)
