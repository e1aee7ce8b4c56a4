"""Shards of an evaluation: their bounds, and gathered decompositions that equal one process's."""

import pytest
import torch

from inference import gap_decomposition
from inference.ais import AISOptions, HMCOptions
from inference.distributed import eval_blocks, gather_to_first, rank_blocks, world
from inference.estimators import Estimate
from inference.gaps import concatenate, portable
from inference.local import LocalOptions, StoppingRule
from tests.inference.test_streams import _vae


@pytest.mark.parametrize("n,block,size", [(10, 100, 3), (2, 100, 4), (7, 3, 1), (0, 5, 2), (250, 100, 2)])
def test_the_ranks_blocks_cover_every_point_once_and_each_rank_has_one(n, block, size):
    blocks = eval_blocks(n, block, size)
    shares = [rank_blocks(blocks, r, size) for r in range(size)]
    points = sorted(p for share in shares for k in share for p in range(*blocks[k]))
    assert points == list(range(n))  # every point once
    assert all(hi - lo <= block for lo, hi in blocks)
    assert all(share for share in shares[: min(n, size)])  # no rank idle while there are points for it
    counts = [sum(blocks[k][1] - blocks[k][0] for k in share) for share in shares]
    assert max(counts) - min(counts) <= max([hi - lo for lo, hi in blocks], default=0)


def test_a_rank_outside_the_group_is_refused():
    with pytest.raises(ValueError, match="rank 3 is outside a group of 2"):
        rank_blocks(eval_blocks(10, 5, 2), 3, 2)


def test_without_a_group_a_process_is_rank_zero_of_one():
    assert world() == (0, 1) and gather_to_first("x") == ["x"]


def _decomposition(rows, index):
    model, guide, _ = _vae()
    return gap_decomposition(model, guide, rows, log_px_samples=32, elbo_samples=16, log_px="max",
                             local=LocalOptions(num_samples=4, rule=StoppingRule(3, 1, 9)),
                             ais_options=AISOptions(num_chains=3, num_steps=5, hmc=HMCOptions(leapfrog_steps=2)), seed=1, index=index)


def test_gathered_halves_summarize_as_one_process():
    _, _, x = _vae()
    whole = _decomposition(x, None)
    parts = [portable(_decomposition(x[:4], torch.arange(4))), portable(_decomposition(x[4:], torch.arange(4, 10)))]
    merged = concatenate(parts)
    assert merged.log_px_method == whole.log_px_method
    a, b = whole.summary(), merged.summary()
    for key in a["quantities"]:
        assert b["quantities"][key]["mean"] == pytest.approx(a["quantities"][key]["mean"], rel=1e-5, abs=1e-5)
    assert b["per_point"]["log_px"] == pytest.approx(a["per_point"]["log_px"], rel=1e-5)
    assert b["local"]["steps_mean"] == a["local"]["steps_mean"]


def test_log_px_max_is_chosen_again_over_all_the_gathered_points():
    _, _, x = _vae()
    parts = [portable(_decomposition(x[:4], torch.arange(4))), portable(_decomposition(x[4:], torch.arange(4, 10)))]

    def shifted(part, ais_shift):  # make AIS the higher on this shard's points by ais_shift nats
        est = part.log_px_estimates
        iwae = est["iwae"]
        ais = Estimate(iwae.value + ais_shift, est["ais"].stderr, est["ais"].num_samples, est["ais"].pareto_k)
        return part._replace(log_px_estimates={"iwae": iwae, "ais": ais})

    parts = [shifted(parts[0], 1.0), shifted(parts[1], -2.0)]  # AIS wins on 4 points by 1, loses on 6 by 2
    merged = concatenate(parts)
    assert merged.log_px_method == "iwae"  # the mean over all ten points: -0.8 for AIS
    assert torch.equal(merged.log_px.value, torch.cat([p.log_px_estimates["iwae"].value for p in parts]))
