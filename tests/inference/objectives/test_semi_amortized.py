"""SA-VAE (semi-amortized training) against closed forms and finite differences on linear Gaussian models."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.objectives import make_loss
from inference.objectives.semi_amortized import SemiAmortizedELBO, clip_per_datapoint
from inference.training import TrainOptions, fit
from ppl_models import FFGEncoder
from ppl_models.ppca import PPCA
from tests.inference.objectives.test_kl_control import LinearGaussian, closed_form_loss, data


class ParamsGuide(nn.Module):
    """q(z|x) = N(Ax + c, diag s^2), exposing its per-datapoint output as SA-VAE needs it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Parameter(0.3 * torch.randn(2, 3, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor([0.2, -0.1], dtype=torch.float64))
        self.log_s = nn.Parameter(torch.tensor([-0.5, -1.0], dtype=torch.float64))

    def variational_params(self, x):
        return {"loc": x @ self.a.T + self.c, "log_scale": self.log_s.expand(len(x), 2)}

    def forward(self, x, params=None):
        p = self.variational_params(x) if params is None else params
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(p["loc"], p["log_scale"].exp()).to_event(1))


def grads(loss_fn, modules):
    for m in modules:
        m.zero_grad()
    loss_fn().backward()
    return torch.cat([p.grad.reshape(-1) for m in modules for p in m.parameters()])


def test_zero_steps_is_the_elbo_in_value_and_gradient():
    """k = 0: the closed-form ELBO and its gradient (every model and guide parameter) within 3 SE over 60 draws."""
    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    loss = make_loss("sa-vae", model, guide, 1, svi_steps=0)
    modules = [model, guide]
    pyro.set_rng_seed(0)
    draws = torch.stack([torch.cat([loss(x).detach().reshape(1), grads(lambda: loss(x), modules)]) for _ in range(60)])

    exact_value = closed_form_loss(model, guide, x)[0]  # reads the same a, c, log_s
    exact = torch.cat([exact_value.detach().reshape(1), grads(lambda: closed_form_loss(model, guide, x)[0], modules)])
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    assert ((mean - exact).abs() < 3 * se + 1e-9).all(), (mean - exact) / se


def test_the_encoder_gradient_goes_through_the_refinement_and_the_model_gradient_holds_lambda_k_fixed():
    """With the random numbers held fixed (same seed), the objective is a deterministic function of the parameters.

    * the encoder's gradient equals central finite differences of that function (so it includes the
      second-order terms of the k unrolled steps);
    * the model's gradient equals finite differences of the bound at the *fixed* refined parameters
      lambda_k (the steps themselves give the model no gradient).
    """
    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    loss = SemiAmortizedELBO(model, guide, 1, svi_steps=3, svi_lr=0.05)

    def value_at_seed():
        pyro.set_rng_seed(5)
        return loss(x)

    autograd = grads(value_at_seed, [guide])
    numeric = _finite_differences(value_at_seed, list(guide.parameters()))
    torch.testing.assert_close(autograd, numeric, rtol=1e-5, atol=1e-6)
    # without the second-order terms (steps taken on detached copies) the encoder gradient is different
    pyro.set_rng_seed(5)
    detached = loss.refine(x, guide.variational_params(x), create_graph=False)
    assert not torch.allclose(autograd, _encoder_gradient_at(loss, guide, x, detached))

    pyro.set_rng_seed(5)
    refined = loss.refine(x, guide.variational_params(x))
    state = torch.get_rng_state()

    def bound_at_fixed_lambda():
        torch.set_rng_state(state)
        return -loss.bound(x, refined).sum()

    model_autograd = grads(value_at_seed, [model])
    torch.testing.assert_close(model_autograd, _finite_differences(bound_at_fixed_lambda, list(model.parameters())), rtol=1e-5, atol=1e-6)


def _encoder_gradient_at(loss, guide, x, params):
    guide.zero_grad()
    params0 = guide.variational_params(x)
    # the straight-through encoder gradient: dL/dlambda_k applied at lambda_0
    surrogate = {k: params0[k] + (params[k] - params0[k]).detach() for k in params0}
    (-loss.bound(x, surrogate).sum()).backward()
    return torch.cat([p.grad.reshape(-1) for p in guide.parameters()])


def _finite_differences(fn, params, eps=1e-6):
    out = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for j in range(flat.numel()):
                old = float(flat[j])
                flat[j] = old + eps
                with torch.enable_grad():
                    up = float(fn())
                flat[j] = old - eps
                with torch.enable_grad():
                    down = float(fn())
                flat[j] = old
                out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def test_refinement_climbs_to_the_closed_form_best_ffg_of_ppca():
    """The k SGD steps alone, from an untrained encoder, against PPCA's exact ELBO and exact best FFG."""
    torch.manual_seed(0)
    model, guide = PPCA(6, 2).double(), FFGEncoder(6, 2, hidden=[]).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    loss = SemiAmortizedELBO(model, guide, 20, svi_steps=400, svi_lr=0.02)
    with torch.no_grad():
        start = guide.variational_params(x)
        before = model.elbo(x, start["loc"], start["log_scale"].exp())
        loc, scale = model.best_ffg(x)
        best = model.elbo(x, loc, scale)
    refined = loss.refine(x, start)
    with torch.no_grad():
        after = model.elbo(x, refined["loc"], refined["log_scale"].exp())
    assert float((best - before).mean()) > 5.0  # an untrained encoder is far from q*
    assert float((best - after).max()) < 0.02, (best - after)


def test_gradient_clipping_is_per_datapoint():
    g = {"loc": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "log_scale": torch.zeros(2, 2)}
    clipped = clip_per_datapoint(g, 1.0)
    torch.testing.assert_close(clipped["loc"], torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_sa_vae_trains_by_name_and_refuses_what_it_cannot_refine():
    torch.manual_seed(0)
    from ppl_models import build_model, model_config

    model, guide = build_model(model_config("vae", 16, "bernoulli", latent_dim=2, hidden=[8], encoder_hidden=[8]))
    x = torch.bernoulli(torch.full((40, 16), 0.3))
    result = fit(model, guide, x, TrainOptions(objective="sa-vae", svi_steps=2, svi_lr=0.1, epochs=2, batch_size=20))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))

    def plain_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="needs variational_params"):
        make_loss("sa-vae", model, plain_guide, svi_steps=1)
    with pytest.raises(ValueError, match="svi_steps"):
        make_loss("sa-vae", model, guide, svi_steps=-1)
    with pytest.raises(ValueError, match="svi_steps=3 applies to objective"):
        make_loss("elbo", model, guide, svi_steps=3)
