"""Every benchmark module runs end to end with tiny settings, as a subprocess (like a user would)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # each test runs a whole benchmark in a fresh process

TINY_GAPS = "--epochs 1 --num-points 4 --log-px-samples 32 --elbo-samples 32 --local-max-steps 20 --local-window 10 --latent-dim 2 --hidden 8 --encoder-hidden 8 --no-progress"
EXAMPLES = {
    "gaps": TINY_GAPS,
    "compare": "--epochs 1 --objectives elbo,iwae --num-particles 1,2 --test-points 8 --log-px-samples 16 --elbo-samples 8 --snr-draws 3 --curve-points 8 --curve-samples 4 --latent-dim 2 --hidden 8 --encoder-hidden 8 --no-progress",
    "mixture": "--components 2 --pca-dims 2 --restarts 1 --steps 30",
    "reproduce": "posterior-2d --budget tiny --no-progress",
    "sweep": "--grid seed=0 -- reproduce posterior-2d --budget tiny --no-progress",
    "gpu_check": "--device cpu --tiny --data-root {mnist_root}",
    "speed": "--quick --data-root {mnist_root}",
    "savae_step_size": "--epochs 1 --points 4",
}
NOT_EXPERIMENTS = {"outdir", "__init__", "__main__", "datasets", "options", "report"}  # not runnable experiments


def test_every_benchmark_module_is_listed():
    folder = os.path.join(REPO, "benchmarks")
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}
    modules |= {f for f in os.listdir(folder) if os.path.exists(os.path.join(folder, f, "__main__.py"))}  # runnable packages
    assert modules - NOT_EXPERIMENTS == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_benchmark_runs(name, tmp_path, mnist_root):
    args = EXAMPLES[name].format(mnist_root=mnist_root).split()
    cut = args.index("--") if "--" in args else len(args)  # the sweep's own --out comes before its swept command
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args[:cut], "--out", str(tmp_path), *args[cut:]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(f.endswith(".json") for f in os.listdir(tmp_path))
    assert any(f.endswith(".md") for f in os.listdir(tmp_path))


def test_training_runs_under_ddp_on_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.gaps", *TINY_GAPS.split(), "--epochs", "2", "--devices", "2",
           "--strategy", "ddp", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "gaps.json") as f:
        assert set(json.load(f)["splits"]) == {"train", "test"}
    with open(tmp_path / "logs" / "metrics.csv") as f:
        assert len(f.read().splitlines()) == 3  # header + one line per epoch, written by rank 0


def test_one_console_command_runs_every_benchmark(capsys):
    """`latent-inference NAME ...` is `python -m benchmarks.NAME ...`: each name reaches its module's command line."""
    from benchmarks.__main__ import COMMANDS, main

    assert set(COMMANDS) == set(EXAMPLES)
    assert main(["gaps", "--num-points", "0"]) == 2  # the gaps job's own check answered
    assert "--num-points must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0 and f"benchmarks.{name}" in capsys.readouterr().out
