"""Per-datapoint ELBO and IWAE estimators against PPCA's closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.estimators import elbo, iwae_log_px
from inference.program import inspect_program, log_weights
from ppl_models import build_model, model_config
from tests.oracles import best_ffg_guide, exact_posterior_guide, global_latent_model, make_ppca, sample_ppca


def test_exact_posterior_proposal_gives_exact_log_likelihood_with_zero_variance():
    model, _ = make_ppca()
    x = sample_ppca(model, 6)
    guide = exact_posterior_guide(model)
    exact = model.log_px(x).detach().double()
    for estimator in (iwae_log_px, elbo):
        est = estimator(model, guide, x, 3)
        torch.testing.assert_close(est.value, exact, atol=2e-4, rtol=0)
        assert (est.stderr < 1e-3).all()


def test_elbo_of_the_best_ffg_matches_closed_form_within_3_se():
    model, _ = make_ppca()
    x = sample_ppca(model, 20)
    est = elbo(model, best_ffg_guide(model, x), x, 2000)
    loc, scale = model.best_ffg(x)
    exact = model.elbo(x, loc, scale).detach().double()
    z = (est.value - exact) / est.stderr
    assert z.abs().max() < 4
    assert abs((est.value - exact).mean()) < 3 * est.stderr.pow(2).sum().sqrt() / len(x)


def test_elbo_of_the_amortized_guide_matches_closed_form():
    model, guide = make_ppca()
    x = sample_ppca(model, 20)
    est = elbo(model, guide, x, 2000)
    loc, scale = guide.posterior_params(x)
    exact = model.elbo(x, loc, scale).detach().double()
    assert abs((est.value - exact).mean()) < 3 * est.stderr.pow(2).sum().sqrt() / len(x)


def test_log_likelihood_reaches_the_exact_value_within_3_se():
    model, _ = make_ppca()
    x = sample_ppca(model, 20)
    est = iwae_log_px(model, best_ffg_guide(model, x), x, 5000)
    exact = model.log_px(x).detach().double()
    se_mean = est.stderr.pow(2).sum().sqrt() / len(x)
    assert abs((est.value - exact).mean()) < 3 * se_mean
    assert (est.value - exact).abs().max() < 0.05


def test_iwae_bound_rises_with_k_toward_exact():
    model, guide = make_ppca()  # untrained encoder: a poor proposal, so the bound moves
    x = sample_ppca(model, 30)
    exact = model.log_px(x).detach().double().mean()
    means = []
    for k in (1, 10, 100, 1000):
        est = iwae_log_px(model, guide, x, k)
        se = est.stderr.nan_to_num(0).pow(2).sum().sqrt() / len(x)
        means.append(est.value.mean())
        assert est.value.mean() <= exact + 3 * se + 1e-9
    assert all(b > a for a, b in zip(means, means[1:])), means
    assert exact - means[-1] < exact - means[0]


def test_chunked_streaming_equals_one_logsumexp():
    model, guide = make_ppca()
    x = sample_ppca(model, 5)
    info = inspect_program(model, guide, x)
    pyro.set_rng_seed(7)
    chunked = iwae_log_px(model, guide, x, 10, chunk_size=3)
    pyro.set_rng_seed(7)
    inspect_program(model, guide, x)  # the estimator inspects first: consume the same draws
    lw = torch.cat([log_weights(model, guide, x, n, info) for n in (3, 3, 3, 1)]).detach()
    torch.testing.assert_close(chunked.value, torch.logsumexp(lw, 0) - math.log(10))
    w = (lw - lw.max(0).values).exp()
    mean, sd = w.mean(0), w.std(0)
    torch.testing.assert_close(chunked.stderr, sd / math.sqrt(10) / mean)
    pyro.set_rng_seed(7)
    chunked_elbo = elbo(model, guide, x, 10, chunk_size=4)
    pyro.set_rng_seed(7)
    inspect_program(model, guide, x)
    lw = torch.cat([log_weights(model, guide, x, n, info) for n in (4, 4, 2)]).detach()
    torch.testing.assert_close(chunked_elbo.value, lw.mean(0))
    torch.testing.assert_close(chunked_elbo.stderr, lw.std(0) / math.sqrt(10))


def test_with_a_wide_global_posterior_each_sample_draws_its_own_theta():
    """theta ~ q(theta) = N(m, s^2) global, z_i ~ N(theta, 1), x_i ~ N(z_i, 1), the guide's z_i | theta the exact conditional.

    Every weight is then p(x_i | theta) = N(x_i; theta, 2), with no p(theta)/q(theta) factor. Each of the K samples
    draws its own theta, so the per-datapoint estimators target the predictive quantities of q(theta), in closed form:
    iwae_log_px -> log E_q[N(x_i; theta, 2)] = log N(x_i; m, 2 + s^2), and
    elbo -> E_q[log N(x_i; theta, 2)] = log N(x_i; m, 2) - s^2 / 4.
    (One theta shared by the K samples would give log N(x_i; theta, 2) for a single random theta instead.)
    """
    m, s = 0.7, 0.8
    model = global_latent_model

    def guide(x):
        theta = pyro.sample("theta", dist.Normal(m, s))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((theta + x) / 2, math.sqrt(0.5)))

    x = torch.tensor([-2.0, -0.5, 0.3, 1.1, 2.5, 4.0])
    predictive = dist.Normal(m, math.sqrt(2.0 + s**2)).log_prob(x).double()
    expected_log_lik = (dist.Normal(m, math.sqrt(2.0)).log_prob(x) - s**2 / 4).double()
    iw = iwae_log_px(model, guide, x, 20000)
    assert ((iw.value - predictive).abs() < 3 * iw.stderr + 1e-3).all(), (iw.value, predictive, iw.stderr)
    assert (iw.value <= predictive + 3 * iw.stderr).all()
    est = elbo(model, guide, x, 20000)
    assert ((est.value - expected_log_lik).abs() < 3 * est.stderr).all(), (est.value, expected_log_lik, est.stderr)
    # the two differ by far more than their noise: the check tells the two readings of "per datapoint" apart
    assert ((predictive - expected_log_lik).abs() > 20 * iw.stderr).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sample_counts_are_refused(bad):
    model, guide = make_ppca()
    x = sample_ppca(model, 2)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        iwae_log_px(model, guide, x, bad)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        elbo(model, guide, x, bad)


@pytest.mark.slow
def test_model_side_enumerated_latents_are_summed_out_exactly_by_every_estimator():
    """The cluster c is marked for enumeration in the model and absent from the guide: log p(x, z) sums it out exactly."""
    from inference.ais import HMCOptions, ais
    from inference.program import score_configurations
    from tests.oracles import ClusterStyleModel, StyleGuide

    model, guide = ClusterStyleModel(enumerate_c=True), StyleGuide()
    x = model.sample(4, seed=3)
    info = inspect_program(model, guide, x)
    assert info.enumerated == ("c",) and info.local_latents == ("z",)
    # log p(x, z) at fixed z against the hand-written sum over the three clusters
    z = torch.randn(5, 4, 2)
    got = score_configurations(model, x, {"z": z}, info, info.local_latents + info.observed)
    parts = [torch.log_softmax(model.logits, 0)[k] + dist.Normal(model.mu[k] + z @ model.weight.T, model.sigma).log_prob(x).sum(-1)
             for k in range(3)]
    hand = torch.logsumexp(torch.stack(parts), 0) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(got, hand.double(), atol=1e-5, rtol=0)
    exact = model.log_px(x).double()
    iw = iwae_log_px(model, guide, x, 5000)
    assert (iw.value < exact + 3 * iw.stderr).all()
    assert (elbo(model, guide, x, 1000).value < iw.value).all()
    pyro.set_rng_seed(0)
    annealed = ais(model, guide, x, num_chains=32, num_steps=300, hmc=HMCOptions(leapfrog_steps=3, step_size=0.1))
    error = annealed.log_px.value - exact
    assert (error.abs() < 3 * annealed.log_px.stderr + 0.02).all() and error.abs().mean() < 0.1, (error, annealed.log_px.stderr)


def test_float64_programs_stay_float64_in_every_estimator():
    """The PPCA and SBN oracles in double precision: estimators, exact enumeration, local q*, AIS and the gaps run and agree."""
    from inference.ais import HMCOptions, ais
    from inference.enumeration import exact_log_px
    from inference.gaps import gap_decomposition
    from inference.local import AdamOptions, LocalOptions, StoppingRule
    from ppl_models import build_model, model_config

    model, guide = make_ppca()
    x = sample_ppca(model, 4).double()
    model, guide = model.double(), guide.double()
    exact = model.log_px(x).detach()
    assert exact.dtype == torch.float64
    est = iwae_log_px(model, guide, x, 2000)
    assert est.value.dtype == torch.float64 and ((est.value - exact).abs() < 3 * est.stderr).all()
    result = gap_decomposition(model, guide, x, log_px_samples=500, elbo_samples=200, local=LocalOptions(
        num_samples=10, adam=AdamOptions(lr=2e-2), rule=StoppingRule(window=10, patience=2, max_steps=200)))
    assert result.local.guide.tensors[0].dtype == torch.float64
    assert ((result.log_px.value - exact).abs() < 3 * result.log_px.stderr + 0.01).all()
    assert ais(model, guide, x, num_chains=8, num_steps=20, hmc=HMCOptions(leapfrog_steps=3)).log_px.value.isfinite().all()
    sbn, sbn_guide = build_model(model_config("sbn", 6, "bernoulli", layers=[3, 2]))
    sbn, sbn_guide = sbn.double(), sbn_guide.double()
    xb = (torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    exact_sbn = exact_log_px(sbn, sbn_guide, xb)
    assert exact_sbn.dtype == torch.float64
    assert (iwae_log_px(sbn, sbn_guide, xb, 4000).value <= exact_sbn + 1e-6 + 0.5).all()


def test_a_request_projected_beyond_the_time_limit_is_refused_after_its_first_chunk(monkeypatch):
    import inference.memory as memory

    model, guide = build_model(model_config("vae", 6, "bernoulli", latent_dim=2, hidden=[4], encoder_hidden=[4]))
    x = torch.ones(2, 6)
    monkeypatch.setattr(memory, "MAX_PROJECTED_SECONDS", 1e-9)
    with pytest.raises(ValueError, match=r"iwae_log_px with num_samples=1000000000 for 2 datapoint\(s\) would take about .* h: its first chunk of 10 "):
        iwae_log_px(model, guide, x, 10**9, chunk_size=10, pareto=True)
    with pytest.raises(ValueError, match="max_elements must be an integer >= 1, got 0"):
        elbo(model, guide, x, 10, max_elements=0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got nan"):
        elbo(model, guide, x, float("nan"))
