"""The beta-VAE and free-bits ELBOs against closed forms on a linear Gaussian model: value and gradient."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.objectives import make_loss
from inference.training import TrainOptions


class LinearGaussian(nn.Module):
    """p(z) = N(0, I_2), p(x|z) = N(Wz + b, sigma^2 I_3)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 2, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.tensor(-0.3, dtype=torch.float64))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, self.log_sigma.exp()).to_event(1), obs=x)


class LinearGuide(nn.Module):
    """q(z|x) = N(Ax + c, diag s^2)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Parameter(0.3 * torch.randn(2, 3, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor([0.2, -0.1], dtype=torch.float64))
        self.log_s = nn.Parameter(torch.tensor([-0.5, -1.0], dtype=torch.float64))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ self.a.T + self.c, self.log_s.exp()).to_event(1))


def closed_form_loss(model, guide, x, beta=1.0):
    """-(sum_i E_q[log p(x_i|z)] - beta KL(q(z|x_i) || p(z))), computed from the formulas (differentiable)."""
    m, s2 = x @ guide.a.T + guide.c, (2 * guide.log_s).exp()
    sigma2 = (2 * model.log_sigma).exp()
    residual = x - m @ model.weight.T - model.bias
    recon = -1.5 * torch.log(2 * math.pi * sigma2) - (residual.pow(2).sum(-1) + (s2 * model.weight.pow(2).sum(0)).sum()) / (2 * sigma2)
    kl = 0.5 * (s2 + m.pow(2) - 1 - torch.log(s2)).sum(-1)
    return -(recon - beta * kl).sum(), recon, kl


def data():
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_beta_vae_value_and_gradient_match_the_closed_form(beta):
    model, guide, x = LinearGaussian(), LinearGuide(), data()
    params = [*model.parameters(), *guide.parameters()]
    expected, _, _ = closed_form_loss(model, guide, x, beta)
    exact_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected, params)])
    loss = make_loss("beta-vae", model, guide, 200, beta=beta)
    torch.manual_seed(0)
    values, grads = [], []
    for _ in range(40):
        value = loss(x)
        values.append(value.detach())
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    values, grads = torch.stack(values), torch.stack(grads)
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - expected.detach()) < 3 * se + 1e-9
    grad_se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - exact_grad).abs() <= 3 * grad_se + 1e-9).all()  # every component within 3 SE


def test_free_bits_floor_the_batch_mean_kl_and_cut_its_gradient_below_the_floor():
    model, guide, x = LinearGaussian(), LinearGuide(), data()
    _, recon, kl = closed_form_loss(model, guide, x)
    floor = float(kl.detach().mean()) + 5.0  # far above every KL: the penalty is the constant B * lambda
    torch.manual_seed(3)
    floored = make_loss("free-bits", model, guide, 1, free_bits=floor)(x)
    torch.manual_seed(3)
    recon_only = make_loss("beta-vae", model, guide, 1, beta=1.0)
    r, k, _ = recon_only.terms(x)
    assert floored.item() == pytest.approx(-(r.sum() - len(x) * floor).item(), rel=1e-12)
    torch.manual_seed(3)
    g_floored = torch.autograd.grad(make_loss("free-bits", model, guide, 1, free_bits=floor)(x), guide.log_s)[0]
    torch.manual_seed(3)
    r, _, _ = recon_only.terms(x)
    g_recon = torch.autograd.grad(-r.sum(), guide.log_s)[0]
    assert torch.allclose(g_floored, g_recon)  # below the floor the KL pushes nothing
    torch.manual_seed(4)
    zero = make_loss("free-bits", model, guide, 1, free_bits=0.0)(x)
    torch.manual_seed(4)
    assert zero.item() == pytest.approx(make_loss("beta-vae", model, guide, 1)(x).item(), rel=1e-12)  # lambda = 0: the ELBO


def test_parameters_go_only_to_the_objectives_that_take_them():
    model, guide = LinearGaussian(), LinearGuide()
    with pytest.raises(ValueError, match="beta=4.0 applies to objective\\(s\\) beta-vae, not to 'elbo'"):
        make_loss("elbo", model, guide, 1, beta=4.0)
    with pytest.raises(ValueError, match="free_bits=0.5 applies to objective\\(s\\) free-bits, free-bits-dim, not to 'beta-vae'"):
        make_loss("beta-vae", model, guide, 1, free_bits=0.5)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        TrainOptions(objective="beta-vae", beta=0.0)
    with pytest.raises(ValueError, match="free_bits must be a finite number >= 0"):
        TrainOptions(objective="free-bits", free_bits=-1.0)
    assert TrainOptions(objective="beta-vae", beta=4.0).params() == {
        "beta": 4.0, "free_bits": 0.0, "svi_steps": 0, "svi_lr": 1.0, "svi_momentum": 0.5, "svi_clip": "batch", "svi_max_grad_norm": 5.0, "svi_reduction": "mean",
        "svi_analytic_kl": True, "decoder_through_refinement": True}


def test_free_bits_per_dimension_floor_each_units_batch_mean_kl_and_cut_only_its_gradient():
    model, guide, x = LinearGaussian(), LinearGuide(), data()
    loss = make_loss("free-bits-dim", model, guide, 1, free_bits=0.0)
    torch.manual_seed(5)
    recon, kl, _ = loss.terms(x)
    per_unit = kl["z"].mean(0).detach()  # (2,): each unit's batch-mean KL, from these draws
    assert kl["z"].shape == (len(x), 2)
    torch.manual_seed(5)
    _, kl_site, _ = make_loss("free-bits", model, guide, 1).terms(x)
    assert torch.allclose(kl["z"].sum(-1), kl_site["z"])  # the units' KLs add up to the site's
    low, high = sorted(per_unit.tolist())
    floor = (low + high) / 2  # above one unit's KL, below the other's
    torch.manual_seed(5)
    value = make_loss("free-bits-dim", model, guide, 1, free_bits=floor)(x)
    assert value.item() == pytest.approx(-(recon.sum() - len(x) * (high + floor)).item(), rel=1e-12)
    below = int(per_unit.argmin())
    torch.manual_seed(5)
    grad = torch.autograd.grad(make_loss("free-bits-dim", model, guide, 1, free_bits=floor)(x), guide.log_s)[0]
    torch.manual_seed(5)
    r, _, _ = loss.terms(x)
    grad_recon = torch.autograd.grad(-r.sum(), guide.log_s)[0]
    assert grad[below].item() == pytest.approx(grad_recon[below].item(), rel=1e-10)  # the floored unit: reconstruction alone
    assert grad[1 - below].item() != pytest.approx(grad_recon[1 - below].item(), rel=1e-3)  # the other still feels its KL
    torch.manual_seed(6)
    zero = make_loss("free-bits-dim", model, guide, 1, free_bits=0.0)(x)
    torch.manual_seed(6)
    assert zero.item() == pytest.approx(make_loss("beta-vae", model, guide, 1)(x).item(), rel=1e-12)  # lambda = 0: the ELBO


def test_free_bits_per_dimension_refuse_a_site_that_does_not_factorize():
    class FullGuide(LinearGuide):
        def forward(self, x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.MultivariateNormal(x @ self.a.T + self.c, scale_tril=torch.diag(self.log_s.exp())))

    with pytest.raises(ValueError, match="site 'z' is a MultivariateNormal, not a factorized distribution"):
        make_loss("free-bits-dim", LinearGaussian(), FullGuide(), 1, free_bits=0.5)(data())
