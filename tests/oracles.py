"""Exact oracles shared by the tests."""

import pyro
import pyro.distributions as dist
import torch


def make_ppca(data_dim: int = 6, latent_dim: int = 2, seed: int = 0, noise: float = 0.5, collinear: float = 0.0):
    """A PPCA model with fixed random parameters and a linear FFG encoder.

    ``collinear`` in [0, 1) mixes every column of W towards the first, which
    correlates the posterior (and widens the FFG approximation gap).
    """
    from ppl_models import build_model, model_config

    torch.manual_seed(seed)
    model, guide = build_model(model_config("ppca", data_dim, "gaussian", latent_dim=latent_dim))
    with torch.no_grad():
        weight = torch.randn(data_dim, latent_dim)
        model.weight.copy_(weight * (1 - collinear) + weight[:, :1] * collinear)
        model.bias.copy_(torch.randn(data_dim) * 0.3)
        model.log_noise.fill_(torch.log(torch.tensor(noise)))
    return model, guide


def sample_ppca(model, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, model.latent_dim, generator=gen)
        noise = torch.randn(n, model.data_dim, generator=gen)
        return z @ model.weight.T + model.bias + model.noise * noise


def exact_posterior_guide(model):
    """PPCA's exact posterior as a guide (full-covariance Gaussian per datapoint)."""
    import pyro
    import pyro.distributions as dist

    def guide(x):
        post = model.posterior(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.MultivariateNormal(post.loc, covariance_matrix=post.covariance))

    return guide


def best_ffg_guide(model, x, widen: float = 1.0):
    """PPCA's optimal fully factorized Gaussian for the rows of ``x``, as a local guide (every scale times ``widen``)."""
    from pyro.distributions import constraints

    from inference.families import LocalGuide, SiteInfo

    with torch.no_grad():
        loc, scale = model.best_ffg(x)
    site = SiteInfo((loc.shape[-1],), constraints.real_vector, "continuous")
    return LocalGuide("ffg", {"z": {"loc": loc, "log_scale": (scale * widen).log()}}, {"z": site}, -1)


def global_latent_model(x):
    """theta ~ N(0, 1) global; z_i ~ N(theta, 1) and x_i ~ N(z_i, 1) per datapoint, so p(x_i | theta) = N(theta, 2)."""
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(theta, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def discrete_latent_pair():
    """A model and guide with a per-datapoint Bernoulli latent (not reparameterized)."""

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(0.3))

    return model, guide


class MixturePriorModel(torch.nn.Module):
    """z ~ sum_k pi_k N(mu_k, s_k^2 I) (2-D), x | z ~ N(W z + b, sigma^2 I) (3-D): a multimodal posterior, exact log p(x).

    ``separated=True``: three narrow, well-separated modes; ``False``: three wide, overlapping ones.
    """

    def __init__(self, separated: bool = True):
        super().__init__()
        self.logits = torch.tensor([0.0, 0.5, -0.3])
        if separated:
            self.mu, self.s = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]), torch.tensor([0.5, 0.7, 0.4])
        else:
            self.mu, self.s = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]), torch.tensor([0.8, 1.0, 0.9])
        self.weight = torch.tensor([[1.0, 0.3], [-0.5, 1.2], [0.8, -0.7]])
        self.bias = torch.tensor([0.1, -0.2, 0.3])
        self.sigma = 0.6

    def prior(self):
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), dist.Normal(self.mu, self.s.unsqueeze(-1)).to_event(1))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, self.sigma).to_event(1), obs=x)

    def log_px(self, x):
        """log sum_k pi_k N(x; W mu_k + b, s_k^2 W W^T + sigma^2 I)."""
        parts = []
        for k in range(len(self.logits)):
            cov = self.s[k] ** 2 * self.weight @ self.weight.T + self.sigma**2 * torch.eye(3)
            parts.append(torch.log_softmax(self.logits, 0)[k] + dist.MultivariateNormal(self.weight @ self.mu[k] + self.bias, cov).log_prob(x))
        return torch.logsumexp(torch.stack(parts), 0)

    def sample(self, n, seed=0):
        gen = torch.Generator().manual_seed(seed)
        k = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True, generator=gen)
        z = self.mu[k] + self.s[k].unsqueeze(-1) * torch.randn(n, 2, generator=gen)
        return z @ self.weight.T + self.bias + self.sigma * torch.randn(n, 3, generator=gen)


def standard_normal_guide(x):
    """q(z|x) = N(0, I) in 2-D: a guide that ignores the data."""
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


class ClusterStyleModel(torch.nn.Module):
    """A cluster c (3 values) and a style z (2-D) per datapoint: c ~ Cat(pi), z ~ N(0, I), x | c, z ~ N(mu_c + W z, s^2 I) (4-D).

    log p(x) = logsumexp_c [log pi_c + log N(x; mu_c, W W^T + s^2 I)] in closed form. With ``enumerate_c`` the model marks
    c for parallel enumeration, so a guide may leave it out and every estimator sums it out.
    """

    def __init__(self, enumerate_c: bool = False):
        super().__init__()
        self.enumerate_c = enumerate_c
        self.logits = torch.tensor([0.2, -0.3, 0.1])
        self.mu = torch.tensor([[2.0, 0.0, -1.0, 1.0], [-2.0, 1.0, 0.5, 0.0], [0.0, -2.0, 1.5, -1.5]])
        self.weight = torch.tensor([[1.0, 0.2], [0.3, -0.8], [-0.5, 0.6], [0.7, 0.4]])
        self.sigma = 0.5

    def forward(self, x):
        infer = {"enumerate": "parallel"} if self.enumerate_c else {}
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=self.logits), infer=infer)
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = self.mu[c] + z @ self.weight.T
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def log_px(self, x):
        cov = self.weight @ self.weight.T + self.sigma**2 * torch.eye(4)
        parts = [torch.log_softmax(self.logits, 0)[k] + dist.MultivariateNormal(self.mu[k], cov).log_prob(x) for k in range(3)]
        return torch.logsumexp(torch.stack(parts), 0)

    def sample(self, n, seed=0):
        gen = torch.Generator().manual_seed(seed)
        c = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True, generator=gen)
        z = torch.randn(n, 2, generator=gen)
        return self.mu[c] + z @ self.weight.T + self.sigma * torch.randn(n, 4, generator=gen)


class StyleGuide(torch.nn.Module):
    """q(z | x) = N(A x + b, diag(s^2)): a linear amortized guide for the style alone (the cluster summed out in the model)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 4)

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            self.sample_sites(x, loc, log_scale)

    def sample_sites(self, x, loc, log_scale):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class ClusterStyleGuide(StyleGuide):
    """q(c | x) q(z | x): a categorical and a Gaussian site per datapoint."""

    def __init__(self):
        super().__init__()
        self.cluster = torch.nn.Linear(4, 3)

    def sample_sites(self, x, loc, log_scale):
        pyro.sample("c", dist.Categorical(logits=self.cluster(x)))
        super().sample_sites(x, loc, log_scale)
