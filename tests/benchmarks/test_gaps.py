"""`python -m benchmarks.gaps`: output files, consistency, determinism, checkpoints, bad input."""

import json
import os

import pytest

from benchmarks.gaps import cli
from inference.gaps import QUANTITIES

TINY = [
    "--epochs", "2", "--num-points", "6", "--log-px-samples", "64", "--elbo-samples", "64",
    "--local-samples", "8", "--local-window", "10", "--local-patience", "2", "--local-max-steps", "60",
    "--latent-dim", "3", "--hidden", "16", "--encoder-hidden", "16", "--no-progress",
]


def run(tmp_path, *extra, name="out"):
    out = str(tmp_path / name)
    code = cli([*TINY, "--out", out, *extra])
    return code, out


def read(out, file="gaps.json"):
    with open(os.path.join(out, file)) as f:
        return json.load(f) if file.endswith(".json") else f.read()


def test_writes_a_consistent_gap_table(tmp_path, capsys):
    code, out = run(tmp_path)
    assert code == 0
    result = read(out)
    assert set(result) == {"config", "splits"} and set(result["splits"]) == {"train", "test"}
    for split in result["splits"].values():
        assert split["n_points"] == 6
        for q in QUANTITIES:
            assert isinstance(split[q], float) and split[f"{q}_se"] >= 0
        assert split["inference_gap"] == pytest.approx(split["approximation_gap"] + split["amortization_gap"], abs=1e-9)
        assert split["elbo_local"] >= split["elbo_amortized"] - 3 * split["amortization_gap_se"]
    assert result["config"]["data"]["dataset"] == "digits" and result["config"]["model"]["name"] == "vae"
    assert "| train | 6 |" in read(out, "gaps.md") and "| train | 6 |" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "checkpoints", "last.ckpt"))
    assert os.path.exists(os.path.join(out, "logs", "metrics.csv"))


def test_same_seed_gives_identical_json(tmp_path):
    _, a = run(tmp_path, "--seed", "3", name="a")
    _, b = run(tmp_path, "--seed", "3", name="b")
    assert read(a) == read(b)
    _, c = run(tmp_path, "--seed", "4", name="c")
    assert read(a)["splits"] != read(c)["splits"]


def test_ppca_reports_exact_values(tmp_path, capsys):
    ppca = ["--model", "ppca", "--latent-dim", "2", "--encoder-hidden", "none", "--epochs", "20", "--num-points", "6",
            "--local-max-steps", "400", "--local-samples", "50", "--log-px-samples", "2000", "--no-progress"]
    assert cli([*ppca, "--hidden", "16", "--out", str(tmp_path / "bad")]) == 2
    assert "model 'ppca' has no option 'hidden'" in capsys.readouterr().err
    assert cli([*ppca, "--out", str(tmp_path / "ppca")]) == 0
    for split in read(str(tmp_path / "ppca"))["splits"].values():
        assert {"exact_log_px", "exact_approximation_gap"} <= set(split)
        assert split["log_px"] == pytest.approx(split["exact_log_px"], abs=0.05)


def test_evaluates_a_checkpoint_and_refuses_conflicts(tmp_path, capsys):
    _, out = run(tmp_path, name="trained")
    ckpt = os.path.join(out, "checkpoints", "last.ckpt")
    evaluation = TINY[2 : TINY.index("--latent-dim")] + ["--no-progress"]  # no training or model options
    assert cli([*evaluation, "--checkpoint", ckpt, "--out", str(tmp_path / "eval")]) == 0
    assert read(str(tmp_path / "eval"))["config"]["model"] == read(out)["config"]["model"]
    assert cli([*evaluation, "--checkpoint", ckpt, "--latent-dim", "7", "--out", str(tmp_path / "x")]) == 2
    assert "--latent-dim 7 conflicts with the checkpoint" in capsys.readouterr().err
    assert cli([*evaluation, "--checkpoint", ckpt, "--epochs", "3", "--out", str(tmp_path / "x")]) == 2
    assert "drop the training option(s) --epochs" in capsys.readouterr().err
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(open(ckpt, "rb").read()[:1000])
    assert cli([*evaluation, "--checkpoint", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert "truncated, corrupt" in capsys.readouterr().err


def test_resume_continues_a_run(tmp_path):
    _, out = run(tmp_path, name="r")
    assert cli([*TINY[:1], "3", *TINY[2:], "--out", out, "--resume"]) == 0
    assert read(out)["config"]["train"]["epochs"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-points", "5000"], "num_points=5000 exceeds the train split of digits"),
        (["--log-px-samples", "0"], "--log-px-samples (K) must be an integer >= 1"),
        (["--local-window", "0"], "--local-window must be an integer >= 1"),
        (["--likelihood", "bernoulli", "--model", "ppca"], "ppca"),
        (["--device", "cuda"], "cuda"),
        (["--checkpoint", "/nonexistent/x.ckpt"], "no checkpoint file"),
        (["--dataset", "mnist", "--data-root", "/nonexistent"], "MNIST not found under data root '/nonexistent'"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, capsys, args, message):
    if "--checkpoint" in args:
        base = ["--no-progress"]
    else:
        base = TINY
    if args == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            return
    assert cli([*base, *args, "--out", str(tmp_path / "bad")]) == 2
    assert message in capsys.readouterr().err


def test_unknown_names_are_refused_by_the_parser(capsys):
    for option, value in (("--dataset", "cifar"), ("--model", "gan"), ("--likelihood", "poisson")):
        with pytest.raises(SystemExit) as exit_info:
            cli([option, value])
        assert exit_info.value.code == 2
        assert f"invalid choice: '{value}'" in capsys.readouterr().err
