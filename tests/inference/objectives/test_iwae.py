"""Importance-weighted objectives: per-datapoint value, unbiased gradients against a quadrature oracle, STL and DReG variance."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from inference.objectives import make_loss
from inference.program import inspect_program, log_weights


class Gaussian1D(nn.Module):
    """z ~ N(m, 1), x | z ~ N(z, 1): the posterior is N((m + x)/2, 1/2)."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(self.m, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


class LinearGuide(nn.Module):
    def __init__(self, a=0.2, b=0.1, log_s=0.3):
        super().__init__()
        self.a, self.b, self.log_s = (nn.Parameter(torch.tensor(v)) for v in (a, b, log_s))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.a * x + self.b, self.log_s.exp()))


def quadrature_nodes(model, guide, x0: float, nodes: int = 40, detach_z: bool = False):
    """Gauss-Hermite nodes of the reparameterization noise: (weights, log p(x0, z), log q(z|x0)) at z = loc + scale * eps."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    eps = torch.tensor(t * math.sqrt(2.0), dtype=torch.float64)
    weights = torch.tensor(w / math.sqrt(math.pi), dtype=torch.float64)
    x = torch.tensor(x0, dtype=torch.float64)
    loc = guide.a.double() * x + guide.b.double()
    scale = guide.log_s.double().exp()
    z = loc + scale * eps
    if detach_z:
        z = z.detach()
    log_p = dist.Normal(model.m.double(), 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)
    return weights, log_p, dist.Normal(loc, scale).log_prob(z)


def exact_iwae_bound(model, guide, x0: float, k: int = 2, nodes: int = 40) -> torch.Tensor:
    """L_K(x0) by K-dimensional Gauss-Hermite quadrature over the reparameterization noise (differentiable)."""
    weights, log_p, log_q = quadrature_nodes(model, guide, x0, nodes)
    log_w = log_p - log_q
    grids = torch.meshgrid(*([log_w] * k), indexing="ij")
    wgrid = torch.meshgrid(*([weights] * k), indexing="ij")
    inner = torch.logsumexp(torch.stack(grids), 0) - math.log(k)
    return (torch.stack(wgrid).prod(0) * inner).sum()


def params(model, guide):
    return [model.m, guide.a, guide.b, guide.log_s]


@pytest.mark.parametrize("name,k", [("iwae", 2), ("iwae", 3), ("iwae-dreg", 2), ("iwae-dreg", 3), ("iwae-stl", 1)])
def test_expected_gradient_equals_the_exact_gradient_of_the_bound(name, k):
    """STL only at K = 1: for K > 1 its guide gradient is biased (Tucker et al. 2019), which DReG corrects."""
    model, guide = Gaussian1D(), LinearGuide()
    x0 = 0.7
    exact = torch.autograd.grad(exact_iwae_bound(model, guide, x0, k=k, nodes=40 if k < 3 else 24), params(model, guide))
    exact = torch.stack(exact).float()
    loss = make_loss(name, model, guide, num_particles=k)
    copies = torch.full((500,), x0)  # 500 independent datapoint copies: 500 draws of the gradient per batch
    draws = []
    for _ in range(40):
        grads = torch.autograd.grad(loss(copies), params(model, guide))
        draws.append(-torch.stack(grads) / len(copies))
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() < 3 * se + 1e-4).all(), (name, mean, exact, se)


def test_stl_is_biased_for_the_guide_beyond_one_sample():
    model, guide = Gaussian1D(), LinearGuide()
    exact = torch.stack(torch.autograd.grad(exact_iwae_bound(model, guide, 0.7, k=2), [guide.a, guide.b, guide.log_s])).float()
    loss = make_loss("iwae-stl", model, guide, num_particles=2)
    copies = torch.full((2000,), 0.7)
    draws = torch.stack([-torch.stack(torch.autograd.grad(loss(copies), [guide.a, guide.b, guide.log_s])) / len(copies) for _ in range(10)])
    assert ((draws.mean(0) - exact).abs() > 5 * draws.std(0) / math.sqrt(len(draws))).any()


def test_value_is_the_per_datapoint_log_mean_exp():
    model, guide = Gaussian1D(), LinearGuide()
    x = torch.tensor([0.1, -1.0, 2.0])
    info = inspect_program(model, guide, x)
    loss = make_loss("iwae", model, guide, num_particles=7)
    loss(x)  # the first call inspects the programs (drawing random numbers); then the same draws as below
    pyro.set_rng_seed(3)
    value = loss(x)
    pyro.set_rng_seed(3)
    lw = log_weights(model, guide, x, 7, info)
    expected = -(torch.logsumexp(lw, 0) - math.log(7)).sum()
    torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-5)


def test_stl_guide_gradient_vanishes_at_the_exact_posterior():
    model, guide = Gaussian1D(), LinearGuide(a=0.5, b=0.15, log_s=math.log(math.sqrt(0.5)))  # (m + x)/2 with m = 0.3
    loss = make_loss("iwae-stl", model, guide, num_particles=5)
    grads = torch.autograd.grad(loss(torch.randn(50)), [guide.a, guide.b, guide.log_s])
    assert max(g.abs().item() for g in grads) < 1e-4
    plain = make_loss("iwae", model, guide, num_particles=5)
    grads = torch.autograd.grad(plain(torch.randn(50)), [guide.a, guide.b, guide.log_s])
    assert max(g.abs().item() for g in grads) > 1e-2  # the plain estimator is noisy there


@pytest.mark.slow
def test_dreg_has_lower_guide_gradient_variance_than_iwae_at_k50():
    model, guide = Gaussian1D(), LinearGuide()
    x = torch.full((1,), 0.7)
    variances = {}
    for name in ("iwae", "iwae-dreg"):
        loss = make_loss(name, model, guide, num_particles=50)
        draws = torch.stack([torch.stack(torch.autograd.grad(loss(x), [guide.a, guide.b, guide.log_s])) for _ in range(300)])
        variances[name] = draws.var(0)
    assert (variances["iwae-dreg"] < variances["iwae"] / 3).all(), variances


class CoinGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(-0.5))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(logits=self.logit))


def coin_model(x):
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(2.0 * c, 1.0), obs=x)


def test_discrete_guides_get_the_right_gradient_from_iwae():
    """K = 1: IWAE is the ELBO, whose exact gradient in the logit is a finite sum over c in {0, 1}."""
    guide = CoinGuide()
    x = torch.full((4000,), 1.5)
    loss = make_loss("iwae", coin_model, guide, num_particles=1)
    draws = torch.stack([torch.autograd.grad(loss(x), [guide.logit])[0] / -len(x) for _ in range(20)])

    def exact_elbo(logit):
        q1 = torch.sigmoid(logit)
        terms = [(1 - q1) * (math.log(0.5) + dist.Normal(0.0, 1.0).log_prob(torch.tensor(1.5)) - torch.log(1 - q1)),
                 q1 * (math.log(0.5) + dist.Normal(2.0, 1.0).log_prob(torch.tensor(1.5)) - torch.log(q1))]
        return sum(terms)

    exact = torch.autograd.grad(exact_elbo(guide.logit), [guide.logit])[0]
    assert abs(draws.mean() - exact) < 3 * draws.std() / math.sqrt(len(draws)) + 1e-4
    assert exact.abs() > 0.05  # not the zero gradient RenyiELBO(alpha=0) gives here (pyro issue 3289)


def test_bad_settings_are_refused():
    model, guide = Gaussian1D(), LinearGuide()
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1, got 0"):
        make_loss("iwae", model, guide, num_particles=0)
    with pytest.raises(ValueError, match="KL warm-up does not apply"):
        make_loss("iwae-dreg", model, guide, num_particles=2).set_latent_scale(0.5)


def test_global_latents_are_drawn_once_and_their_factor_counted_once():
    """theta ~ N(0,1), z_i ~ N(theta,1), x_i ~ N(z_i,1); guide theta ~ Delta(t), z_i ~ p(z_i|x_i,theta).

    With the exact conditional posterior as the local proposal every log weight equals log p(x_i | theta) exactly,
    so the loss is -[log p(t) + sum_i log N(x_i; t, 2)], with theta's factor counted once, not once per datapoint.
    """
    from tests.oracles import global_latent_model

    t = 0.4

    def guide(x):
        theta = pyro.sample("theta", dist.Delta(torch.tensor(t)))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((theta + x) / 2, math.sqrt(0.5)))

    x = torch.tensor([0.2, -0.5, 1.3])
    value = make_loss("iwae", global_latent_model, guide, num_particles=4)(x)
    theta_term = dist.Normal(0.0, 1.0).log_prob(torch.tensor(t))
    expected = -(theta_term + dist.Normal(t, math.sqrt(2.0)).log_prob(x).sum())
    assert value.item() == pytest.approx(expected.item(), abs=1e-4)


def test_training_with_iwae_improves_the_bound():
    from inference.training import TrainOptions, fit
    from ppl_models import build_model, model_config

    model, guide = build_model(model_config("vae", 10, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8]))
    x = (torch.rand(100, 10, generator=torch.Generator().manual_seed(0)) < torch.linspace(0.1, 0.9, 10)).float()
    bound = make_loss("iwae", model, guide, num_particles=5)
    before = bound(x).item()
    fit(model, guide, x, TrainOptions(objective="iwae-dreg", num_particles=5, epochs=15, batch_size=50, lr=1e-2))
    assert bound(x).item() < before - 100  # the summed negative bound falls by more than 1 nat per point


def exact_coin_bound(logit: torch.Tensor, x0: float, k: int) -> torch.Tensor:
    """L_K for the coin model by summing over all 2^K joint draws of c."""
    import itertools

    q1 = torch.sigmoid(logit)
    total = 0.0
    for cs in itertools.product((0, 1), repeat=k):
        prob = torch.stack([q1 if c else 1 - q1 for c in cs]).prod()
        log_w = torch.stack([
            math.log(0.5) + dist.Normal(2.0 * c, 1.0).log_prob(torch.tensor(x0)) - torch.log(q1 if c else 1 - q1) for c in cs
        ])
        total = total + prob * (torch.logsumexp(log_w, 0) - math.log(k))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iwae", "vimco"])
def test_discrete_estimators_are_unbiased_against_enumeration_and_vimco_is_less_noisy(name):
    guide = CoinGuide()
    x = torch.full((2000,), 1.5)
    exact = torch.autograd.grad(exact_coin_bound(guide.logit, 1.5, 3), [guide.logit])[0]
    loss = make_loss(name, coin_model, guide, num_particles=3)
    draws = torch.stack([torch.autograd.grad(loss(x), [guide.logit])[0] / -len(x) for _ in range(20)])
    assert abs(draws.mean() - exact) < 3 * draws.std() / math.sqrt(len(draws)) + 1e-4, (name, draws.mean(), exact)
    single = torch.stack([torch.autograd.grad(loss(x[:1]), [guide.logit])[0] for _ in range(400)])
    if name == "vimco":
        plain = make_loss("iwae", coin_model, guide, num_particles=3)
        plain_single = torch.stack([torch.autograd.grad(plain(x[:1]), [guide.logit])[0] for _ in range(400)])
        assert single.var() < plain_single.var() / 2, (single.var(), plain_single.var())


# ---- edges: flows, parameters shared with the model, global latents (every parameter against an independent estimator)


def gradient_draws(loss, params, x: torch.Tensor, reps: int) -> torch.Tensor:
    """``reps`` draws of the per-datapoint mean gradient of the bound (``-loss / len(x)``), flattened over ``params``."""
    draws = []
    for _ in range(reps):
        grads = torch.autograd.grad(loss(x), params, allow_unused=True)
        draws.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]) / -len(x))
    return torch.stack(draws).double()


def assert_same_expectation(a: torch.Tensor, b: torch.Tensor, sigmas: float = 4.0) -> None:
    """Two sets of independent draws (reps, components) have the same mean in every component, within ``sigmas`` SE."""
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = diff.abs() / se.clamp(min=1e-12)
    bad = (diff.abs() > sigmas * se + 1e-7).nonzero().squeeze(-1)
    assert len(bad) == 0, f"{len(bad)} of {len(diff)} components differ by more than {sigmas} SE (max {z.max():.1f} SE)"


def small_vae(guide: str, model: str = "vae"):
    from ppl_models import build_model, model_config

    torch.manual_seed(1)
    if model == "ladder":
        return build_model(model_config("ladder", 3, "gaussian", latent_dims=[2, 2], hidden=[4], upper_hidden=[3]))
    return build_model(model_config("vae", 3, "gaussian", latent_dim=2, hidden=[4], encoder_hidden=[4], guide=guide,
                                    flow_layers=2, flow_hidden=[4]))


X0 = torch.tensor([[0.5, -0.3, 1.0], [-1.2, 0.4, 0.1]])


@pytest.mark.parametrize("family", ["ffg", "full", "iaf", "coupling"])
def test_dreg_is_unbiased_for_every_parameter_of_every_guide_family(family):
    """E[DReG gradient] = E[IWAE gradient] (unbiased) for the model, the encoder and the flow networks alike."""
    model, guide = small_vae(family)
    params = [p for m in (model, guide) for p in m.parameters()]
    x = X0.repeat(200, 1)
    draws = {name: gradient_draws(make_loss(name, model, guide, num_particles=3), params, x, 60) for name in ("iwae", "iwae-dreg")}
    assert_same_expectation(draws["iwae-dreg"], draws["iwae"])


@pytest.mark.slow
def test_dreg_is_unbiased_when_the_guide_runs_the_models_networks():
    """The ladder guide merges its bottom-up statistics with the model's top-down networks: they get both gradients."""
    model, guide = small_vae("ffg", model="ladder")
    params = [p for m in (model, guide) for p in m.parameters()]
    assert any(p is q for p in model.top_down.parameters() for q in params)
    x = X0.repeat(200, 1)
    draws = {name: gradient_draws(make_loss(name, model, guide, num_particles=3), params, x, 60) for name in ("iwae", "iwae-dreg")}
    assert_same_expectation(draws["iwae-dreg"], draws["iwae"])


@pytest.mark.parametrize("family", ["iaf", "coupling"])
def test_stl_has_zero_variance_at_the_exact_posterior_for_flow_guides(family):
    """z ~ N(0, I), x | z ~ N(z, I): the exact posterior is N(x/2, I/2), which a flow guide holds with identity flows.

    There every log weight is log p(x) whatever z is, so the STL gradient (through z only) vanishes for every guide
    parameter, the flow networks' included; a score term left in for the flows would not vanish.
    """
    from pyro.distributions.transforms import ConditionalAffineAutoregressive

    model, guide = build_identity_posterior_pair(family)
    flow_params = list(guide.head.flows.parameters())
    assert flow_params
    x = torch.randn(40, 2)
    loss = make_loss("iwae-stl", model, guide, num_particles=1)
    grads = torch.autograd.grad(loss(x), list(guide.parameters()), allow_unused=True)
    assert max(0.0 if g is None else g.abs().max().item() for g in grads) < 1e-4
    plain = make_loss("iwae", model, guide, num_particles=1)
    grads = torch.autograd.grad(plain(x), flow_params, allow_unused=True)
    assert max(0.0 if g is None else g.abs().max().item() for g in grads) > 1e-2  # the plain estimator is noisy there
    assert isinstance(guide.head.flows[0], ConditionalAffineAutoregressive) == (family == "iaf")


def build_identity_posterior_pair(family: str):
    """A 2-D VAE with an identity decoder and unit noise, and a flow guide set to its exact posterior N(x/2, I/2)."""
    from ppl_models import build_model, model_config

    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 2, "gaussian", latent_dim=2, hidden=[3], encoder_hidden=[], guide=family,
                                            flow_layers=2, flow_hidden=[5]))

    class IdentityDecoder(nn.Module):
        def forward(self, z):
            raw_unit = math.log(math.expm1(1.0 - model.min_scale))  # softplus(raw) + min_scale = 1
            return torch.cat([z, torch.full_like(z, raw_unit)], -1)

    model.decoder = IdentityDecoder()
    with torch.no_grad():
        net = guide.head.params_net
        net.weight.zero_()
        net.bias.zero_()
        # coupling layers are separated by a flip of the halves: start from the flipped mean so the output is x / 2
        net.weight[:2, :2] = 0.5 * (torch.eye(2).flip(0) if family == "coupling" else torch.eye(2))
        net.bias[2:] = 0.5 * math.log(0.5)
        for flow in guide.head.flows:  # zero output layers: each flow is the identity map
            last = [m for m in flow.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
    return model, guide


class GlobalShiftGuide(nn.Module):
    """theta ~ Delta(t); z_i ~ N(a x_i + b theta + c, s^2): a deliberately imperfect local guide."""

    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(0.4))
        self.a, self.b, self.c, self.log_s = (nn.Parameter(torch.tensor(v)) for v in (0.3, 0.2, -0.1, -0.2))

    def forward(self, x):
        theta = pyro.sample("theta", dist.Delta(self.t))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.a * x + self.b * theta + self.c, self.log_s.exp()))


class GlobalModel(nn.Module):
    """theta ~ N(0, 1); z_i ~ N(theta, 1); x_i ~ N(z_i, 1) (the global-latent oracle model, as a module)."""

    def forward(self, x):
        from tests.oracles import global_latent_model

        global_latent_model(x)


def exact_global_bound(guide: GlobalShiftGuide, x: torch.Tensor, k: int = 2, nodes: int = 40) -> torch.Tensor:
    """log p(t) - log Delta(t) + sum_i L_K(x_i | theta = t), by K-dimensional Gauss-Hermite quadrature over the noise."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    eps = torch.tensor(t * math.sqrt(2.0), dtype=torch.float64)
    weights = torch.tensor(w / math.sqrt(math.pi), dtype=torch.float64)
    theta = guide.t.double()
    total = dist.Normal(0.0, 1.0).log_prob(theta)
    for xi in x.double():
        loc = guide.a.double() * xi + guide.b.double() * theta + guide.c.double()
        scale = guide.log_s.double().exp()
        z = loc + scale * eps
        log_w = dist.Normal(theta, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(xi) - dist.Normal(loc, scale).log_prob(z)
        grids = torch.meshgrid(*([log_w] * k), indexing="ij")
        wgrid = torch.meshgrid(*([weights] * k), indexing="ij")
        total = total + (torch.stack(wgrid).prod(0) * (torch.logsumexp(torch.stack(grids), 0) - math.log(k))).sum()
    return total


@pytest.mark.parametrize("name", ["iwae", "iwae-dreg"])
def test_gradients_with_a_global_latent_match_quadrature(name):
    """Every parameter, the global latent's t included: DReG conditions its re-scored programs on theta detached."""
    model, guide = GlobalModel(), GlobalShiftGuide()
    x = torch.tensor([0.7, -0.4, 1.5])
    params = list(guide.parameters())
    exact = torch.stack(torch.autograd.grad(exact_global_bound(guide, x), params)).double()
    loss = make_loss(name, model, guide, num_particles=2)
    copies = x.repeat(400)  # the bound of 400 copies of x is 400 times the bound of x, theta's factor counted once per copy of x
    draws = []
    for _ in range(60):
        grads = torch.autograd.grad(loss(copies), params)
        draws.append(-torch.stack(grads).double() / 400)
    # the global factor is counted once per batch: rescale its share to once per copy of x
    prior_grad = torch.zeros(len(params), dtype=torch.float64)
    prior_grad[0] = -guide.t.double().detach()  # d/dt log N(t; 0, 1)
    draws = torch.stack(draws) + prior_grad * (1 - 1 / 400)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() < 4 * se + 1e-4).all(), (name, mean, exact, se)


class PersistentFlowGuide(nn.Module):
    """q(z|x) = an IAF transform *module* (registered, no context) over N(x/2, I/2): its sampling pass leaves a cache."""

    def __init__(self):
        super().__init__()
        from pyro.distributions.transforms import AffineAutoregressive
        from pyro.nn import AutoRegressiveNN

        self.flow = AffineAutoregressive(AutoRegressiveNN(2, [4]))
        with torch.no_grad():  # identity: zero output layer
            last = [m for m in self.flow.modules() if isinstance(m, nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()

    def forward(self, x):
        base = dist.Normal(x / 2, math.sqrt(0.5)).to_event(1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))


def test_stl_stops_a_persistent_flow_whose_sampling_cache_would_answer_log_prob():
    """Pyro's transforms cache (x, y) from sampling; re-scored on the same tensor, a persistent flow would return its
    cached log-scale, graph and all. Re-scored on copies, its parameters are stopped like every other."""
    model, _ = build_identity_posterior_pair("iaf")
    guide = PersistentFlowGuide()
    loss = make_loss("iwae-stl", model, guide, num_particles=1)
    grads = torch.autograd.grad(loss(torch.randn(30, 2)), list(guide.parameters()), allow_unused=True)
    assert max(0.0 if g is None else g.abs().max().item() for g in grads) < 1e-4


def test_non_reparameterized_global_latents_are_refused_by_the_pathwise_objectives():
    class CoinGlobalGuide(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit = nn.Parameter(torch.tensor(0.0))

        def forward(self, x):
            pyro.sample("c", dist.Bernoulli(logits=self.logit))
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x / 2, 0.7))

    def model(x):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(c, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    for name in ("iwae", "rws", "wake-sleep"):
        with pytest.raises(ValueError, match="global guide site 'c' is not reparameterized.*'elbo' or 'tracegraph'"):
            make_loss(name, model, CoinGlobalGuide(), num_particles=2)(torch.randn(4))
    loss = make_loss("tracegraph", model, CoinGlobalGuide())
    loss.dataset_size = 40
    with pytest.raises(ValueError, match="'c'.*not reparameterized.*full batch"):
        loss(torch.randn(4))
    assert torch.isfinite(loss(torch.randn(40)))  # the full batch: Pyro's own score-function gradient applies
