"""compare_objectives refuses what is not a pair factory, by name, before any training."""

import pytest
import torch

from tests.user_programs import make_pair


def test_a_pair_or_a_factory_returning_something_else_is_refused_with_what_was_expected():
    from inference import TrainOptions, compare_objectives

    data = (torch.bernoulli(torch.full((20, 64), 0.3)), torch.bernoulli(torch.full((8, 64), 0.3)))
    train = TrainOptions(epochs=1, batch_size=10)
    with pytest.raises(TypeError, match=r"takes a factory, a function returning a fresh \(model, guide\) pair .*not a tuple of 2"):
        compare_objectives(make_pair(), data, ["elbo"], train=train)
    with pytest.raises(TypeError, match="must return a \\(model, guide\\) pair of callables; it returned str"):
        compare_objectives(lambda: "nope", data, ["elbo"], train=train)
    with pytest.raises(ValueError, match="unknown objective 'nope'"):  # a comma-separated string is a list, not letters
        compare_objectives(make_pair, data, "elbo,nope", train=train)


def test_a_factory_of_the_command_line_that_returns_no_pair_is_named():
    from ppl_models import build_model

    with pytest.raises(TypeError, match="the factory 'os:getcwd' must return a \\(model, guide\\) pair of torch.nn.Modules .*; it returned str"):
        build_model({"name": "os:getcwd"})
