"""PPCA's closed forms are the oracle for everything else, so they are checked first."""

import math

import torch

from tests.oracles import make_ppca, sample_ppca


def test_log_marginal_matches_bayes_rule_identity():
    # log p(x) = log p(x|z) + log p(z) - log p(z|x) holds for every z.
    model, _ = make_ppca()
    x = sample_ppca(model, 5)
    post = model.posterior(x)
    z = post.loc + torch.randn_like(post.loc)
    with torch.no_grad():
        log_lik = torch.distributions.Normal(z @ model.weight.T + model.bias, model.noise).log_prob(x).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_post = torch.distributions.MultivariateNormal(post.loc, post.covariance).log_prob(z)
        torch.testing.assert_close(model.log_px(x), log_lik + log_prior - log_post, atol=1e-4, rtol=0)


def test_elbo_closed_form_matches_monte_carlo():
    model, _ = make_ppca()
    x = sample_ppca(model, 3)
    loc, scale = torch.randn(3, 2), torch.rand(3, 2) + 0.2
    z = loc + scale * torch.randn(200_000, 3, 2)
    with torch.no_grad():
        lw = (
            torch.distributions.Normal(z @ model.weight.T + model.bias, model.noise).log_prob(x).sum(-1)
            + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        )
        se = lw.std(0) / math.sqrt(len(lw))
        assert ((lw.mean(0) - model.elbo(x, loc, scale)).abs() < 3 * se).all()


def test_best_ffg_is_optimal_and_its_gap_is_exact():
    model, _ = make_ppca()
    x = sample_ppca(model, 4)
    with torch.no_grad():
        loc, scale = model.best_ffg(x)
        best = model.elbo(x, loc, scale)
        for _ in range(20):
            worse = model.elbo(x, loc + 0.05 * torch.randn_like(loc), scale * (1 + 0.1 * torch.randn_like(scale)).abs())
            assert (worse <= best + 1e-6).all()
        torch.testing.assert_close(model.log_px(x) - best, model.approximation_gap(x), atol=1e-4, rtol=0)
        assert (model.approximation_gap(x) > 0).all()


def test_approximation_gap_vanishes_for_orthogonal_weights():
    # W with orthogonal columns makes the posterior precision diagonal: FFG is exact.
    model, _ = make_ppca(data_dim=5, latent_dim=3)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(5, 3))
        model.weight.copy_(q * torch.tensor([2.0, 1.0, 0.5]))
        x = sample_ppca(model, 4)
        torch.testing.assert_close(model.approximation_gap(x), torch.zeros(4), atol=1e-5, rtol=0)
