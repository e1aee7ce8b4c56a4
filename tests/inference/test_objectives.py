"""Objectives by name, and KL warm-up through LatentScale on any program."""

import pyro
import pytest
import torch
from pyro import poutine

from inference.objectives import Annealed, make_objective
from tests.oracles import make_ppca, sample_ppca


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_latent_scale_weights_only_the_kl_part(beta):
    model, guide = make_ppca()
    x = sample_ppca(model, 7)
    loss_fn = make_objective("elbo")(Annealed(model), Annealed(guide))
    loss_fn.model.latent_scale = loss_fn.guide.latent_scale = beta
    pyro.set_rng_seed(11)
    loss = loss_fn(x)
    pyro.set_rng_seed(11)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_lik = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    z = guide_trace.nodes["z"]["value"]
    kl_part = model_trace.nodes["z"]["fn"].log_prob(z).sum() - guide_trace.nodes["z"]["fn"].log_prob(z).sum()
    torch.testing.assert_close(loss, -(log_lik + beta * kl_part))


def test_meanfield_uses_the_analytic_kl():
    model, guide = make_ppca()
    x = sample_ppca(model, 5)
    pyro.set_rng_seed(2)
    meanfield = make_objective("meanfield")(model, guide)(x)
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    kl = torch.distributions.kl_divergence(guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]).sum()
    torch.testing.assert_close(meanfield, -(model_trace.nodes["x"]["fn"].log_prob(x).sum() - kl))


def test_vectorized_particles_and_bad_counts():
    model, guide = make_ppca()
    x = sample_ppca(model, 5)
    assert torch.isfinite(make_objective("elbo", num_particles=4)(model, guide)(x))
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        make_objective("elbo", num_particles=0)
