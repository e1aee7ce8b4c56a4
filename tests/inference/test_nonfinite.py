"""Estimators refuse to return NaN or infinity, and say why: non-finite parameters, a zero guide scale, huge data."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.ais import AISOptions, ais
from inference.estimators import elbo, iwae_log_px
from inference.nonfinite import NonFiniteError
from ppl_models import build_model, model_config


def small_vae(likelihood="bernoulli"):
    torch.manual_seed(0)
    return build_model(model_config("vae", 6, likelihood, latent_dim=2, hidden=[4], encoder_hidden=[4]))


def test_non_finite_parameters_are_named():
    model, guide = small_vae()
    x = torch.ones(3, 6)
    with torch.no_grad():
        next(guide.parameters()).view(-1)[0] = float("nan")
    name = next(n for n, _ in guide.named_parameters())
    for estimate in (lambda: elbo(model, guide, x, 5), lambda: iwae_log_px(model, guide, x, 5)):
        with pytest.raises(NonFiniteError, match=f"for 3 of 3 datapoints.*non-finite parameters: guide.{name}"):
            estimate()
    with pytest.raises(NonFiniteError, match=f"AIS log p\\(x\\).*guide.{name}"):
        ais(model, guide, x, num_chains=2, num_steps=3, init="guide")
    assert AISOptions  # the AIS entry point shares the refusal


class ZeroScaleGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, 0.0]))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(2), self.scale, validate_args=False).to_event(1))


def test_a_zero_guide_scale_is_named():
    model, _ = small_vae()
    with pytest.raises(NonFiniteError, match="guide site 'z' has a non-finite log density at datapoint 0 \\(its scale is zero\\)"):
        elbo(model, ZeroScaleGuide(), torch.ones(2, 6), 4)


def test_data_beyond_float32_are_refused_with_the_reason_not_returned_as_nan():
    model, guide = small_vae("gaussian")
    x = torch.full((2, 6), 1e20)
    with pytest.raises(NonFiniteError, match="the ELBO is .* for 2 of 2.*the data hold values up to 1e\\+20.*rescale them"):
        elbo(model, guide, x, 4)
    finite = elbo(model, guide, torch.full((2, 6), 30.0), 4).value  # far from the data but representable: a number
    assert bool(torch.isfinite(finite).all()) and float(finite.max()) < -100


def test_exact_enumeration_refuses_a_nan_too():
    from inference.enumeration import exact_log_px

    torch.manual_seed(0)
    model, guide = build_model(model_config("sbn", 6, "bernoulli", layers=[3]))
    x = torch.ones(2, 6)
    assert bool(torch.isfinite(exact_log_px(model, guide, x)).all())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite parameters: model\\."):
        exact_log_px(model, guide, x)
