"""The objective table: one entry per name, read by make_loss, TrainOptions, the CLI help and the docs."""

import os

import pytest
import torch

from inference.objectives import OBJECTIVES, get_objective, make_loss, objectives_help, objectives_table
from inference.training import TrainOptions
from tests.oracles import make_ppca, sample_ppca

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_docs_table_is_the_code_table():
    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        text = f.read()
    start = text.index("<!-- objectives table")
    start = text.index("\n", start) + 1
    assert text[start : text.index("<!-- end of objectives table -->")].strip() == objectives_table()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_entry_builds_a_loss_on_a_reparameterized_pair_and_respects_its_k_range(name):
    entry = get_objective(name)
    model, guide = make_ppca()
    k = max(entry.min_particles, 2) if entry.max_particles is None else entry.min_particles
    if entry.needs == "enumerated":
        with pytest.raises(ValueError, match="enumerate"):  # PPCA has no enumerated site: refused by name, on the first batch
            make_loss(name, model, guide, k)(sample_ppca(model, 4))
    else:
        loss = make_loss(name, model, guide, k)(sample_ppca(model, 4))
        assert loss.shape == () and torch.isfinite(loss)
    if entry.max_particles is not None:
        with pytest.raises(ValueError, match=f"objective {name!r}"):
            make_loss(name, model, guide, entry.max_particles + 1)
    if entry.min_particles > 1:
        with pytest.raises(ValueError, match=f"objective {name!r}"):
            TrainOptions(objective=name, num_particles=entry.min_particles - 1)
    assert name in objectives_help() and entry.description in objectives_help()


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match="unknown objective 'elbow'; choose from elbo, meanfield"):
        make_loss("elbow", *make_ppca())
