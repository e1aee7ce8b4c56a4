"""Keyed per-datapoint random numbers: the generator's law, and every estimator's invariance to how points are batched."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from inference import ais, elbo, gap_decomposition, iwae_log_px
from inference.ais import HMCOptions
from inference.enumeration import exact_log_px
from inference.local import LocalOptions, StoppingRule, local_posterior
from inference.streams import (
    KeyedSamplingError,
    element_keys,
    keyed,
    mix32,
    mix32_int,
    normal,
    point_stream,
    prefix_key,
    uniform,
)
from ppl_models import build_model, model_config
from tests.oracles import discrete_latent_pair, make_ppca, sample_ppca

# The random numbers are identical; what differs is rounding: the model's float32 matrix products over another batch
# shape (BLAS picks its kernels by shape) and float64 sums over other chunks. Relative to the values, nothing more.
ROUNDING = 1e-6


def test_the_mixing_is_lowbias32_and_a_bijection():
    x = torch.randint(0, 2**32, (1000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    assert mix32(x).tolist() == [mix32_int(v) for v in x.tolist()]
    assert mix32_int(0) == 0  # the tensor version against exact Python integers: the limbs lose nothing
    block = torch.arange(2**20, dtype=torch.int64)
    assert len(torch.unique(mix32(block))) == 2**20


def test_keyed_uniforms_and_normals_have_their_law_and_no_correlation_between_neighbours():
    shape = (400, 50, 10)  # samples x datapoints x dims
    keys = element_keys(prefix_key(3, "test"), shape, "cpu", data_axis=1, index=torch.arange(50), sample_axis=0)
    u, z = uniform(keys), normal(keys)
    n = u.numel()
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 3 * math.sqrt(1 / 12 / n)
    assert abs(float(z.mean())) < 3 / math.sqrt(n) and abs(float(z.var()) - 1) < 3 * math.sqrt(2 / n)
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 0.001
    for a, b in [(z[:, :, 0], z[:, :, 1]), (z[:, 0], z[:, 1]), (z[0], z[1])]:  # neighbouring dims, datapoints, samples
        r = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
        assert abs(r) < 3.5 / math.sqrt(a.numel()), r


def test_a_datapoints_keys_depend_on_its_index_and_sample_alone():
    index = torch.tensor([7, 3, 11])
    whole = element_keys(5, (6, 3, 2), "cpu", data_axis=1, index=index, sample_axis=0)
    part = element_keys(5, (2, 1, 2), "cpu", data_axis=1, index=index[1:2], sample_axis=0, offset=4)
    assert torch.equal(whole[4:6, 1:2], part)
    assert not torch.equal(whole, element_keys(6, (6, 3, 2), "cpu", data_axis=1, index=index, sample_axis=0))


def test_bad_seeds_and_indices_are_refused_by_value():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="seed"):
        point_stream(-1, x)
    with pytest.raises(ValueError, match="distinct"):
        point_stream(0, x, [1, 1, 2])
    with pytest.raises(ValueError, match="one integer per datapoint"):
        point_stream(0, x, [0, 1])
    with pytest.raises(ValueError, match="pass a seed"):
        point_stream(None, x, [0, 1, 2])


def _vae():
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 8, "bernoulli", latent_dim=3, hidden=[16], encoder_hidden=[16]))
    x = (torch.rand(10, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    return model, guide, x


def _same_per_point(run, x, tolerance=ROUNDING):
    """``run(x_rows, index)`` gives every point the same value in one call, in two halves, and in reverse order."""
    n = len(x)
    whole = run(x, torch.arange(n))
    halves = torch.cat([run(x[: n // 2], torch.arange(n // 2)), run(x[n // 2 :], torch.arange(n // 2, n))])
    reverse = run(x.flip(0), torch.arange(n).flip(0)).flip(0)
    assert (whole - halves).abs().max() <= tolerance * (1 + whole.abs().max())
    assert (whole - reverse).abs().max() <= tolerance * (1 + whole.abs().max())
    return whole


@pytest.mark.parametrize("estimator", [elbo, iwae_log_px])
def test_sample_estimators_give_each_point_the_same_value_however_it_is_batched_or_chunked(estimator):
    model, guide, x = _vae()
    whole = _same_per_point(lambda rows, index: estimator(model, guide, rows, 64, seed=4, index=index).value, x)
    chunked = estimator(model, guide, x, 64, seed=4, chunk_size=5).value  # 64 samples in 13 chunks
    assert (whole - chunked).abs().max() <= ROUNDING * (1 + whole.abs().max())
    assert not torch.allclose(whole, estimator(model, guide, x, 64, seed=5).value)


def test_keyed_draws_keep_the_estimators_unbiased_against_the_closed_form():
    model, guide = make_ppca()
    x = sample_ppca(model, 20)
    est = elbo(model, guide, x, 2000, seed=0)
    loc, scale = guide.posterior_params(x)
    exact = model.elbo(x, loc, scale).detach().double()
    assert abs((est.value - exact).mean()) < 3 * est.stderr.pow(2).sum().sqrt() / len(x)
    assert ((est.value - exact).abs() < 4 * est.stderr).all()


def test_keyed_bernoulli_sites_are_unbiased_against_enumeration():
    model, guide = discrete_latent_pair()  # q(c = 1) = 0.3: E_q[log p(x, c) - log q(c)] is a two-term sum
    x = torch.tensor([-1.0, 0.2, 1.5])
    est = elbo(model, guide, x, 4000, seed=1)
    log_q = torch.tensor([math.log(0.7), math.log(0.3)], dtype=torch.float64)
    log_joint = torch.stack([dist.Normal(float(c), 1.0).log_prob(x).double() + math.log(0.5) for c in (0, 1)])
    exact = (log_q.exp()[:, None] * (log_joint - log_q[:, None])).sum(0)
    assert ((est.value - exact).abs() < 4 * est.stderr).all()
    assert torch.isfinite(exact_log_px(model, guide, x)).all()


def test_a_flow_guide_keeps_its_gradients_under_keyed_draws():
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 8, "bernoulli", latent_dim=3, hidden=[16], encoder_hidden=[16], guide="iaf",
                                            flow_layers=2, flow_hidden=[8]))
    x = (torch.rand(4, 8) > 0.5).float()
    from inference.program import inspect_program, log_weights

    info = inspect_program(model, guide, x)
    with keyed(point_stream(0, x), "test"):
        lw = log_weights(model, guide, x, 5, info)
    grads = torch.autograd.grad(lw.mean(), [p for p in guide.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with keyed(point_stream(0, x), "test"):
        again = log_weights(model, guide, x, 5, info)
    assert torch.equal(lw, again)


def test_a_site_drawn_by_an_operator_keys_cannot_answer_is_refused_by_name():
    def model(x):
        with pyro.plate("data", len(x)):
            r = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(r), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("rate", dist.Gamma(3.0, 1.0))

    with pytest.raises(KeyedSamplingError, match="'rate'.*_standard_gamma"):
        elbo(model, guide, torch.tensor([1.0, 2.0]), 8, seed=0)


def test_local_q_star_of_each_point_does_not_depend_on_its_batch():
    model, guide, x = _vae()
    options = LocalOptions(num_samples=4, rule=StoppingRule(3, 1, 12))
    _same_per_point(lambda rows, index: local_posterior(model, guide, rows, options, eval_samples=16, seed=2,
                                                        index=index).elbo.value, x, tolerance=1e-5)


def test_ais_of_each_point_does_not_depend_on_its_block_or_batch():
    model, guide, x = _vae()
    hmc = HMCOptions(leapfrog_steps=2, pilot_chains=2)
    run = lambda rows, index, **kw: ais(model, guide, rows, num_chains=3, num_steps=6, hmc=hmc, seed=3, index=index, **kw).log_px.value  # noqa: E731
    whole = _same_per_point(run, x, tolerance=1e-6)
    from inference.memory import chunk_size_for  # noqa: F401  (max_elements small enough for blocks of a few points)

    blocks = run(x, torch.arange(len(x)), max_elements=3 * 5 * 3 * 8)
    assert (whole - blocks).abs().max() <= 1e-6 * (1 + whole.abs().max())


def test_the_gap_decomposition_of_each_point_does_not_depend_on_its_batch():
    model, guide, x = _vae()
    options = LocalOptions(num_samples=4, rule=StoppingRule(3, 1, 9))

    def run(rows, index):
        result = gap_decomposition(model, guide, rows, log_px_samples=32, elbo_samples=16, local=options, seed=9, index=index)
        return torch.stack(list(result.per_datapoint().values()))

    _same_per_point(lambda rows, index: run(rows, index).T, x, tolerance=1e-5)


def test_keyed_categorical_sites_are_drawn_with_their_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(c.double(), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Categorical(probs))

    x = torch.tensor([0.0, 2.0], dtype=torch.float64)
    from inference.program import SAMPLE_PLATE, inspect_program

    info = inspect_program(model, guide, x)
    with keyed(point_stream(0, x), "test"), pyro.plate(SAMPLE_PLATE, 6000, dim=info.sample_dim):
        c = pyro.poutine.trace(guide).get_trace(x).nodes["c"]["value"]
    freq = torch.stack([(c == k).double().mean(0) for k in range(3)])  # (3, N)
    se = (probs * (1 - probs) / 6000).sqrt().double()
    assert ((freq - probs.double()[:, None]).abs() < 3.5 * se[:, None]).all(), freq
    est = elbo(model, guide, x, 4000, seed=2)
    log_q = probs.double().log()
    log_joint = torch.stack([dist.Normal(float(k), 1.0).log_prob(x) + math.log(1 / 3) for k in range(3)])
    exact = (probs.double()[:, None] * (log_joint - log_q[:, None])).sum(0)
    assert ((est.value - exact).abs() < 4 * est.stderr).all()
