"""Annealed importance sampling against closed forms; the HMC kernel against a known Gaussian."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.ais import HMCOptions, HMCState, adapt_step_size, ais, annealing_schedule, hmc_transition, value_and_grad
from tests.oracles import (
    MixturePriorModel,
    best_ffg_guide,
    discrete_latent_pair,
    global_latent_model,
    make_ppca,
    sample_ppca,
    standard_normal_guide,
)


@pytest.mark.parametrize("adapt_rate", [0.0, 0.02])
def test_hmc_leaves_a_correlated_gaussian_invariant(adapt_rate):
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    mu = torch.tensor([1.0, -2.0])
    precision = torch.linalg.inv(cov)

    def log_density(z):
        d = z - mu
        return -0.5 * ((d @ precision) * d).sum(-1), torch.zeros(z.shape[:-1])

    chains = 20000
    z = mu + torch.randn(chains, 2) @ torch.linalg.cholesky(cov).T  # exact draws: the kernel must keep them exact
    state = HMCState(z, *value_and_grad(log_density, z))
    hmc = HMCOptions(leapfrog_steps=5, step_size=0.3, adapt_rate=adapt_rate)
    step = torch.full((chains,), hmc.step_size, dtype=torch.float64)
    for _ in range(30):
        state, accept = hmc_transition(state, log_density, step, hmc.leapfrog_steps)
        step = adapt_step_size(step, accept, hmc)
    assert 0.3 < accept.mean() < 1.0  # it moves
    mean, sample_cov = state.z.mean(0), torch.cov(state.z.T)
    assert ((mean - mu).abs() < 3 * torch.sqrt(cov.diag() / chains)).all()
    cov_se = torch.sqrt((cov.diag().outer(cov.diag()) + cov**2) / chains)
    assert ((sample_cov - cov).abs() < 3 * cov_se).all(), sample_cov


@pytest.mark.slow
def test_ais_is_within_a_tenth_of_a_nat_on_ppca_and_improves_with_more_distributions():
    model, guide = make_ppca(collinear=0.5)  # a correlated posterior: the best FFG alone is 0.6 nats off
    x = sample_ppca(model, 6)
    exact = model.log_px(x).double().detach()
    fixed = HMCOptions(leapfrog_steps=5, step_size=0.1, adapt_rate=0.0)  # every transition exactly invariant
    from_ffg = ais(model, best_ffg_guide(model, x), x, num_chains=100, num_steps=200, hmc=fixed, init="guide")
    assert ((from_ffg.log_px.value - exact).abs() < 0.1).all(), from_ffg.log_px.value - exact
    hmc = HMCOptions(leapfrog_steps=5, step_size=0.1)  # adapted toward 0.65 acceptance
    coarse = ais(model, guide, x, num_chains=32, num_steps=3, schedule="linear", hmc=hmc)
    fine = ais(model, guide, x, num_chains=32, num_steps=100, hmc=hmc)
    assert (fine.log_px.value - exact).abs().mean() < (coarse.log_px.value - exact).abs().mean() / 3
    assert (0.3 < fine.acceptance).all() and (fine.acceptance < 1).all()


@pytest.mark.slow
def test_ais_is_within_a_tenth_of_a_nat_on_an_overlapping_mixture_prior():
    model = MixturePriorModel(separated=False)
    x = model.sample(6)
    result = ais(model, standard_normal_guide, x, num_chains=64, num_steps=200, hmc=HMCOptions(leapfrog_steps=5, step_size=0.1))
    error = result.log_px.value - model.log_px(x).double()
    assert (error.abs() < 0.1).all(), error


@pytest.mark.slow
def test_ais_is_consistent_on_a_well_separated_mixture_prior():
    """Three well-separated modes: HMC chains do not cross between them, so the weights vary a lot (measured: errors
    up to 0.23 nats with 100 chains and 1000 steps); the check is against the estimate's own standard error."""
    model = MixturePriorModel()
    x = model.sample(3)
    result = ais(model, standard_normal_guide, x, num_chains=64, num_steps=300, hmc=HMCOptions(leapfrog_steps=5, step_size=0.1))
    error = result.log_px.value - model.log_px(x).double()
    assert (error.abs() < 3 * result.log_px.stderr).all(), (error, result.log_px.stderr)


def test_schedules_run_from_zero_to_one():
    for name in ("linear", "sigmoid"):
        betas = annealing_schedule(name, 50)
        assert betas[0] == 0 and betas[-1] == 1 and (betas[1:] >= betas[:-1]).all() and len(betas) == 51
    sigmoid = annealing_schedule("sigmoid", 100)
    assert sigmoid[1] < 0.01 and sigmoid[50] == pytest.approx(0.5)  # slow at both ends


def test_bad_settings_are_refused():
    model, guide = make_ppca()
    x = sample_ppca(model, 3)
    with pytest.raises(ValueError, match="at least 1 chain, got num_chains=0"):
        ais(model, guide, x, num_chains=0, num_steps=5)
    with pytest.raises(ValueError, match="step size must be positive"):
        HMCOptions(step_size=-0.1)
    with pytest.raises(ValueError, match="must start at 0 and end at 1"):
        ais(model, guide, x, schedule=torch.tensor([0.0, 0.5, 0.9]))
    with pytest.raises(ValueError, match="non-decreasing"):
        ais(model, guide, x, schedule=torch.tensor([0.0, 0.6, 0.4, 1.0]))
    with pytest.raises(ValueError, match="unknown annealing schedule 'cosine'"):
        ais(model, guide, x, schedule="cosine")
    with pytest.raises(ValueError, match="leapfrog_steps must be an integer >= 1"):
        HMCOptions(leapfrog_steps=0)
    with pytest.raises(ValueError, match="real-valued latents; site 'c'"):
        ais(*discrete_latent_pair(), torch.zeros(3), num_steps=2)

    def global_guide(x):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(theta, 1.0))

    with pytest.raises(ValueError, match="without global latents"):
        ais(global_latent_model, global_guide, torch.zeros(3), num_steps=2)


@pytest.mark.slow
def test_ais_error_on_a_mixture_prior_shrinks_with_more_distributions():
    model = MixturePriorModel(separated=False)
    x = model.sample(6, seed=1)
    exact = model.log_px(x).double()
    hmc = HMCOptions(leapfrog_steps=5, step_size=0.1)
    errors = {}
    for steps in (3, 30, 300):
        pyro.set_rng_seed(0)
        result = ais(model, standard_normal_guide, x, num_chains=32, num_steps=steps, schedule="linear", hmc=hmc)
        errors[steps] = (result.log_px.value - exact).abs().mean()
    # mean absolute errors over three seeds (32 chains): 0.33-0.37 nats at 3 steps, 0.05-0.18 at 30, 0.07-0.10 at 300;
    # from 30 steps on the error sits at the chains' Monte Carlo noise (standard errors 0.04-0.1), so only the two
    # ends are ordered reliably, and the 300-step error is within that noise of the exact value
    assert errors[30] < errors[3] and errors[300] < errors[3] / 3, errors
    assert errors[300] < 0.1, errors


class Conjugate1D(torch.nn.Module):
    """z ~ N(0, 1), x | z ~ N(z, 0.5^2): log p(x) = log N(x; 0, 1.25)."""

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)


def test_ais_weights_stay_unbiased_with_one_chain_and_aggressive_adaptation():
    """E[w] = p(x) for every AIS weight, whatever the adaptation: the step sizes come from a pilot run and are frozen.

    One chain per datapoint, 20 linear steps, 1 leapfrog step, adapt_rate 0.3: the setting where adapting from the
    weighted chain's own acceptance biased E[w/p(x)] to 1.066 +- 0.005 (13 SE; AIS was then no lower bound).
    """
    import math

    pyro.set_rng_seed(0)
    n = 20000
    x = torch.randn(n, 1) * math.sqrt(1.25)
    exact = dist.Normal(0.0, math.sqrt(1.25)).log_prob(x[:, 0]).double()
    hmc = HMCOptions(leapfrog_steps=1, step_size=0.5, adapt_rate=0.3, max_step_size=3.0)
    result = ais(Conjugate1D(), standard_normal_1d_guide, x, num_chains=1, num_steps=20, schedule="linear", hmc=hmc)
    ratio = (result.log_weights[0] - exact).exp()
    mean, se = ratio.mean().item(), ratio.std().item() / math.sqrt(n)
    assert abs(mean - 1) < 3 * se, (mean, se)
    assert (result.step_size != 0.5).all()  # the pilot did adapt


def standard_normal_1d_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))


def test_seeded_ais_weights_are_unbiased_on_a_conjugate_gaussian():
    """E[w / p(x)] = 1 with keyed streams too (a seed), one chain per point, 20,000 points of a 2-D-latent, 3-D PPCA.

    The setting where keying every transition's acceptance draw by the same step (the leapfrog loop overwrote
    the transition's index) gave 1.058 +- 0.004 with seed=1: AIS then overestimated log p(x).
    """
    import math

    model, _ = make_ppca(data_dim=3, latent_dim=2)
    n = 20000
    x = sample_ppca(model, n, seed=3)
    guide = best_ffg_guide(model, x, widen=1.5)  # wider than the posterior: bounded weights, so the SE is honest
    exact = model.log_px(x).double().detach()
    hmc = HMCOptions(leapfrog_steps=4, step_size=0.5, adapt_rate=0.0)  # acceptance about 0.74
    for seed in (1, 2):
        result = ais(model, guide, x, num_chains=1, num_steps=10, schedule="linear", hmc=hmc, init="guide", seed=seed)
        assert 0.3 < result.acceptance.mean() < 0.99  # the chains move and do reject: the acceptance draw matters
        ratio = (result.log_weights[0] - exact).exp()
        mean, se = ratio.mean().item(), ratio.std().item() / math.sqrt(n)
        assert abs(mean - 1) < 3 * se, (seed, mean, se)


def test_each_transition_of_a_keyed_chain_draws_its_own_momentum_and_acceptance():
    """The keys of transition t are t's own: the draws of two transitions are distinct and uncorrelated."""
    from inference.ais import Noise
    from inference.streams import point_stream

    stream = point_stream(5, torch.zeros(200, 1))
    steps = {"normal": [], "uniform": []}

    class Recording(Noise):
        def normal(self, step, like):
            steps["normal"].append(step)
            return super().normal(step, like)

        def uniform(self, step, like):
            steps["uniform"].append(step)
            return super().uniform(step, like)

    noise = Recording(stream, "ais")

    def log_density(z):
        return -0.5 * z.pow(2).sum(-1), torch.zeros(z.shape[:-1])

    z = torch.randn(3, 200, 2)
    state = HMCState(z, *value_and_grad(log_density, z))
    eps = torch.full((3, 200), 0.4, dtype=torch.float64)
    for t in range(1, 6):
        state, _ = hmc_transition(state, log_density, eps, 4, noise, t)
    assert steps == {"normal": [1, 2, 3, 4, 5], "uniform": [1, 2, 3, 4, 5]}
    like = torch.zeros(3, 200, dtype=torch.float64)
    u = torch.stack([noise.uniform(t, like).flatten() for t in range(1, 6)])
    corr = torch.corrcoef(u)
    off = corr[~torch.eye(5, dtype=torch.bool)]
    assert (off.abs() < 3 / math.sqrt(u.shape[1])).all(), corr  # independent draws: |r| within 3 SE of 0
    assert not torch.equal(noise.uniform(1, like), noise.uniform(2, like))
