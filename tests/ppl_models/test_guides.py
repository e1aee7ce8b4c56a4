"""Amortized Gaussian guide families: shapes, densities, training; PPCA's full-covariance guide holds the posterior."""

import pytest
import torch

from inference.estimators import elbo
from inference.program import inspect_program
from inference.training import TrainOptions, fit
from ppl_models import GAUSSIAN_FAMILIES, build_model, model_config
from ppl_models.guides import FFGEncoder, GaussianHead
from tests.oracles import make_ppca, sample_ppca


@pytest.mark.parametrize("family", GAUSSIAN_FAMILIES)
def test_heads_give_normalized_densities_of_the_right_shape(family):
    head = GaussianHead(5, 3, family, flow_layers=2, flow_hidden=[6])
    h = torch.randn(4, 5)
    q = head(h)
    z = q.rsample((7,))
    assert z.shape == (7, 4, 3)
    assert q.log_prob(z).shape == (7, 4) and torch.isfinite(q.log_prob(z)).all()
    # normalized: E_q[1] = 1 by importance sampling against a broad Gaussian on a 1-datapoint head
    q1 = head(h[:1])
    ref = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3), 4.0 * torch.ones(3)), 1)
    w = ref.sample((200_000,))
    ratio = (q1.log_prob(w.unsqueeze(1)).squeeze(1) - ref.log_prob(w)).exp()
    assert abs(ratio.mean().item() - 1.0) < 3 * ratio.std().item() / len(ratio) ** 0.5
    # a density read back at fresh points (the flows' inverse, not their cache) matches the sampling path
    z = q1.sample((5,))
    torch.testing.assert_close(q1.log_prob(z), head(h[:1]).log_prob(z.clone()), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["full", "iaf", "coupling"])
def test_vae_trains_with_every_guide_family(family):
    model, guide = build_model(model_config("vae", 10, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8], guide=family, flow_hidden=[6]))
    x = (torch.rand(100, 10, generator=torch.Generator().manual_seed(0)) < torch.linspace(0.1, 0.9, 10)).float()
    inspect_program(model, guide, x)
    before = elbo(model, guide, x, 50).value.mean()
    fit(model, guide, x, TrainOptions(epochs=15, batch_size=50, lr=1e-2))
    assert elbo(model, guide, x, 50).value.mean() > before + 1.0


@pytest.mark.slow
def test_amortized_full_covariance_guide_reaches_the_ppca_marginal():
    """Training only the guide: its family holds the exact posterior (linear mean, constant covariance)."""
    model, _ = make_ppca(latent_dim=3, collinear=0.5)
    _, guide = build_model(model_config("ppca", model.data_dim, "gaussian", latent_dim=model.latent_dim, guide="full"))
    x = sample_ppca(model, 300)
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(guide.parameters(), lr=2e-2)
    from inference.program import log_weights

    info = inspect_program(model, guide, x)
    for _ in range(1500):
        optimizer.zero_grad()
        (-log_weights(model, guide, x, 10, info).mean()).backward()
        optimizer.step()
    gap = model.log_px(x[:20]).double() - elbo(model, guide, x[:20], 2000).value
    assert gap.mean().item() < 0.02
    assert (model.approximation_gap(x[:20]) > 0.5).all()  # an FFG guide could not get there


@pytest.mark.parametrize("hidden", [[], [7], [7, 5]])
def test_ffg_encoder_reads_checkpoints_of_its_one_network_form(hidden):
    """Before FFGEncoder was a GaussianEncoder it held one network ``net``; such a state dict loads to the same q."""
    from ppl_models.networks import mlp

    torch.manual_seed(0)
    old = mlp(6, hidden, 2 * 3, "elu")  # the old layout: data_dim -> hidden -> 2 * latent_dim
    guide = FFGEncoder(6, 3, hidden, "elu")
    guide.load_state_dict({f"net.{k}": v for k, v in old.state_dict().items()})
    x = torch.rand(4, 6)
    loc, log_scale = old(x).chunk(2, -1)
    assert torch.equal(guide.posterior_params(x)[0], loc) and torch.equal(guide.posterior_params(x)[1], log_scale.exp())
