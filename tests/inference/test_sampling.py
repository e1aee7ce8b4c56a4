"""Shared draws: the random state a side computation must leave alone."""

import contextlib

import torch

from inference import sampling


def test_fork_rng_forks_the_devices_generator_as_well_as_the_cpus(monkeypatch):
    """Forking only the CPU generator around an evaluation leaves a GPU's generator advanced by it, so training noise
    on a GPU would depend on how often the learning curve was evaluated: the device's generator is forked too."""
    seen = []
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: seen.append(devices) or contextlib.nullcontext())
    for device in ("cuda:1", torch.device("cpu"), None):
        with sampling.fork_rng(device):
            pass
    assert seen == [[torch.device("cuda:1")], [], []]


def test_fork_rng_leaves_the_cpu_stream_as_it_was():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with sampling.fork_rng("cpu"):
        torch.rand(100)
    assert torch.equal(torch.rand(4), expected)
