"""Reweighted wake-sleep and wake-sleep: expected updates against exact ones, per datapoint on mini-batches."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.objectives import make_loss
from inference.program import inspect_program
from inference.sampling import dream
from tests.inference.objectives.test_iwae import Gaussian1D, LinearGuide, params, quadrature_nodes


def exact_rws_surrogate(model, guide, x0: float, k: int, insomnia: float = 1.0, nodes: int = 40) -> torch.Tensor:
    """E[sum_k w~_k (log p(x, z_k) + insomnia log q(z_k|x))] with the samples and weights held fixed, by quadrature.

    Its gradient is the exact expected RWS wake update (model and guide).
    """
    weights, log_p, log_q = quadrature_nodes(model, guide, x0, nodes, detach_z=True)
    grid = lambda v: torch.stack(torch.meshgrid(*([v] * k), indexing="ij"))  # noqa: E731
    prob = grid(weights).prod(0)
    w_tilde = torch.softmax(grid(log_p - log_q).detach(), 0)
    return (prob * (w_tilde * (grid(log_p) + insomnia * grid(log_q))).sum(0)).sum()


def expected_gradient(loss, x, parameters, repeats=40):
    draws = torch.stack([-torch.stack(torch.autograd.grad(loss(x), parameters)) / len(x) for _ in range(repeats)])
    return draws.mean(0), draws.std(0) / math.sqrt(repeats)


@pytest.mark.parametrize("k", [2, 3])
def test_rws_wake_update_is_exact_in_expectation_per_datapoint(k):
    """A batch of two different datapoints: the weights must be normalized within each one, not across the batch."""
    model, guide = Gaussian1D(), LinearGuide()
    exact = sum(
        torch.stack(torch.autograd.grad(exact_rws_surrogate(model, guide, x0, k, nodes=40 if k < 3 else 24), params(model, guide)))
        for x0 in (0.7, -1.2)
    ) / 2
    # the model's part is the exact gradient of the IWAE bound
    from tests.inference.objectives.test_iwae import exact_iwae_bound

    bound_grad = sum(torch.autograd.grad(exact_iwae_bound(model, guide, x0, k=k, nodes=40 if k < 3 else 24), [model.m])[0] for x0 in (0.7, -1.2)) / 2
    assert exact[0].item() == pytest.approx(bound_grad.item(), abs=1e-6)
    x = torch.tensor([0.7, -1.2]).repeat(300)
    mean, se = expected_gradient(make_loss("rws", model, guide, num_particles=k), x, params(model, guide))
    assert ((mean - exact.float()).abs() < 3 * se + 1e-4).all(), (mean, exact, se)


def exact_sleep_gradient(model, guide):
    """E_{p(z, x)}[grad log q(z|x)] for z ~ N(m, 1), x ~ N(z, 1) and q = N(a x + b, s^2), in closed form."""
    m, a, b, s = model.m.item(), guide.a.item(), guide.b.item(), guide.log_s.exp().item()
    mean_r = m - a * m - b  # r = z - a x - b
    mean_r2 = (1 - a) ** 2 + a**2 + mean_r**2
    mean_rx = (1 + m**2) - a * (2 + m**2) - b * m
    return torch.tensor([mean_rx / s**2, mean_r / s**2, -1 + mean_r2 / s**2])


def test_wake_sleep_updates_are_exact_in_expectation():
    model, guide = Gaussian1D(), LinearGuide()
    x0 = 0.7
    wake = (guide.a * x0 + guide.b - model.m).item()  # E_q[d/dm log p(x, z)] = E_q[z] - m
    exact = torch.cat([torch.tensor([wake]), exact_sleep_gradient(model, guide)])
    mean, se = expected_gradient(make_loss("wake-sleep", model, guide, num_particles=2), torch.full((600,), x0), params(model, guide))
    assert ((mean - exact).abs() < 3 * se + 1e-4).all(), (mean, exact, se)


@pytest.mark.parametrize("insomnia,name", [(0.0, "rws-sleep"), (0.5, "rws-both")])
def test_rws_sleep_and_mixed_guide_updates(insomnia, name):
    model, guide = Gaussian1D(), LinearGuide()
    x0, k = 0.7, 2
    wake = torch.stack(torch.autograd.grad(exact_rws_surrogate(model, guide, x0, k, insomnia=1.0), params(model, guide)))
    model_part = torch.stack(torch.autograd.grad(exact_rws_surrogate(model, guide, x0, k, insomnia=0.0), params(model, guide)))
    exact = model_part + insomnia * (wake - model_part) + (1 - insomnia) * torch.cat([torch.zeros(1), exact_sleep_gradient(model, guide)]).double()
    mean, se = expected_gradient(make_loss(name, model, guide, num_particles=k), torch.full((600,), x0), params(model, guide))
    assert ((mean - exact.float()).abs() < 3 * se + 1e-4).all(), (mean, exact, se)


def test_values_are_the_per_datapoint_bounds():
    from inference.program import log_weights

    model, guide = Gaussian1D(), LinearGuide()
    x = torch.tensor([0.1, -1.0, 2.0])
    info = inspect_program(model, guide, x)
    for name, combine in (("rws", lambda lw: torch.logsumexp(lw, 0) - math.log(4)), ("wake-sleep", lambda lw: lw.mean(0))):
        loss = make_loss(name, model, guide, num_particles=4)
        loss(x)
        pyro.set_rng_seed(5)
        value = loss(x)
        pyro.set_rng_seed(5)
        expected = -combine(log_weights(model, guide, x, 4, info)).sum()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-5)


def test_dreams_come_from_the_model_and_odd_programs_are_refused():
    from inference.program import ConventionError

    model, guide = Gaussian1D(), LinearGuide()
    x = torch.zeros(20000)
    info = inspect_program(model, guide, x)
    x_dream, latents = dream(model, x, info)
    assert x_dream.shape == x.shape
    # x' ~ N(m, 2): mean and variance within 3 SE
    assert abs(x_dream.mean().item() - 0.3) < 3 * math.sqrt(2 / len(x))
    assert abs(x_dream.var().item() - 2.0) < 3 * 2.0 * math.sqrt(2 / len(x))
    assert torch.allclose((x_dream - latents["z"]).std(), torch.tensor(1.0), atol=0.05)

    def two_observations(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.sample("y", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ConventionError, match="exactly one observed site"):
        make_loss("wake-sleep", two_observations, guide)(torch.zeros(3))
    with pytest.raises(ValueError, match="KL warm-up does not apply"):
        make_loss("rws", model, guide, 2).set_latent_scale(0.1)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1, got 0"):
        make_loss("wake-sleep", model, guide, 0)


def test_global_latents_are_handled_by_rws_and_wake_sleep():
    """theta ~ N(0,1) global, z_i ~ N(theta,1), x_i ~ N(z_i,1); guide theta ~ N(t, 0.1), z ~ p(z|x, theta).

    With the exact conditional as local proposal the RWS value is -[log p/q(theta) + sum_i log N(x_i; theta, 2)].
    """
    from tests.oracles import global_latent_model

    t = torch.nn.Parameter(torch.tensor(0.4))

    def guide(x):
        theta = pyro.sample("theta", dist.Normal(t, 0.1))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((theta + x) / 2, math.sqrt(0.5)))

    x = torch.tensor([0.2, -0.5, 1.3])
    for name in ("rws", "rws-both", "wake-sleep"):
        loss = make_loss(name, global_latent_model, guide, num_particles=3)
        loss(x)  # the first call inspects the programs, drawing random numbers
        pyro.set_rng_seed(0)
        value = loss(x)
        pyro.set_rng_seed(0)
        theta = dist.Normal(t, 0.1).sample()
        expected = -(dist.Normal(0.0, 1.0).log_prob(theta) - dist.Normal(t, 0.1).log_prob(theta) + dist.Normal(theta, math.sqrt(2.0)).log_prob(x).sum())
        if name != "wake-sleep":  # the wake-sleep value is the ELBO, below this
            assert value.item() == pytest.approx(expected.item(), abs=1e-4), name
        else:
            assert value.item() > expected.item() - 1e-4
        (grad,) = torch.autograd.grad(value, [t])
        assert torch.isfinite(grad)


def test_training_with_rws_and_wake_sleep_improves_the_bound():
    from inference.training import TrainOptions, fit
    from ppl_models import build_model, model_config

    x = (torch.rand(200, 10, generator=torch.Generator().manual_seed(0)) < torch.linspace(0.1, 0.9, 10)).float()
    for objective in ("rws", "wake-sleep"):
        model, guide = build_model(model_config("sbn", 10, "bernoulli", layers=[4], baseline="none"))
        bound = make_loss("iwae", model, guide, num_particles=10)
        before = bound(x).item()
        fit(model, guide, x, TrainOptions(objective=objective, num_particles=5, epochs=20, batch_size=50, lr=3e-2))
        assert bound(x).item() < before - 200, objective  # more than 1 nat per point


@pytest.mark.parametrize("name,oracle", [("rws", "iwae"), ("rws-both", "iwae"), ("wake-sleep", "elbo")])
def test_parameters_the_guide_shares_with_the_model_get_the_model_update_only(name, oracle):
    """The ladder guide runs the model's top-down networks. Under rws and wake-sleep those are model parameters:
    their update is the IWAE (rws) or wake (wake-sleep) gradient of the model alone, i.e. the gradient that the
    same objective gives when the guide runs a *copy* of the model, which the model update cannot reach."""
    import copy

    from tests.inference.objectives.test_iwae import X0, assert_same_expectation, gradient_draws, small_vae

    model, guide = small_vae("ffg", model="ladder")
    separate = copy.deepcopy(guide)
    separate._model = (copy.deepcopy(model),)  # the same guide, reading a copy of the model's networks
    shared = list(model.top_down.parameters())
    x = X0.repeat(200, 1)
    k = 1 if oracle == "elbo" else 3
    draws = gradient_draws(make_loss(name, model, guide, num_particles=k), shared, x, 60)
    reference = gradient_draws(make_loss(oracle, model, separate, num_particles=k), shared, x, 60)
    assert_same_expectation(draws, reference)


def test_the_sleep_phase_refuses_auxiliary_guide_sites():
    from pyro.infer.autoguide import AutoNormal

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    loss = make_loss("wake-sleep", model, AutoNormal(model), num_particles=1)
    with pytest.raises(ValueError, match="auxiliary sites.*use 'rws'"):
        loss(torch.randn(5))
