"""SA-VAE (semi-amortized training) against closed forms and finite differences on linear Gaussian models."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.objectives import make_loss
from inference.objectives.semi_amortized import SemiAmortizedELBO, clip_per_datapoint, clip_per_tensor
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
    """decoder_through_refinement=False, with the random numbers held fixed (same seed): the objective is then a
    deterministic function of the parameters.

    * the encoder's gradient equals central finite differences of that function (so it includes the
      second-order terms of the k unrolled steps);
    * the model's gradient equals finite differences of the bound at the *fixed* refined parameters
      lambda_k (the steps themselves give the model no gradient).
    """
    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    loss = SemiAmortizedELBO(model, guide, 1, svi_steps=3, svi_lr=0.3, decoder_through_refinement=False)

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


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_the_decoder_gradient_through_the_refinement_is_the_derivative_of_theta_to_the_bound_at_lambda_k_of_theta(analytic_kl):
    """decoder_through_refinement=True (the default, Kim et al.'s code): with fixed noise, the model's gradient equals central
    finite differences of theta -> L(x; lambda_k(theta, phi), theta), the refinement rerun at each perturbed theta (momentum,
    batch-level clipping active), and differs from the gradient at fixed lambda_k by more than the finite differences' error."""
    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    options = dict(svi_steps=4, svi_lr=0.8, svi_momentum=0.5, max_grad_norm=0.5, analytic_kl=analytic_kl)
    loss = SemiAmortizedELBO(model, guide, 1, **options)
    stopped = SemiAmortizedELBO(model, guide, 1, **options, decoder_through_refinement=False)

    def value_at_seed(objective=loss):
        pyro.set_rng_seed(7)
        return objective(x)

    pyro.set_rng_seed(7)
    start = {k: v.detach().requires_grad_(True) for k, v in guide.variational_params(x).items()}
    first = torch.autograd.grad(loss.bound(x, start).mean(), list(start.values()))
    assert min(float(g.norm()) for g in first) > options["max_grad_norm"]  # the clipping acts (its derivative is on the path)
    through = grads(value_at_seed, [model])
    numeric = _finite_differences(value_at_seed, list(model.parameters()))
    torch.testing.assert_close(through, numeric, rtol=1e-5, atol=1e-6)
    at_fixed = grads(lambda: value_at_seed(stopped), [model])
    assert (through - at_fixed).abs().max() > 1e-2, (through, at_fixed)
    # the encoder's gradient is the total derivative in both
    torch.testing.assert_close(grads(value_at_seed, [guide]), _finite_differences(value_at_seed, list(guide.parameters())), rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("reduction, lr", [("mean", 0.4), ("sum", 0.02)])
def test_refinement_climbs_to_the_closed_form_best_ffg_of_ppca(reduction, lr):
    """The k momentum steps alone, from an untrained encoder, against PPCA's exact ELBO and exact best FFG (20 points: the
    mean's step 0.4 is the sum's 0.02 per datapoint)."""
    torch.manual_seed(0)
    model, guide = PPCA(6, 2).double(), FFGEncoder(6, 2, hidden=[]).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    loss = SemiAmortizedELBO(model, guide, 20, svi_steps=400, svi_lr=lr, reduction=reduction, svi_momentum=0.5, clip="batch",
                             max_grad_norm=100.0 if reduction == "sum" else 5.0)
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


class PriorOnly(nn.Module):
    """p(z) = N(m, diag v), an observation that does not depend on z: with the closed-form KL, each datapoint's ELBO is
    -KL(N(mu, s^2) || N(m, v)) + const, deterministic, with gradients -(mu - m)/v in mu and 1 - s^2/v in log s."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        self.log_v = nn.Parameter(torch.tensor([0.5, -0.7], dtype=torch.float64))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.m, (0.5 * self.log_v).exp()).to_event(1))
            pyro.sample("x", dist.Normal(x.new_zeros(3), 1.0).to_event(1), obs=x)


def _closed_form_gradient(model, p):
    v = model.log_v.detach().exp()
    return {"loc": -(p["loc"] - model.m.detach()) / v, "log_scale": 1 - (2 * p["log_scale"]).exp() / v}


@pytest.mark.parametrize("clip, reduction", [("batch", "mean"), ("batch", "sum"), ("datapoint", "sum")])
def test_k_momentum_steps_are_the_reference_recursion_on_a_closed_form_elbo(clip, reduction):
    """v <- mu v + clip(g); lambda <- lambda + lr v, by hand from the closed-form gradient, against refine (k = 6)."""
    model, guide, x = PriorOnly(), ParamsGuide(), data()
    lr, mu, max_norm, k = 0.7, 0.5, 1.5, 6
    loss = SemiAmortizedELBO(model, guide, 1, svi_steps=k, svi_lr=lr, svi_momentum=mu, clip=clip, reduction=reduction, max_grad_norm=max_norm)
    with torch.no_grad():
        start = guide.variational_params(x)
    p = {key: value.clone() for key, value in start.items()}
    velocity = {key: torch.zeros_like(value) for key, value in p.items()}
    clipped_somewhere = False
    for _ in range(k):
        g = {key: value / (len(x) if reduction == "mean" else 1) for key, value in _closed_form_gradient(model, p).items()}
        for key in g:
            if clip == "batch":
                norm = g[key].norm()
                clipped_somewhere |= bool(norm > max_norm)
                g[key] = g[key] * min(1.0, max_norm / (float(norm) + 1e-6))
        if clip == "datapoint":
            norms = (g["loc"].pow(2).sum(1) + g["log_scale"].pow(2).sum(1)).sqrt()
            clipped_somewhere |= bool((norms > max_norm).any())
            g = {key: value * (max_norm / norms).clamp(max=1.0)[:, None] for key, value in g.items()}
        velocity = {key: mu * velocity[key] + g[key] for key in p}
        p = {key: p[key] + lr * velocity[key] for key in p}
    refined = loss.refine(x, start)
    for key in p:
        torch.testing.assert_close(refined[key], p[key], rtol=1e-6, atol=1e-8)
    assert clipped_somewhere  # the clipping acts in some step (so the comparison covers it)
    # momentum matters: the same steps without it end elsewhere
    plain = SemiAmortizedELBO(model, guide, 1, svi_steps=k, svi_lr=lr, svi_momentum=0.0, clip=clip, reduction=reduction, max_grad_norm=max_norm)
    assert not torch.allclose(plain.refine(x, start)["loc"], p["loc"])


def test_batch_clipping_scales_each_tensor_over_the_batch_to_the_norm_and_differs_from_per_datapoint():
    g = {"loc": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "log_scale": torch.tensor([[0.1, 0.0], [0.0, 0.1]])}
    clipped = clip_per_tensor(g, 2.0)
    assert abs(float(clipped["loc"].norm()) - 2.0) < 1e-5  # above the norm: scaled as a whole to it
    torch.testing.assert_close(clipped["loc"], g["loc"] * 2.0 / (g["loc"].norm() + 1e-6))
    torch.testing.assert_close(clipped["log_scale"], g["log_scale"])  # below it: unchanged
    per_point = clip_per_datapoint(g, 2.0)
    assert not torch.allclose(per_point["loc"], clipped["loc"])  # the second row, under 2 on its own, is left alone there
    torch.testing.assert_close(per_point["loc"][1], g["loc"][1])
    # in refine: one plain step of size 1 moves each tensor by exactly its clipped gradient (total norm max_grad_norm)
    model, guide, x = PriorOnly(), ParamsGuide(), data()
    loss = SemiAmortizedELBO(model, guide, 1, svi_steps=1, svi_lr=1.0, svi_momentum=0.0, reduction="sum", max_grad_norm=0.25)
    with torch.no_grad():
        start = guide.variational_params(x)
    moved = loss.refine(x, start)
    for key in start:
        assert abs(float((moved[key] - start[key]).norm()) - 0.25) < 1e-6
    per_datapoint = SemiAmortizedELBO(model, guide, 1, svi_steps=1, svi_lr=1.0, svi_momentum=0.0, reduction="sum", max_grad_norm=0.25,
                                      clip="datapoint").refine(x, start)
    rows = ((per_datapoint["loc"] - start["loc"]).pow(2).sum(1) + (per_datapoint["log_scale"] - start["log_scale"]).pow(2).sum(1)).sqrt()
    torch.testing.assert_close(rows, torch.full_like(rows, 0.25))
    assert not torch.allclose(per_datapoint["loc"], moved["loc"])


def test_the_closed_form_kl_has_the_sampled_kls_mean_and_no_noise():
    from inference.objectives.kl_control import elbo_terms

    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    info = SemiAmortizedELBO(model, guide, 1)._prepare(x)
    exact = closed_form_kl(guide, x)
    pyro.set_rng_seed(0)
    sampled = torch.stack([elbo_terms(model, guide, x, info, 1)[1]["z"].detach() for _ in range(400)])
    analytic = torch.stack([elbo_terms(model, guide, x, info, 1, analytic_kl=True)[1]["z"].detach() for _ in range(3)])
    assert ((sampled.mean(0) - exact).abs() < 3 * sampled.std(0) / 20).all() and (sampled.std(0) > 0.1).all()
    torch.testing.assert_close(analytic, exact.expand(3, -1))  # every draw: the closed form itself


def closed_form_kl(guide, x):
    p = guide.variational_params(x)
    m, s2 = p["loc"].detach(), (2 * p["log_scale"].detach()).exp()
    return 0.5 * (s2 + m.pow(2) - 1 - torch.log(s2)).sum(-1)


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
    with pytest.raises(ValueError, match="svi_momentum=0.9 applies to objective"):
        make_loss("elbo", model, guide, svi_momentum=0.9)


@pytest.mark.parametrize("options, message", [
    ({"svi_momentum": 1.0}, "svi_momentum must be in \\[0, 1\\), got 1.0"),
    ({"svi_momentum": -0.1}, "svi_momentum must be a finite number >= 0, got -0.1"),
    ({"clip": "row"}, "unknown svi_clip 'row'; choose from batch, datapoint"),
    ({"reduction": "avg"}, "unknown svi_reduction 'avg'; choose from mean, sum"),
    ({"decoder_through_refinement": "yes"}, "decoder_through_refinement must be True or False, got 'yes'"),
    ({"analytic_kl": 1}, "svi_analytic_kl must be True or False, got 1"),
    ({"max_grad_norm": 0.0}, "max_grad_norm must be a finite number > 0, got 0.0"),
    ({"svi_lr": -1.0}, "svi_lr must be a finite number > 0, got -1.0"),
])
def test_bad_inner_optimizer_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        SemiAmortizedELBO(LinearGaussian(), ParamsGuide(), 1, svi_steps=2, **options)


@pytest.mark.parametrize("options, message", [
    ({"svi_momentum": 1.5}, "svi_momentum must be in"), ({"svi_clip": "row"}, "unknown svi_clip 'row'"),
    ({"svi_reduction": "avg"}, "unknown svi_reduction 'avg'"), ({"decoder_through_refinement": "no"}, "decoder_through_refinement must be"),
    ({"max_grad_norm": -5.0}, "max_grad_norm must be a finite number >= 0, got -5.0"),
])
def test_train_options_refuse_bad_sa_vae_options_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        TrainOptions(objective="sa-vae", svi_steps=2, **options)


def test_train_options_reach_the_objective_and_clip_the_outer_gradient():
    from inference.training import SVIModule

    model, guide, x = LinearGaussian(), ParamsGuide(), data()
    config = TrainOptions(objective="sa-vae", svi_steps=2, svi_lr=0.5, svi_momentum=0.25, svi_clip="datapoint", svi_reduction="sum",
                          svi_analytic_kl=False, decoder_through_refinement=False, max_grad_norm=5.0)
    loss = SVIModule(model, guide, x, config).elbo
    assert (loss.svi_steps, loss.svi_lr, loss.svi_momentum, loss.clip, loss.reduction, loss.analytic_kl, loss.decoder_through_refinement) == (
        2, 0.5, 0.25, "datapoint", "sum", False, False)
    with pytest.raises(ValueError, match="svi_clip=datapoint applies to objective"):
        make_loss("elbo", model, guide, svi_clip="datapoint")


def test_outer_gradient_clipping_bounds_each_step():
    """max_grad_norm: the gradient Adam steps with, over all trained parameters, is clipped to it (fit on a tiny VAE)."""
    torch.manual_seed(0)
    from ppl_models import build_model, model_config

    seen = []
    model, guide = build_model(model_config("vae", 16, "bernoulli", latent_dim=2, hidden=[8], encoder_hidden=[8]))
    x = torch.bernoulli(torch.full((40, 16), 0.3))
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(float(torch.cat([p.grad.reshape(-1) for g in self.param_groups for p in g["params"] if p.grad is not None]).norm()))
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        fit(model, guide, x, TrainOptions(objective="sa-vae", svi_steps=1, epochs=1, batch_size=20, max_grad_norm=0.01))
        clipped = list(seen)
        seen.clear()
        fit(model, guide, x, TrainOptions(objective="sa-vae", svi_steps=1, epochs=1, batch_size=20))
    finally:
        torch.optim.Adam.step = original
    assert len(clipped) == 2 and max(clipped) <= 0.01 + 1e-6
    assert min(seen) > 0.01  # without the option, the same steps' gradients are larger
