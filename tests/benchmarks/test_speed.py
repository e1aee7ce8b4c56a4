"""`benchmarks.speed`: the hand-written floors compute what ours do, and the loop sees the Trainer's batches."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from benchmarks.speed import (
    encoder_network,
    hand_written_log_weights,
    pure_local_step_seconds,
    trainer_step_ratio,
)
from inference.estimators import elbo
from inference.stats import mean_se
from inference.training import TrainOptions, epoch_permutation, fit
from ppl_models import build_model, model_config

pytestmark = pytest.mark.slow  # times training on MNIST-sized data


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
    hand, hand_se = torch.tensor([mean_se(column) for column in draws.T]).T
    se = (ours.stderr**2 + hand_se**2).sqrt()
    assert ((ours.value - hand).abs() < 3 * se).all(), (ours.value, hand, se)
    # and a wrong scale would be caught: the same check fails with q twice as wide
    with torch.no_grad():
        wide = hand_written_log_weights(model.decoder, loc, log_scale + 0.7, x, num_samples=4000).mean(0)
    assert ((ours.value - wide).abs() > 3 * se).any()


def test_one_draw_without_a_sample_dimension_is_the_first_of_num_samples_one():
    model, _ = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    loc, log_scale = torch.randn(5, 3), torch.randn(5, 3)
    with torch.no_grad():
        torch.manual_seed(1)
        one = hand_written_log_weights(model.decoder, loc, log_scale, x)
        torch.manual_seed(1)
        batched = hand_written_log_weights(model.decoder, loc, log_scale, x, num_samples=1)
    assert one.shape == (5,) and batched.shape == (1, 5)
    torch.testing.assert_close(one, batched[0])


def test_epoch_permutation_gives_the_batches_fit_trains_on():
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    data = torch.bernoulli(torch.full((10, 12), 0.5)) + torch.arange(10.0)[:, None]  # rows told apart by their offset
    seen = []
    fit(model, guide, data, TrainOptions(epochs=2, batch_size=4, seed=3), transform=lambda x: seen.append(x.clone()) or x.clamp(max=1))
    expected = [data[epoch_permutation(len(data), 3, epoch)[b * 4 : (b + 1) * 4]] for epoch in range(2) for b in range(3)]
    assert len(seen) >= len(expected)  # fit may also check the transform on a sample before training
    for got, want in zip(seen[-len(expected):], expected):
        torch.testing.assert_close(got, want)


def test_trainer_step_ratio_times_the_steady_state_steps():
    result = trainer_step_ratio(torch.bernoulli(torch.full((20, 12), 0.5)), epochs=2, batch_size=5, seed=1, repeats=1)
    assert result["trainer_ms"] > 0 and result["pure_loop_ms"] > 0 and result["ratio"] > 0


def test_pure_local_step_leaves_the_decoder_trainable():
    model, _ = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    seconds = pure_local_step_seconds(model.decoder, 3, torch.bernoulli(torch.full((4, 12), 0.5)), num_samples=5, steps=2)
    assert seconds > 0
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_encoder_network_gives_the_guides_variational_parameters():
    _, guide = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    loc, log_scale = encoder_network(guide)(x).chunk(2, dim=-1)
    params = guide.variational_params(x)
    torch.testing.assert_close(loc, params["loc"])
    torch.testing.assert_close(log_scale, params["log_scale"])


def test_the_hand_written_iwae_evaluator_agrees_with_ours_within_3_se():
    """The floor of the evaluation timing computes the same bound: checked against iwae_log_px on the same pair, and a wrong
    one (q twice as wide) would be caught."""
    from benchmarks.speed import hand_written_iwae
    from inference.estimators import iwae_log_px

    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16]))
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    ours = iwae_log_px(model, guide, x, 400)
    hands = torch.stack([hand_written_iwae(encoder_network(guide), model.decoder, x, 400, chunk=64) for _ in range(20)])
    se = (ours.stderr**2 + hands.var(0) / 20).sqrt()  # independent replicates of the hand-written one
    assert ((ours.value - hands.mean(0)).abs() < 3 * se + 1e-3).all(), (ours.value, hands.mean(0), se)


def test_the_quick_speed_check_runs_every_timing_on_the_cpu(tmp_path, mnist_root):
    """``python -m benchmarks.speed --quick --device cpu`` at its tiny CPU size, on the committed MNIST subset: every timing
    (training step, Trainer vs loop, local q*, AIS, evaluation) is measured and written, with the device named."""
    import json

    from benchmarks.speed import cli

    out = tmp_path / "speed"
    assert cli(["--quick", "--device", "cpu", "--data-root", mnist_root, "--out", str(out)]) == 0
    result = json.loads((out / "speed.json").read_text())
    assert result["device"] == "cpu" and result["config"]["quick"]
    assert {"training_step", "trainer", "local", "ais", "evaluation"} <= set(result)
    assert result["evaluation"]["ours_s"] > 0 and result["evaluation"]["hand_written_s"] > 0
    assert "Evaluation: the IWAE bound with K = 50" in (out / "speed.md").read_text()
