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


def test_renyi_is_pyros_bound_and_shows_its_two_issues():
    """Pyro's RenyiELBO(alpha=0): our per-datapoint IWAE bound when every site is in the data plate; with a global
    latent it combines the whole batch per particle, a looser bound (pyro issue 3104); no gradient for discrete
    guide parameters (issue 3289)."""
    import math

    import pyro.distributions as dist

    from inference.objectives import make_loss
    from tests.inference.test_iwae import CoinGuide, Gaussian1D, LinearGuide, coin_model
    from tests.oracles import global_latent_model

    def mean_se(loss, x, n=200):
        with torch.no_grad():
            v = torch.stack([loss(x) for _ in range(n)]).double() / len(x)
        return v.mean().item(), v.std().item() / math.sqrt(n)

    model, guide = Gaussian1D(), LinearGuide(log_s=1.0)  # a poor proposal: the bounds differ from the ELBO
    x = torch.linspace(-2, 2, 30)
    (r, r_se), (i, i_se) = (mean_se(make_loss(n, model, guide, num_particles=5), x) for n in ("renyi", "iwae"))
    assert abs(r - i) < 3 * math.hypot(r_se, i_se)

    t = torch.nn.Parameter(torch.tensor(0.4))

    def global_guide(x):
        theta = pyro.sample("theta", dist.Normal(t, 0.1))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(theta, 2.0))

    (r, r_se), (i, i_se) = (mean_se(make_loss(n, global_latent_model, global_guide, num_particles=5), x) for n in ("renyi", "iwae"))
    assert r - i > 10 * math.hypot(r_se, i_se), (r, i)  # the whole-batch bound is looser

    coin = CoinGuide()
    (grad,) = torch.autograd.grad(make_loss("renyi", coin_model, coin, num_particles=3)(torch.full((50,), 1.5)), [coin.logit])
    assert grad == 0
    (grad,) = torch.autograd.grad(make_loss("iwae", coin_model, coin, num_particles=3)(torch.full((50,), 1.5)), [coin.logit])
    assert grad != 0
