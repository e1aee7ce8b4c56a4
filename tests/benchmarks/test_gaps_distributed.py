"""The gap benchmark sharded over two CPU processes (gloo) gives the numbers of one process; an interrupted evaluation resumes."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.benchmarks.test_gaps import TINY, read, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUMBER = r"-?\d+\.\d+"
EVAL = TINY[2:] + ["--log-px", "max", "--ais-chains", "4", "--ais-steps", "8"]  # TINY without its "--epochs 2"


def _floats(a, b, path=""):
    """Every pair of numbers at the same place in two JSON trees (the trees must otherwise agree)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            yield from _floats(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            yield from _floats(u, v, f"{path}[{i}]")
    elif isinstance(a, float):
        yield path, a, b
    elif isinstance(a, str):  # texts quote the numbers, rounded: the last printed digit may differ with them
        assert re.sub(NUMBER, "#", a) == re.sub(NUMBER, "#", b), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tmp_path):
    code, trained = run(tmp_path, "--log-px", "max", "--ais-chains", "4", "--ais-steps", "8", name="trained")
    assert code == 0
    checkpoint = os.path.join(trained, "checkpoints", "last.ckpt")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    args = ["-m", "benchmarks.gaps", "--checkpoint", checkpoint, *EVAL]
    done = subprocess.run([sys.executable, *args, "--out", one], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*launch, *args, "--out", two], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = read(one), read(two)
    a["config"].pop("checkpoint"), b["config"].pop("checkpoint")
    pairs = list(_floats(a, b))
    assert len(pairs) > 100
    # the same random numbers for every point; only the model's float32 rounding over other batch shapes differs
    worst = max(abs(x - y) / (1 + abs(x)) for _, x, y in pairs)
    assert worst < 1e-5, [(p, x, y) for p, x, y in pairs if abs(x - y) / (1 + abs(x)) >= 1e-5][:5]
    with open(os.path.join(two, "run_info.json")) as f:
        info = json.load(f)
    assert info["world_size"] == 2 and info["shares"]["train"] == [[[0, 3]], [[3, 6]]]  # each rank's blocks
    with open(os.path.join(one, "run_info.json")) as f:
        assert json.load(f)["world_size"] == 1


@pytest.mark.slow
def test_an_interrupted_evaluation_resumes_from_its_saved_blocks_to_the_same_json(tmp_path, monkeypatch):
    import benchmarks.gaps as gaps

    code, whole = run(tmp_path, "--eval-block", "2", name="whole")
    assert code == 0
    real, calls = gaps.evaluate_block, []

    def interrupted(*args, **kwargs):
        calls.append(args[3:5])
        if len(calls) == 3:  # two blocks of the training points saved, then Ctrl-C
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gaps, "evaluate_block", interrupted)
    code, out = run(tmp_path, "--eval-block", "2", name="cut")
    assert code != 0 and sorted(os.listdir(os.path.join(out, "partial"))) == ["train-000000-000002.pt", "train-000002-000004.pt"]
    assert not os.path.exists(os.path.join(out, "gaps.json"))
    code, _ = run(tmp_path, "--eval-block", "2", name="cut")  # without --resume the folder is refused, not mixed
    assert code != 0
    calls.clear()
    monkeypatch.setattr(gaps, "evaluate_block", lambda *a, **k: calls.append(a[3:5]) or real(*a, **k))
    code, out = run(tmp_path, "--eval-block", "2", "--resume", name="cut")
    assert code == 0
    assert calls == [(4, 6), (0, 2), (2, 4), (4, 6)]  # the last training block, then every test block
    assert read(out) == read(whole)


@pytest.mark.slow
def test_a_saved_block_of_another_evaluation_is_evaluated_again_not_mixed_in(tmp_path, capsys):
    code, out = run(tmp_path, "--eval-block", "3", name="a")
    assert code == 0
    code, _ = run(tmp_path, "--eval-block", "3", "--resume", "--elbo-samples", "32", name="a")  # blocks saved with 64 samples
    assert code == 0 and "holds a block of another evaluation" in capsys.readouterr().err
    code, fresh = run(tmp_path, "--eval-block", "3", "--elbo-samples", "32", name="fresh")
    assert code == 0 and read(out)["splits"] == read(fresh)["splits"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_through_lightnings_launcher_give_the_numbers_of_two_devices_on_one(tmp_path):
    """``--num-nodes 2``: two "machines" on this one (each its own process and output folder, joined by NODE_RANK, MASTER_ADDR
    and MASTER_PORT, as a cluster's nodes are) train with DDP and shard the evaluation like ``--devices 2`` on one machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "benchmarks.gaps", *TINY, "--strategy", "ddp"]
    done = subprocess.run([*args, "--devices", "2", "--out", str(tmp_path / "one")], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    port = str(_free_port())
    nodes = [subprocess.Popen([*args, "--devices", "1", "--num-nodes", "2", "--out", str(tmp_path / f"node{rank}")], cwd=REPO,
                              env={**env, "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    a, b = read(str(tmp_path / "one")), read(str(tmp_path / "node0"))
    pairs = list(_floats(a, b))
    assert len(pairs) > 100 and all(x == y for _, x, y in pairs), [(p, x, y) for p, x, y in pairs if x != y][:5]
    with open(tmp_path / "node0" / "run_info.json") as f:
        assert json.load(f)["world_size"] == 2
    assert not os.path.exists(tmp_path / "node1" / "gaps.json")  # the second machine's rank writes no results
