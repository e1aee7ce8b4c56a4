"""Every training estimator on a small sigmoid belief net, against exact enumeration.

The SBN has layers h1 (2 units) and h2 (1 unit) over 3 binary pixels: 8 joint
configurations per datapoint, so every expectation over K = 2 guide draws is a sum
over 64 pairs, and every expectation over dreams a sum over 8 x 8 (x, h) pairs.
"""

import itertools
import math

import pytest
import torch

from inference.enumeration import configurations, exact_elbo, expand_grid, score_configurations
from inference.objectives import make_loss
from inference.program import inspect_program
from inference.stats import log_mean_exp
from ppl_models import build_model, model_config

PATTERNS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


def small_sbn(baseline="none"):
    torch.manual_seed(3)
    model, guide = build_model(model_config("sbn", 3, "bernoulli", layers=[2, 1], baseline=baseline))
    with torch.no_grad():  # away from the symmetric start, so no gradient is zero by accident
        for p in list(model.parameters()) + list(guide.parameters()):
            p.add_(torch.randn_like(p))
    return model, guide


def core_parameters(model, guide):
    """Model and guide parameters, without the baselines' networks (they are fitted, not estimated)."""
    return [*model.parameters(), *(p for n, p in guide.named_parameters() if not n.startswith("baselines"))]


def grid_scores(model, guide, x):
    """(log p(x_i, h_c), log q(h_c|x_i)) for every configuration c: two (C, N) tensors with graphs."""
    info = inspect_program(model, guide, x)
    values = expand_grid(configurations(model, guide, x, info), len(x), info)
    log_p = score_configurations(model, x, values, info, info.local_latents + info.observed)
    log_q = score_configurations(guide, x, values, info, info.local_latents)
    return log_p, log_q


def over_pairs(log_p, log_q, term):
    """sum over all K=2 draws (c1, c2) of q(c1) q(c2) * term(log_p pair, log_q pair), per datapoint."""
    total = 0.0
    for c1, c2 in itertools.product(range(log_p.shape[0]), repeat=2):
        lp, lq = log_p[[c1, c2]], log_q[[c1, c2]]
        total = total + lq.sum(0).exp().detach() * term(lp, lq)
    return total


def exact_targets(model, guide, x):
    """Name -> scalar whose gradient is the exact expected update of that estimator (summed over the batch)."""
    log_p, log_q = grid_scores(model, guide, x)
    n = len(x)
    # L_2 itself, differentiated through the draw probabilities and the weights
    iwae = 0.0
    for c1, c2 in itertools.product(range(log_p.shape[0]), repeat=2):
        lp, lq = log_p[[c1, c2]], log_q[[c1, c2]]
        iwae = iwae + lq.sum(0).exp() * log_mean_exp(lp - lq)
    rws_wake = over_pairs(log_p, log_q, lambda lp, lq: (torch.softmax((lp - lq).detach(), 0) * (lp + lq)).sum(0))
    wake_model = (log_q.exp().detach() * log_p).sum(0)  # E_q[log p(x, h)], h fixed
    # sleep: E_{p(x', h')}[log q(h'|x')] over all 8 binary x' and 8 h'; one dream per datapoint of the batch
    every_x = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))
    dream_p, dream_q = grid_scores(model, guide, every_x)
    sleep = n * (dream_p.exp().detach() * dream_q).sum()
    return {
        "elbo": exact_elbo(model, guide, x, model_grad=True).sum(),
        "tracegraph": exact_elbo(model, guide, x, model_grad=True).sum(),
        "iwae": iwae.sum(),
        "vimco": iwae.sum(),
        "rws": rws_wake.sum(),
        "wake-sleep": wake_model.sum() + sleep,
    }


@pytest.mark.parametrize("name", ["elbo", "tracegraph", "iwae", "vimco", "rws", "wake-sleep"])
def test_expected_update_equals_the_enumerated_one(name):
    model, guide = small_sbn("neural" if name == "tracegraph" else "none")
    x = PATTERNS.repeat(200, 1)
    params = core_parameters(model, guide)
    exact = torch.autograd.grad(exact_targets(model, guide, x)[name], params)
    exact = torch.cat([g.flatten() for g in exact]).float() / len(x)
    k = 1 if name in ("elbo", "tracegraph") else 2
    loss = make_loss(name, model, guide, num_particles=k)
    draws = []
    for _ in range(40):
        grads = torch.autograd.grad(loss(x), params, allow_unused=True)
        draws.append(-torch.cat([g.flatten() for g in grads]) / len(x))
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert exact.abs().max() > 0.05
    assert ((mean - exact).abs() < 3 * se + 1e-4).all(), (name, mean, exact, se)


@pytest.mark.slow
def test_vimco_is_less_noisy_than_the_plain_score_function_estimator():
    model, guide = small_sbn()
    x = PATTERNS[:1]
    params = [p for n, p in guide.named_parameters()]
    variances = {}
    for name in ("iwae", "vimco"):
        loss = make_loss(name, model, guide, num_particles=5)
        draws = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(loss(x), params)]) for _ in range(400)])
        variances[name] = draws.var(0).sum()
    assert variances["vimco"] < variances["iwae"] / 2, variances
