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


# ---- waiting for other ranks: two gloo processes whose group times out after 1 s ---------------------------------------

def _in_group(rank: int, port: int, scenario: str, results) -> None:
    import datetime
    import itertools
    import os
    import time

    import torch.distributed as dist

    from inference import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=1))
    distributed.POLL_SECONDS = 0.05  # ranks enter a collective at most one poll apart: well within this group's 1 s
    distributed.HEARTBEAT_SECONDS, distributed.STALE_SECONDS = 0.1, 1.5
    try:
        if scenario == "long-first":  # rank 0 works for longer than a collective may wait
            out = distributed.first_does("slept", lambda: time.sleep(2.5) or "made")
            late = distributed.gather_to_all(rank if rank == 0 else time.sleep(2.5) or rank)  # a rank late by more than the timeout
            results.put((rank, "ok", out, late, distributed.from_first("from 0" if rank == 0 else None)))
        elif scenario == "barrier":  # the contrast: a collective itself gives up after 1 s
            if rank == 0:
                time.sleep(2.5)
            dist.barrier()
            results.put((rank, "ok"))
        elif scenario == "first-fails":
            distributed.first_does("trained", lambda: (_ for _ in ()).throw(ValueError("the disk is full")))
            results.put((rank, "ok"))
        elif scenario == "other-fails":  # rank 1 fails on its own; rank 0 waits for its share
            if rank == 1:
                distributed.report_failure(ValueError("no such file"))
                raise SystemExit(0)
            distributed.gather_to_all(rank)
            results.put((rank, "ok"))
        elif scenario == "other-dies":  # rank 1 is killed: no word, its heartbeat stops
            distributed.barrier()
            if rank == 1:
                os._exit(137)
            distributed.gather_to_all(rank)
            results.put((rank, "ok"))
        elif scenario == "restarted":  # torchrun restarts a failed attempt with the same store: its keys are not read again
            attempts = []
            for attempt in ("0", "1"):
                os.environ["TORCHELASTIC_RESTART_COUNT"] = attempt
                distributed._calls = itertools.count()  # a new process starts counting again
                if attempt == "0":
                    distributed.report_failure(ValueError("in the first attempt"))
                if rank == 1:
                    time.sleep(0.5)  # rank 0 waits, looking at the store
                try:
                    attempts.append(distributed.from_first(f"attempt {attempt}" if rank == 0 else None))
                except distributed.PeerFailed:
                    attempts.append("PeerFailed")
            results.put((rank, *attempts))
    except Exception as err:
        results.put((rank, type(err).__name__, str(err)))


def _run_two(scenario: str) -> dict:
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_in_group, args=(rank, port, scenario, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + 120
    while len(out) < sum(1 for _ in procs) and time.monotonic() < deadline:
        try:
            item = results.get(timeout=1)
        except Exception:
            if not any(p.is_alive() for p in procs):
                break
            continue
        out[item[0]] = item[1:]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return out


@pytest.mark.slow
def test_waits_longer_than_the_groups_timeout_are_done_on_the_store_not_in_a_collective():
    out = _run_two("long-first")
    assert out == {0: ("ok", "made", [0, 1], "from 0"), 1: ("ok", None, [0, 1], "from 0")}, out
    contrast = _run_two("barrier")  # the same wait inside a collective fails: the test above can tell
    assert any(v[0] != "ok" for v in contrast.values()), contrast


@pytest.mark.slow
def test_a_failure_on_one_rank_stops_the_ranks_waiting_on_it_naming_it():
    out = _run_two("first-fails")
    assert out[0][:2] == ("ValueError", "the disk is full")
    assert out[1][0] == "PeerFailed" and "rank 0 failed: ValueError: the disk is full while it trained" in out[1][1], out
    out = _run_two("other-fails")
    assert list(out) == [0] and out[0][0] == "PeerFailed" and "rank 1 failed: ValueError: no such file" in out[0][1], out


@pytest.mark.slow
def test_a_rank_that_dies_without_a_word_is_found_by_its_heartbeat_and_a_restart_ignores_the_old_attempt():
    out = _run_two("other-dies")
    assert list(out) == [0] and out[0][0] == "PeerFailed" and "rank 1 stopped answering" in out[0][1], out
    out = _run_two("restarted")
    # in the first attempt rank 0, waiting, stops on the failure reported in it, and rank 1, arriving after, follows that
    # verdict rather than enter the broadcast alone; the second attempt reads none of the first one's keys
    assert out == {0: ("PeerFailed", "attempt 1"), 1: ("PeerFailed", "attempt 1")}, out
