import pytest
import torch
from pyro import poutine

from ppl_models import MODELS, VAE, build_model, model_config
from ppl_models.networks import mlp


def test_defaults_follow_the_reference_architecture():
    model, guide = build_model(model_config("vae", 784, "bernoulli"))
    enc = [m for m in guide.modules() if isinstance(m, torch.nn.Linear)]
    dec = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in enc] == [(784, 200), (200, 200), (200, 100)]
    assert [(m.in_features, m.out_features) for m in dec] == [(50, 200), (200, 200), (200, 784)]
    assert any(isinstance(m, torch.nn.ELU) for m in model.decoder)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_programs_broadcast_over_sample_dims(likelihood):
    model, guide = build_model(model_config("vae", 8, likelihood, latent_dim=3, hidden=[5], encoder_hidden=[5]))
    x = torch.rand(4, 8).round()
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (4, 3)
    z = torch.randn(7, 4, 3)
    fn = model.likelihood_dist(z)
    assert fn.batch_shape == (7, 4) and fn.event_shape == (8,)


def test_gaussian_decoder_scale_has_a_floor():
    model, _ = build_model(model_config("vae", 4, "gaussian", latent_dim=2, hidden=[3], min_scale=0.05))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(-100.0)
        scale = model.likelihood_dist(torch.randn(10, 2)).base_dist.scale
    assert (scale >= 0.05).all()


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown model 'vea'"):
        model_config("vea", 4, "bernoulli")
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        model_config("vae", 4, "poisson")
    with pytest.raises(ValueError, match="model .ppca. supports likelihood gaussian"):
        model_config("ppca", 4, "bernoulli")
    with pytest.raises(ValueError, match="latent_dim"):
        model_config("vae", 4, "bernoulli", latent_dim=0)
    with pytest.raises(ValueError, match="hidden entries must be a positive integer, got 0"):
        build_model(model_config("vae", 4, "bernoulli", hidden=[0]))
    with pytest.raises(ValueError, match="hidden must be a list of positive integers .layer sizes., got 16"):
        model_config("vae", 4, "bernoulli", hidden=16)
    with pytest.raises(ValueError, match="unknown activation"):
        mlp(2, [3], 1, "gelu")
    with pytest.raises(ValueError, match="no option 'depth'"):
        model_config("vae", 4, "bernoulli", depth=3)
    assert set(MODELS) == {"vae", "ppca", "gmm", "sbn", "hvae", "ladder"}


def test_the_autoregressive_decoder_is_a_normalized_distribution_and_samples_from_it():
    """Exact oracle: summed over all 2^5 binary vectors its probabilities are 1 for every latent code, and sampled
    frequencies match them within 3 standard errors; pixel d depends on pixels before it only."""
    import itertools

    from ppl_models.vae import AutoregressiveBernoulli

    torch.manual_seed(0)
    model = VAE(5, latent_dim=2, hidden=(8,), decoder="autoregressive")
    with torch.no_grad():
        model.context.normal_()
    z = torch.randn(3, 2)
    fn = model.likelihood_dist(z)
    assert isinstance(fn, AutoregressiveBernoulli)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)))
    p = fn.log_prob(every[:, None, :]).exp()  # (32, 3)
    torch.testing.assert_close(p.sum(0), torch.ones(3), rtol=0, atol=1e-5)
    n = 20000
    samples = fn.sample((n,))[:, 0]
    index = (samples * 2 ** torch.arange(4, -1, -1.0)).sum(-1).long()
    freq = torch.bincount(index, minlength=32).double() / n
    se = (p[:, 0].double() * (1 - p[:, 0].double()) / n).sqrt()
    assert ((freq - p[:, 0].double()).abs() < 3 * se + 1e-3).all()
    # changing a later pixel leaves the earlier pixels' conditionals alone: log p(x_0) only from the base logit
    x = every[5:6].clone()
    y = x.clone()
    y[0, 4] = 1 - y[0, 4]
    first = lambda v: torch.nn.functional.logsigmoid(model.decoder(z[:1])[0, 0] + v @ (model.context * model.context_mask)[0])  # noqa: E731
    torch.testing.assert_close(first(x[0]), first(y[0]))


def test_the_autoregressive_decoder_is_refused_for_gaussian_data_and_unknown_decoders():
    with pytest.raises(ValueError, match="decoder 'autoregressive' is a Bernoulli decoder"):
        VAE(5, likelihood="gaussian", decoder="autoregressive")
    with pytest.raises(ValueError, match="unknown decoder 'pixelcnn'"):
        VAE(5, decoder="pixelcnn")
