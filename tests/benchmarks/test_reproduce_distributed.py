"""The reproduction experiments under torchrun: rank 0 trains, the gap evaluations are sharded, the numbers are one process's."""

import json
import os
import subprocess
import sys

import pytest

import benchmarks.reproduce as reproduce
from tests.benchmarks.test_gaps_distributed import _floats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_ONLY = ("seconds", "compute_seconds", "versions", "command", "world_size")  #: what may differ between two runs of one experiment


def _experiment(out: str, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float rounding in both runs
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    args = ["-m", "benchmarks.reproduce", "gaps-by-family", "--budget", "tiny", "--out", out, "--no-progress"]
    done = subprocess.run([*launch, *args, *(["--streams", "keyed"] if processes == 1 else [])], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(out, "gaps-by-family.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_train_once_and_give_the_numbers_of_one(tmp_path):
    one, two = _experiment(str(tmp_path / "one"), 1), _experiment(str(tmp_path / "two"), 2)
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["streams"] == two["streams"] == "keyed"
    for key in RUN_ONLY:
        one.pop(key), two.pop(key)
    pairs = [(p, x, y) for p, x, y in _floats(one, two) if not p.endswith("seconds")]  # timings of the trainings
    assert len(pairs) > 100
    worst = max(abs(x - y) / (1 + abs(x)) for _, x, y in pairs)  # float32 rounding over other batch shapes, nothing more
    assert worst < 1e-5, [(p, x, y) for p, x, y in pairs if abs(x - y) / (1 + abs(x)) >= 1e-5][:5]
    # one trained copy of each model, written by rank 0
    assert sorted(os.listdir(tmp_path / "two" / "models")) == sorted(os.listdir(tmp_path / "one" / "models"))


def test_a_sharded_run_refuses_what_it_cannot_shard(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "init_from_environment", lambda device: True)
    monkeypatch.setattr(reproduce, "world", lambda: (0, 2))
    assert reproduce.cli(["iwae-table", "--budget", "tiny", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "not sharded: run it in one process" in capsys.readouterr().err
    assert reproduce.cli(["gaps-by-family", "--budget", "tiny", "--streams", "global", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "--streams global cannot be sharded over 2 ranks" in capsys.readouterr().err
