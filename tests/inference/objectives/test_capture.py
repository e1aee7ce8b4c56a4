"""The captured ELBO is Trace_ELBO's estimator, value for value and gradient for gradient."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators import elbo
from inference.objectives import make_loss
from inference.objectives.capture import CapturedELBO, CaptureError
from inference.training import TrainOptions, fit
from ppl_models import build_model, model_config
from tests.oracles import discrete_latent_pair, global_latent_model, make_ppca, sample_ppca


def grads(module):
    out = [p.grad.clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    return out


@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("which", ["vae", "ppca"])
def test_matches_trace_elbo_exactly(which, beta):
    if which == "vae":
        model, guide = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8]))
        x = torch.bernoulli(torch.rand(9, 12))
    else:
        model, guide = make_ppca()
        x = sample_ppca(model, 9)
    captured, reference = make_loss("captured-elbo", model, guide), make_loss("elbo", model, guide)
    for loss in (captured, reference):
        loss.set_latent_scale(beta)
    for _ in range(2):  # the second call replays the recording
        pyro.set_rng_seed(4)
        a = captured(x)
        a.backward()
        ga = grads(model) + grads(guide)
        pyro.set_rng_seed(4)
        with pyro.validation_enabled(False):
            b = reference(x)
        b.backward()
        gb = grads(model) + grads(guide)
        torch.testing.assert_close(a, b)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)
    assert len(captured._graphs) == 1
    captured(x[:4])
    assert len(captured._graphs) == 2  # one recording per input shape


def test_global_latents_enter_once():
    def guide(x):
        theta = pyro.sample("theta", dist.Normal(0.3, 0.5))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((theta + x) / 2, 0.8))

    x = torch.randn(6)
    pyro.set_rng_seed(1)
    a = make_loss("captured-elbo", global_latent_model, guide)(x)
    pyro.set_rng_seed(1)
    b = pyro.infer.Trace_ELBO().differentiable_loss(global_latent_model, guide, x)
    torch.testing.assert_close(a, b)


def test_refuses_what_it_cannot_replay():
    model, guide = discrete_latent_pair()
    with pytest.raises(CaptureError, match="'c' is not reparameterized.*objective 'elbo'"):
        CapturedELBO(model, guide)(torch.randn(4))
    with pytest.raises(ValueError, match="one sample per datapoint"):
        make_loss("captured-elbo", model, guide, num_particles=3)


def test_trains_like_trace_elbo():
    x = torch.bernoulli(torch.rand(1, 8).expand(120, 8))
    results = {}
    for objective in ("elbo", "captured-elbo"):
        torch.manual_seed(0)
        model, guide = build_model(model_config("vae", 8, "bernoulli", latent_dim=2, hidden=[8], encoder_hidden=[8]))
        fit(model, guide, x, TrainOptions(objective=objective, epochs=3, batch_size=40, kl_warmup_epochs=1))
        results[objective] = torch.cat([p.detach().flatten() for p in (*model.parameters(), *guide.parameters())])
    # same seed, same estimator, same noise: the same parameters up to float rounding
    torch.testing.assert_close(results["elbo"], results["captured-elbo"], atol=1e-5, rtol=1e-4)
    assert elbo(model, guide, x, 10).value.isfinite().all()
