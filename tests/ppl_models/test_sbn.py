"""Sigmoid belief nets: estimators against exact enumeration, TraceGraph training with NVIL baselines, local q*, bad input."""

import pytest
import torch

from inference.enumeration import exact_elbo, exact_log_px
from inference.estimators import elbo, iwae_log_px
from inference.local import AdamOptions, StoppingRule, optimize_local
from inference.objectives import make_loss
from inference.program import inspect_program
from inference.training import TrainOptions, fit
from ppl_models import BASELINES, build_model, model_config


def small_sbn(layers=(5, 4), baseline="nvil", d=12):
    return build_model(model_config("sbn", d, "bernoulli", layers=list(layers), baseline=baseline, baseline_hidden=[8]))


def binary(n, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pattern = (torch.arange(d) % 3 == 0).float()
    flip = torch.rand(n, d, generator=gen) < 0.2
    return torch.where(flip, 1 - pattern, pattern)


def test_sites_follow_the_convention():
    model, guide = small_sbn((5, 4, 3))
    info = inspect_program(model, guide, binary(4))
    assert set(info.local_latents) == {"h1", "h2", "h3"} and not info.global_latents


def test_estimators_agree_with_exact_enumeration():
    model, guide = small_sbn()
    x = binary(6)
    exact = exact_log_px(model, guide, x)  # 2^9 configurations
    iwae = iwae_log_px(model, guide, x, 20_000)
    assert ((iwae.value - exact).abs() < 3 * iwae.stderr + 1e-3).all()
    assert (iwae.value < exact + 3 * iwae.stderr).all()  # a lower bound
    exact_q = exact_elbo(model, guide, x)
    est = elbo(model, guide, x, 5000)
    assert ((est.value - exact_q).abs() < 3 * est.stderr).all()
    assert (exact_q < exact).all()


def test_enumeration_by_hand_for_one_unit():
    """One latent unit: log p(x) = logsumexp_h [log p(h) + log p(x|h)], computed directly."""
    model, guide = small_sbn((1,), d=3)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    terms = []
    for h in (0.0, 1.0):
        hv = torch.full((2, 1), h)
        prior = torch.distributions.Bernoulli(logits=model.top_logits).log_prob(hv).sum(-1)
        lik = torch.distributions.Bernoulli(logits=model.decoders[0](hv)).log_prob(x).sum(-1)
        terms.append(prior + lik)
    by_hand = torch.stack(terms).logsumexp(0).double()
    torch.testing.assert_close(exact_log_px(model, guide, x), by_hand, rtol=0, atol=1e-5)


@pytest.mark.parametrize("baseline", BASELINES)
def test_tracegraph_training_improves_the_exact_likelihood(baseline):
    model, guide = small_sbn(baseline=baseline)
    x = binary(90)  # 90 = 64 + 26: the last batch is smaller, as decaying baselines must handle
    before = exact_log_px(model, guide, x).mean()
    fit(model, guide, x, TrainOptions(objective="tracegraph", epochs=25, batch_size=64, lr=1e-2))
    after = exact_log_px(model, guide, x).mean()
    assert after > before + 0.5


def test_neural_baselines_are_trained_by_tracegraph():
    model, guide = small_sbn(baseline="neural")
    loss = make_loss("tracegraph", model, guide)
    x = binary(10)
    value = loss(x)
    value.backward()
    assert all(p.grad is not None for p in guide.baselines.parameters())
    # the reported value is the negative ELBO of that sample, not the surrogate
    assert torch.isfinite(value) and value.item() > 0


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["exact", "score"])
def test_local_discrete_posterior_improves_on_the_amortized_one(gradient):
    model, guide = small_sbn()
    x = binary(5)
    fit_ = optimize_local(
        model, guide, x, family="bernoulli", gradient=gradient, num_samples=20, adam=AdamOptions(lr=0.05),
        rule=StoppingRule(window=20, patience=3, max_steps=1500),
    )
    before, after = exact_elbo(model, guide, x), exact_elbo(model, fit_.guide, x)
    assert (after > before).all()
    assert (after <= exact_log_px(model, guide, x) + 1e-6).all()
    if gradient == "exact":  # a converged mean-field optimum: the score-function fit gets close to it
        score = optimize_local(model, guide, x, family="bernoulli", gradient="score", num_samples=50, adam=AdamOptions(lr=0.05),
                               rule=StoppingRule(window=20, patience=3, max_steps=1500))
        assert (exact_elbo(model, score.guide, x) > after - 0.3).all()


def test_bad_sbns_are_refused():
    with pytest.raises(ValueError, match="layers entries must be a positive integer, got 0"):
        model_config("sbn", 4, "bernoulli", layers=[5, 0])
    from ppl_models import SigmoidBeliefNet

    with pytest.raises(ValueError, match="a sigmoid belief net: layer sizes must be positive integers, got \\[3, -1\\]"):
        SigmoidBeliefNet(4, [3, -1])
    with pytest.raises(ValueError, match="model 'sbn' supports likelihood bernoulli"):
        model_config("sbn", 4, "gaussian")
    with pytest.raises(ValueError, match="guide 'ffg' does not fit model 'sbn'"):
        model_config("sbn", 4, "bernoulli", guide="ffg")
    with pytest.raises(ValueError, match="unknown baseline 'mean'"):
        build_model(model_config("sbn", 4, "bernoulli", baseline="mean"))
    model, guide = small_sbn()
    with pytest.raises(ValueError, match="needs binary data"):
        inspect_program(model, guide, torch.rand(3, 12))  # continuous data into an SBN
    big, big_guide = small_sbn((10, 5))
    with pytest.raises(ValueError, match="32768 joint configurations"):
        exact_log_px(big, big_guide, binary(2))
    with pytest.raises(ValueError, match="one particle per datapoint"):
        make_loss("tracegraph", model, guide, num_particles=4)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        optimize_local(model, guide, binary(2), family="bernoulli", gradient="score", num_samples=1)


def test_warm_up_of_a_discrete_guide_is_refused_by_name():
    """Pyro scales a site's score-function term with its density: a warm-up weight would scale the likelihood's too."""
    from inference.objectives import make_loss

    model, guide = build_model(model_config("sbn", 6, "bernoulli", layers=[3]))
    loss = make_loss("tracegraph", model, guide)
    loss.set_latent_scale(0.5)
    with pytest.raises(ValueError, match="warm-up would scale the score-function terms.*'h1'.*kl_warmup_epochs=0"):
        loss((torch.rand(5, 6) < 0.5).float())
