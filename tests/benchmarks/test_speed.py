"""`benchmarks.speed`: the hand-written floor times the same quantity our local q* optimizes."""

import pyro
import pyro.distributions as dist
import torch

from benchmarks.speed import hand_written_log_weights, pure_local_step_seconds
from inference.estimators import elbo
from ppl_models import build_model, model_config


def test_hand_written_local_elbo_matches_the_per_datapoint_estimator_within_3_se():
    torch.manual_seed(0)
    model, _ = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    loc = torch.randn(5, 3)
    log_scale = 0.3 * torch.randn(5, 3) - 0.5

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    ours = elbo(model, guide, x, num_samples=4000)
    with torch.no_grad():
        draws = hand_written_log_weights(model.decoder, loc, log_scale, x, num_samples=4000)
    hand, hand_se = draws.mean(0), draws.std(0) / 4000**0.5
    se = (ours.stderr**2 + hand_se**2).sqrt()
    assert ((ours.value - hand).abs() < 3 * se).all(), (ours.value, hand, se)
    # and a wrong scale would be caught: the same check fails with q twice as wide
    with torch.no_grad():
        wide = hand_written_log_weights(model.decoder, loc, log_scale + 0.7, x, num_samples=4000).mean(0)
    assert ((ours.value - wide).abs() > 3 * se).any()

def test_pure_local_step_leaves_the_decoder_trainable():
    model, _ = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    seconds = pure_local_step_seconds(model.decoder, 3, torch.bernoulli(torch.full((4, 12), 0.5)), num_samples=5, steps=2)
    assert seconds > 0
    assert all(p.requires_grad for p in model.decoder.parameters())
