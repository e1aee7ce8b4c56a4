"""Bidirectional Monte Carlo: its two AIS bounds bracket a closed-form log p(x)."""

import math

import torch

from inference.ais import AISOptions, HMCConfig
from inference.bdmc import bdmc
from tests.oracles import make_ppca


def test_bdmc_brackets_the_exact_log_marginal():
    model, guide = make_ppca(collinear=0.5)
    options = AISOptions(num_chains=16, num_steps=100, schedule="linear", hmc=HMCConfig(leapfrog_steps=5, step_size=0.1))
    result = bdmc(model, guide, torch.zeros(24, 6), options)
    exact = model.log_marginal(result.x).double()
    low, high = result.lower.value - exact, result.upper.value - exact
    assert low.mean() < 3 * low.std() / math.sqrt(len(low))  # a lower bound in expectation
    assert high.mean() > -3 * high.std() / math.sqrt(len(high))  # an upper bound in expectation
    assert result.gap.mean() < 0.5
