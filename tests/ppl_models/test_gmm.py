"""Gaussian mixture: exact marginal, enum training, the sklearn peer, zero approximation gap, bad input."""

import pytest
import torch

from benchmarks.mixture import compare, digits_pca, synthetic
from inference.enumeration import exact_elbo, exact_log_px
from inference.estimators import elbo, iwae_log_px
from inference.gaps import gap_decomposition
from inference.objectives import make_loss
from inference.training import TrainOptions, fit
from ppl_models import build_model, model_config


def small_gmm(covariance="full", k=3, d=2):
    return build_model(model_config("gmm", d, "gaussian", components=k, covariance=covariance, encoder_hidden=[8]))


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_closed_form_marginal_matches_enumeration_and_posterior_normalizes(covariance):
    model, guide = small_gmm(covariance)
    x = torch.randn(6, 2)
    torch.testing.assert_close(model.log_px(x).double(), exact_log_px(model, guide, x), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.posterior_logits(x).logsumexp(-1), torch.zeros(6), rtol=0, atol=1e-5)
    # by hand: log sum_k pi_k N(x; mu_k, Sigma_k)
    cov = model.scale_tril() @ model.scale_tril().transpose(-1, -2)
    comps = torch.distributions.MultivariateNormal(model.means, covariance_matrix=cov)
    by_hand = (comps.log_prob(x[:, None]) + model.mixing_logits.log_softmax(-1)).logsumexp(-1)
    torch.testing.assert_close(model.log_px(x), by_hand, rtol=0, atol=1e-4)


def test_sampled_elbo_of_the_categorical_guide_agrees_with_enumeration():
    model, guide = small_gmm()
    x = torch.randn(5, 2)
    exact = exact_elbo(model, guide, x)
    est = elbo(model, guide, x, 4000)
    assert ((est.value - exact).abs() < 3 * est.stderr).all()
    iwae = iwae_log_px(model, guide, x, 4000)
    log_px = model.log_px(x).double().detach()
    assert ((iwae.value - log_px).abs() < 3 * iwae.stderr + 1e-3).all()


def test_enum_objective_is_the_exact_marginal_and_its_gradient():
    model, guide = small_gmm()
    x = torch.randn(7, 2)
    loss = make_loss("enum", model, guide)
    value = loss(x)
    torch.testing.assert_close(value.double(), -model.log_px(x).sum().double(), rtol=0, atol=1e-4)
    value.backward()
    got = model.means.grad.clone()
    model.zero_grad()
    (-model.log_px(x).sum()).backward()
    torch.testing.assert_close(got, model.means.grad, rtol=1e-4, atol=1e-5)
    # the guide is trained too (by the exact ELBO, model held fixed)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())


def test_training_with_trace_enum_improves_the_likelihood():
    x = synthetic(200, 0)
    model, guide = small_gmm("diag")  # random means: far from the k-means start
    before = model.log_px(x).mean().item()
    fit(model, guide, x, TrainOptions(objective="enum", epochs=15, batch_size=50, lr=0.05))
    assert model.log_px(x).mean().item() > before + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "digits-pca2"])
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_held_out_likelihood_matches_sklearn_em(data, covariance):
    """Same K and covariance type, best of 2 starts each (ours and EM's n_init), both measured here: within 0.05 nats per point."""
    train, test = (synthetic(600, 0), synthetic(400, 1)) if data == "synthetic" else digits_pca(2)
    row = compare(train, test, 3, covariance, restarts=2)
    assert abs(row["difference"]) < 0.05, row


def test_categorical_q_star_is_the_closed_form_posterior():
    """q* of the categorical guide's own family against the mixture's closed-form posterior (an independent code path:
    log pi_k + log N(x; mu_k, Sigma_k), normalized), and L[q*] against the closed-form log p(x)."""
    model, guide = small_gmm()
    x = synthetic(12, 3)
    result = gap_decomposition(model, guide, x, log_px_samples=200, elbo_samples=200)
    assert result.family == "categorical"
    with torch.no_grad():
        posterior = model.posterior_logits(x).double()
        exact = model.log_px(x).double()
    q_star = torch.log_softmax(result.local.guide.params("z")["logits"].double(), -1)
    torch.testing.assert_close(q_star, posterior, rtol=0, atol=1e-4)
    torch.testing.assert_close(result.elbo_local.value, exact, rtol=0, atol=1e-4)  # the ELBO of the exact posterior
    assert (result.per_datapoint()["amortization_gap"] > -1e-4).all()


def test_bad_mixtures_are_refused():
    from ppl_models import GaussianMixture

    with pytest.raises(ValueError, match="num_components >= 1, got 0"):
        GaussianMixture(2, 0)
    with pytest.raises(ValueError, match="components must be a positive integer, got 0"):
        model_config("gmm", 2, "gaussian", components=0)
    with pytest.raises(ValueError, match="unknown covariance 'spherical'"):
        build_model(model_config("gmm", 2, "gaussian", covariance="spherical"))
    with pytest.raises(ValueError, match="guide 'iaf' does not fit model 'gmm' \\(discrete latents\\)"):
        model_config("gmm", 2, "gaussian", guide="iaf")
    with pytest.raises(ValueError, match="model 'gmm' supports likelihood gaussian"):
        model_config("gmm", 2, "bernoulli")
    model, guide = small_gmm()
    with pytest.raises(ValueError, match="KL warm-up does not apply"):
        make_loss("enum", model, guide).set_latent_scale(0.5)


@pytest.mark.slow
def test_priors_turn_the_fit_into_map():
    """With priors the enum objective maximizes log p(x) + log p(theta): its gradient vanishes there, not at the MLE."""
    x = synthetic(60, 2)
    model, guide = build_model(model_config("gmm", 2, "gaussian", components=3, prior_scale=0.5, concentration=2.0, encoder_hidden=[8]))
    model.init_from_data(x, torch.Generator().manual_seed(0))
    fit(model, guide, x, TrainOptions(objective="enum", epochs=400, batch_size=60, lr=0.05))
    map_objective = model.log_px(x).sum() + model.log_prior()
    grads = torch.autograd.grad(map_objective, [model.means, model.mixing_logits])
    assert all(g.abs().max() < 0.05 for g in grads), grads
    ml_grad = torch.autograd.grad(model.log_px(x).sum(), model.means)[0]
    assert ml_grad.abs().max() > 1.0  # the prior pulled the means away from the maximum-likelihood point
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        build_model(model_config("gmm", 2, "gaussian", prior_scale=0.0))
