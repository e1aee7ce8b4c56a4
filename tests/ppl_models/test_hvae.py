"""Hierarchical and ladder VAEs: convention, the ladder merge, training, joint local q* over every layer."""

import pytest
import torch

from inference.estimators import elbo
from inference.local import AdamOptions, LocalOptions, StoppingRule, local_posterior
from inference.program import inspect_program
from inference.training import TrainOptions, fit
from ppl_models import build_model, model_config
from ppl_models.hvae import precision_weighted

SMALL = dict(latent_dims=[4, 2], hidden=[8], upper_hidden=[6])


def binary(n, d=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=gen) < torch.linspace(0.1, 0.9, d)).float()


@pytest.mark.parametrize("name", ["hvae", "ladder"])
def test_every_layer_is_a_local_latent(name):
    model, guide = build_model(model_config(name, 10, "bernoulli", **SMALL))
    info = inspect_program(model, guide, binary(3))
    assert set(info.local_latents) == {"z1", "z2"}


def test_iwae_paper_default_sizes():
    model, guide = build_model(model_config("hvae", 784, "bernoulli"))
    assert model.latent_dims == [100, 50]
    assert model.decoder[0].in_features == 100 and model.decoder[-1].out_features == 784
    assert [m.out_features for m in guide.features[0].modules() if isinstance(m, torch.nn.Linear)] == [200, 200]


def test_precision_weighting_is_the_product_of_gaussians():
    loc, scale = precision_weighted(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(3.0), torch.tensor(1.0))
    assert loc.item() == pytest.approx(2.0) and scale.item() == pytest.approx(0.5**0.5)
    loc, scale = precision_weighted(torch.tensor(0.0), torch.tensor(0.1), torch.tensor(5.0), torch.tensor(10.0))
    assert loc.item() == pytest.approx(0.05 / 100.01) and scale.item() == pytest.approx(100.01**-0.5)


def test_ladder_guide_uses_the_model_top_down_network():
    model, guide = build_model(model_config("ladder", 10, "bernoulli", **SMALL))
    x = binary(4)
    before = elbo(model, guide, x, 200).value
    with torch.no_grad():
        for p in model.top_down.parameters():
            p.add_(1.0)
    assert not torch.allclose(before, elbo(model, guide, x, 200).value)
    assert not any(k.startswith("_model") or k.startswith("top_down") for k in guide.state_dict())


@pytest.mark.parametrize("name,guide_family", [("hvae", "ffg"), ("hvae", "iaf"), ("ladder", "ffg")])
def test_training_improves_the_elbo(name, guide_family):
    model, guide = build_model(model_config(name, 10, "bernoulli", guide=guide_family, flow_hidden=[6], **SMALL) if name == "hvae"
                               else model_config(name, 10, "bernoulli", **SMALL))
    x = binary(100)
    before = elbo(model, guide, x, 50).value.mean()
    fit(model, guide, x, TrainOptions(epochs=15, batch_size=50, lr=1e-2))
    assert elbo(model, guide, x, 50).value.mean() > before + 1.0


@pytest.mark.slow
def test_local_ffg_optimizes_every_layer_jointly():
    model, guide = build_model(model_config("hvae", 10, "bernoulli", **SMALL))
    x = binary(4)
    result = local_posterior(model, guide, x, LocalOptions(num_samples=20, adam=AdamOptions(lr=3e-2),
                             rule=StoppingRule(window=20, patience=3, max_steps=1500)), family="ffg", eval_samples=500)
    assert set(result.guide.names) == {"z1", "z2"}
    start = local_posterior(model, guide, x, LocalOptions(num_samples=20, rule=StoppingRule(window=1, patience=1, max_steps=1)), family="ffg", eval_samples=500)
    assert (result.elbo.value > start.elbo.value).all()
    for name in ("z1", "z2"):  # both layers moved away from their starting point
        assert not torch.allclose(result.guide.params(name)["loc"], start.guide.params(name)["loc"], atol=1e-2)


def test_bad_hierarchies_are_refused():
    with pytest.raises(ValueError, match="latent_dims entries must be a positive integer, got 0"):
        model_config("hvae", 10, "bernoulli", latent_dims=[4, 0])
    with pytest.raises(ValueError, match="guide 'iaf' does not fit model 'ladder'"):
        model_config("ladder", 10, "bernoulli", guide="iaf")
    with pytest.raises(ValueError, match="model 'hvae' has no option 'latent_dim'"):
        model_config("hvae", 10, "bernoulli", latent_dim=3)
