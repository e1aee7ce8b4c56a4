"""A model/guide pair written the way a user writes one, without the zoo: the README's example, importable as
``--model tests.user_programs:make_pair`` (the factory returns a fresh pair on each call)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Decoder(nn.Module):  # p(z) p(x|z): a 2-d standard normal latent, Bernoulli pixels from a one-layer network
    def __init__(self, data_dim=64, latent_dim=2, hidden=32):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


class Encoder(nn.Module):  # q(z|x): a diagonal Gaussian whose mean and log scale a one-layer network computes
    def __init__(self, data_dim=64, latent_dim=2, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def make_pair():
    """A fresh (model, guide) pair for 8x8 binarized digits."""
    return Decoder(), Encoder()


def make_digits_tensors(num_train=300, num_test=50):
    """Binarized digits as plain tensors (a fixed draw), for the library example."""
    from sklearn.datasets import load_digits

    pixels = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    x = torch.bernoulli(pixels, generator=torch.Generator().manual_seed(0))
    return x[:num_train], x[num_train : num_train + num_test]
