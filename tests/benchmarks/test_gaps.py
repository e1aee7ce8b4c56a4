"""`python -m benchmarks.gaps`: output files, consistency, determinism, checkpoints, bad input."""

import json
import os

import pytest

from benchmarks.gaps import cli
from inference.gaps import QUANTITIES

pytestmark = pytest.mark.slow  # each test runs the gap benchmark end to end

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
            assert isinstance(split["quantities"][q]["mean"], float) and split["quantities"][q]["se"] >= 0
        q = split["quantities"]
        assert q["elbo_local"]["mean"] >= q["elbo_amortized"]["mean"] - 3 * q["amortization_gap"]["se"]
        assert all(len(split["per_point"][name]) == 6 for name in QUANTITIES)  # point by point, for paired comparisons
        claim = split["claims"][0]
        assert claim["claim"] == "amortization gap > approximation gap" and claim["status"] in ("holds", "fails", "within noise")
        assert claim["text"] in read(out, "gaps.md")
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
        assert split["exact"]["approximation_gap"] is not None and split["exact"]["source"] == "closed form"
        assert split["quantities"]["log_px"]["mean"] == pytest.approx(split["exact"]["log_px"]["mean"], abs=0.05)


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
        (["--devices", "0"], "--devices must be a count >= 1, -1 (every device), 'auto' or indices such as 0,1; got '0'"),
        (["--num-nodes", "0"], "--num-nodes must be an integer >= 1, got 0"),
        (["--num-nodes", "2"], "--num-nodes 2 needs --strategy ddp (got --strategy auto)"),
        (["--seed", "100000000000000000000000"], "--seed must be an integer from 0 to 4294967295, got 100000000000000000000000"),
        (["--local", ","], "--local ',' names no family"),
        (["--beta", "4"], "beta=4.0 applies to objective(s) beta-vae, not to 'elbo'"),
        (["--svi-momentum", "0.9"], "svi_momentum=0.9 applies to objective(s) sa-vae, not to 'elbo'"),
        (["--objective", "sa-vae", "--svi-momentum", "1"], "svi_momentum must be in [0, 1), got 1.0"),
        (["--max-grad-norm", "-1"], "max_grad_norm must be a finite number >= 0, got -1.0"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--kl-warmup-epochs", "inf"], "kl_warmup_epochs must be a finite number >= 0, got inf"),
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
    for option, value in (("--dataset", "cifar"), ("--likelihood", "poisson")):
        with pytest.raises(SystemExit) as exit_info:
            cli([option, value])
        assert exit_info.value.code == 2
        assert f"invalid choice: '{value}'" in capsys.readouterr().err
    assert cli(["--model", "gan"]) == 2
    assert "unknown model 'gan'; choose from vae, ppca, gmm, sbn, hvae, ladder" in capsys.readouterr().err


ZOO_TINY = [
    "--epochs", "2", "--num-points", "5", "--log-px-samples", "64", "--elbo-samples", "64", "--local-samples", "8",
    "--local-window", "10", "--local-patience", "2", "--local-max-steps", "40", "--no-progress",
]
ZOO = {
    "gmm": ["--model", "gmm", "--components", "3", "--encoder-hidden", "8"],
    "sbn": ["--model", "sbn", "--layers", "6,4", "--baseline", "nvil"],
    "hvae": ["--model", "hvae", "--latent-dims", "4,2", "--hidden", "8", "--upper-hidden", "6", "--guide", "coupling", "--flow-hidden", "6"],
    "ladder": ["--model", "ladder", "--latent-dims", "4,2", "--hidden", "8", "--upper-hidden", "6"],
    "vae-iwae": ["--model", "vae", "--latent-dim", "3", "--hidden", "8", "--encoder-hidden", "8", "--objective", "iwae-dreg", "--num-particles", "5"],
    "vae-iaf": ["--model", "vae", "--latent-dim", "3", "--hidden", "8", "--encoder-hidden", "8", "--guide", "iaf",
                "--flow-hidden", "6", "--local", "ffg,iaf,full", "--local-flow-hidden", "4"],
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_model_reaches_the_gap_table(tmp_path, name):
    out = str(tmp_path / name)
    assert cli([*ZOO_TINY, *ZOO[name], "--out", out]) == 0
    result = read(out)
    for split in result["splits"].values():
        for q in QUANTITIES:
            assert isinstance(split["quantities"][q]["mean"], float)
    table = read(out, "gaps.md")
    if name == "gmm":  # the categorical q* is the exact posterior: its ELBO is the closed-form log p(x) of the mixture
        for split in result["splits"].values():
            exact = split["exact"]["log_px"]["mean"]
            assert split["quantities"]["elbo_local"]["mean"] == pytest.approx(exact, abs=1e-4)
            assert split["quantities"]["log_px"]["mean"] == pytest.approx(exact, abs=1e-4)
            assert split["exact"]["source"] == "closed form" and split["local"]["family"] == "categorical"
    if name == "sbn":  # 10 binary units: exact log p(x) by enumeration, which the IWAE bound stays under
        for split in result["splits"].values():
            assert split["exact"]["source"] == "enumeration"
            log_px = split["quantities"]["log_px"]
            assert log_px["mean"] <= split["exact"]["log_px"]["mean"] + 3 * log_px["mc_se"] + 1e-6
            assert split["local"]["family"] == "sbn"  # two layers: the guide's own bottom-up family, not a mean-field one
    if name == "vae-iaf":  # the gaps in the guide's own family (a per-datapoint IAF); FFG and full q* beside it
        assert "L[q*_iaf]" in table and "L[q*_ffg]" in table and "L[q*_full]" in table
        assert result["config"]["evaluation"]["local_families"] == ["ffg", "iaf", "full"]
        for s in result["splits"].values():
            assert s["local"]["family"] == "iaf" and set(s["others"]) == {"ffg", "full"}


@pytest.mark.parametrize("name", ["ladder", "hvae"])
def test_structured_guides_get_q_star_in_their_own_family_so_the_amortization_gap_is_not_negative(tmp_path, name):
    """The ladder guide's q* keeps the precision-weighted top-down merge (free bottom-up statistics per datapoint);
    the bottom-up guide's keeps its upper conditional (free q(z1) per datapoint). Started at the encoder's output,
    q* is never worse than q beyond Monte Carlo noise. (Here the mean-field FFG q* that used to define the ladder's
    gaps falls 1.3 nats below q.)"""
    out = str(tmp_path / name)
    args = ["--model", name, "--latent-dims", "8,4", "--hidden", "32", "--upper-hidden", "16", "--epochs", "5", "--num-points", "8",
            "--elbo-samples", "300", "--log-px-samples", "100", "--local-samples", "10", "--local-lr", "5e-3",
            "--local-window", "20", "--local-patience", "2", "--local-max-steps", "200", "--no-progress", "--local", "ffg"]
    assert cli([*args, "--out", out]) == 0
    result = read(out)
    for split in result["splits"].values():
        q = split["quantities"]
        assert split["local"]["family"] == ("ladder" if name == "ladder" else "hierarchical")
        assert q["elbo_local"]["mean"] >= q["elbo_amortized"]["mean"] - 3 * q["amortization_gap"]["mc_se"], split
        assert q["amortization_gap"]["mean"] > 0.05  # q* did move: the check is not passed by standing still
        assert "ffg" in split["others"]  # the mean-field FFG reported beside, not instead


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "sbn", "--guide", "iaf"], "guide 'iaf' does not fit model 'sbn' (discrete latents)"),
        (["--model", "ladder", "--guide", "full"], "guide 'full' does not fit model 'ladder'"),
        (["--model", "gmm", "--components", "0"], "components must be a positive integer, got 0"),
        (["--model", "gmm", "--latent-dim", "3"], "model 'gmm' has no option 'latent_dim'"),
        (["--model", "sbn", "--likelihood", "gaussian"], "model 'sbn' supports likelihood bernoulli"),
        (["--model", "vae", "--local", "bernoulli"], "local family 'bernoulli' does not fit site 'z', a continuous latent"),
        (["--model", "sbn", "--local", "ffg"], "local family 'ffg' is for continuous latents; site 'h1' is bernoulli"),
        (["--local", "maf"], "unknown local family 'maf' in --local"),
    ],
)
def test_nonsense_combinations_get_clear_errors(tmp_path, capsys, extra, message):
    assert cli([*ZOO_TINY, "--epochs", "1", *extra, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_layer_sizes_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli(["--model", "sbn", "--layers", "200,0"])
    assert "layer sizes must be positive" in capsys.readouterr().err


def test_the_sa_vae_options_reach_the_training_options():
    from benchmarks.gaps import parse, resolve

    _, _, train, _ = resolve(parse(["--objective", "sa-vae", "--svi-steps", "3", "--svi-momentum", "0.25", "--svi-clip", "datapoint",
                                    "--svi-max-grad-norm", "2", "--svi-reduction", "sum", "--svi-analytic-kl", "false",
                                    "--decoder-through-refinement", "no", "--max-grad-norm", "5"]))
    assert (train.svi_steps, train.svi_momentum, train.svi_clip, train.svi_max_grad_norm, train.svi_reduction, train.svi_analytic_kl,
            train.decoder_through_refinement, train.max_grad_norm) == (3, 0.25, "datapoint", 2.0, "sum", False, False, 5.0)
    _, _, default, _ = resolve(parse(["--objective", "sa-vae", "--svi-steps", "3"]))  # Kim et al.'s optimizer by default
    assert (default.svi_momentum, default.svi_clip, default.svi_reduction, default.decoder_through_refinement) == (0.5, "batch", "mean", True)


def test_cremer_protocol_follows_the_reference_code_and_takes_overrides():
    """The preset is what chriscremer/Inference-Suboptimality runs on MNIST (the README lists what still differs)."""
    from benchmarks.gaps import parse, resolve

    args = parse(["--protocol", "cremer-mnist", "--epochs", "3"])
    data, model, train, _ = resolve(args)
    assert (data["dataset"], data["likelihood"], data["binarization"]) == ("mnist", "bernoulli", "static")
    assert (model["latent_dim"], model["hidden"], model["encoder_hidden"], model["activation"]) == (50, [200, 200], [200, 200], "tanh")
    assert (train.epochs, train.batch_size, train.lr, train.adam_eps, train.lr_schedule) == (3, 20, 1e-3, 1e-8, "iwae")
    assert (train.kl_warmup_epochs, train.warmup) == (100.0, "entropy")
    assert (args.num_points, args.log_px, args.log_px_samples, args.elbo_samples) == (100, "max", 5000, 5000)
    assert (args.ais_chains, args.ais_steps, args.ais_schedule, args.ais_leapfrog, args.ais_step_size, args.ais_init) == (
        100, 5000, "linear", 10, 0.1, "prior")
    # local q* from the prior, stopped once more than 10 windows of 100 steps in a row fail to improve, no cap
    assert (args.local_init, args.local_lr, args.local_samples, args.local_window, args.local_patience) == ("prior", 1e-3, 50, 100, 11)
    assert args.local_max_steps >= 1_000_000
    _, hvae, _, _ = resolve(parse(["--protocol", "cremer-mnist", "--model", "hvae"]))  # the preset's VAE sizes do not apply
    assert (hvae["latent_dims"], hvae["activation"]) == ([100, 50], "tanh")
    args = parse(["--protocol", "cremer-mnist", "--checkpoint", "some.ckpt"])  # evaluation presets only
    assert args.epochs is None and args.dataset == "digits" and "dataset" not in args.explicit and args.num_points == 100
    assert args.log_px == "max"


def test_log_px_max_reports_the_higher_of_ais_and_iwae_and_records_both(tmp_path):
    out = str(tmp_path / "max")
    drop = {i + d for i, a in enumerate(TINY) if a in ("--hidden", "--latent-dim") for d in (0, 1)}  # options ppca lacks
    ppca = [a for i, a in enumerate(TINY) if i not in drop]
    assert cli([*ppca, "--model", "ppca", "--latent-dim", "2", "--log-px", "max", "--ais-chains", "8", "--ais-steps", "30",
                "--ais-leapfrog", "3", "--out", out]) == 0
    for split in read(out)["splits"].values():
        ais, iwae = (split["log_px"]["estimates"][name]["mean"] for name in ("ais", "iwae"))
        assert split["quantities"]["log_px"]["mean"] == max(ais, iwae)
        assert split["log_px"]["method"] == ("ais" if ais > iwae else "iwae")
    assert "log p(x) by AIS" in read(out, "gaps.md")


def test_ais_log_px_and_psis_flags_on_ppca(tmp_path):
    out = str(tmp_path / "ais")
    drop = {i + d for i, a in enumerate(TINY) if a in ("--hidden", "--latent-dim") for d in (0, 1)}  # options ppca lacks
    ppca = [a for i, a in enumerate(TINY) if i not in drop]
    code = cli([*ppca, "--model", "ppca", "--latent-dim", "2", "--log-px", "ais", "--ais-chains", "32", "--ais-steps", "100",
                "--ais-leapfrog", "5", "--ais-init", "guide", "--out", out])
    assert code == 0
    for split in read(out)["splits"].values():
        assert split["log_px"]["method"] == "ais"
        assert abs(split["quantities"]["log_px"]["mean"] - split["exact"]["log_px"]["mean"]) < 0.1
        k = split["log_px"]["pareto_k"]
        assert 0 <= k["high_fraction"] <= 1 and len(k["high_points"]) == round(k["high_fraction"] * 6)
    assert "log p(x): AIS with 32 chains, 100 sigmoid steps from the guide" in read(out, "gaps.md")
    code, out = run(tmp_path, name="iwae")
    split = read(out)["splits"]["test"]
    assert split["log_px"]["method"] == "iwae" and split["log_px"]["pareto_k"]["max"] >= split["log_px"]["pareto_k"]["mean"]
    assert "PSIS k̂ of the log p(x) weights" in read(out, "gaps.md")
    code, _ = run(tmp_path, "--log-px", "ais", "--ais-chains", "0", name="bad")
    assert code == 2


def test_a_users_own_pair_from_a_factory_reaches_the_gap_table_and_its_checkpoint_is_evaluated(tmp_path, capsys):
    """`--model package.module:factory`: a pair written without the zoo (tests/user_programs.py); the checkpoint
    records the factory, so `--checkpoint` rebuilds the same pair and gives the same table."""
    user = [a for a in TINY if a not in ("--latent-dim", "3", "--hidden", "--encoder-hidden", "16")]
    out = str(tmp_path / "user")
    assert cli([*user, "--model", "tests.user_programs:make_pair", "--out", out]) == 0
    result = read(out)
    assert result["config"]["model"] == {"name": "tests.user_programs:make_pair", "likelihood": "bernoulli"}
    for split in result["splits"].values():
        q = split["quantities"]
        assert split["local"]["family"] == "ffg"  # an FFG guide written by hand: its own family found by inspection
        assert q["elbo_local"]["mean"] >= q["elbo_amortized"]["mean"] - 3 * q["amortization_gap"]["se"]
    evaluation = TINY[2 : TINY.index("--latent-dim")] + ["--no-progress"]
    ckpt = os.path.join(out, "checkpoints", "last.ckpt")
    assert cli([*evaluation, "--checkpoint", ckpt, "--out", str(tmp_path / "eval")]) == 0
    assert read(str(tmp_path / "eval"))["splits"] == result["splits"]
    assert cli([*evaluation, "--checkpoint", ckpt, "--latent-dim", "7", "--out", str(tmp_path / "x")]) == 2
    assert "builds its own architecture; drop --latent-dim" in capsys.readouterr().err
    assert cli([*user, "--model", "tests.user_programs:make_pair", "--latent-dim", "3", "--out", str(tmp_path / "x")]) == 2
    assert "builds its own architecture; drop --latent-dim" in capsys.readouterr().err
    assert cli([*user, "--model", "tests.nowhere:make_pair", "--out", str(tmp_path / "x")]) == 2
    assert "cannot import 'tests.nowhere'" in capsys.readouterr().err


def test_a_rerun_into_an_earlier_runs_folder_is_refused_or_replaces_it_whole(tmp_path, capsys):
    _, out = run(tmp_path, name="twice")
    first = read(out)
    assert cli([*TINY, "--out", out, "--seed", "5"]) == 2
    assert "holds an earlier run (gaps.json, gaps.md, run_info.json, checkpoints, logs, partial): pass --resume" in capsys.readouterr().err
    assert read(out) == first  # untouched
    assert cli([*TINY, "--out", out, "--seed", "5", "--overwrite"]) == 0
    assert read(out)["config"]["seed"] == 5 and read(out)["splits"] != first["splits"]
    with open(os.path.join(out, "logs", "metrics.csv")) as f:
        assert len(f.read().splitlines()) == 3  # the new run's two epochs only


def test_resume_past_the_asked_epochs_records_the_model_it_evaluated(tmp_path, capsys):
    _, out = run(tmp_path, name="r3")
    asked = [*TINY[:1], "1", *TINY[2:]]
    assert cli([*asked, "--out", out, "--resume"]) == 0
    assert read(out)["config"]["train"]["epochs"] == 2
    assert "the checkpoint had already run 2 epochs (asked: 1)" in capsys.readouterr().err


def test_ctrl_c_says_what_was_kept_and_a_failed_final_write_keeps_the_table(tmp_path, capsys, monkeypatch):
    import benchmarks.gaps as gaps
    import benchmarks.outdir as outdir

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gaps, "split_summary", interrupt)
    code, out = run(tmp_path, name="ctrl-c")
    assert code == 130
    err = capsys.readouterr().err
    assert f"interrupted: the last finished epoch's checkpoint is kept at {out}/checkpoints/last.ckpt" in err and "--resume" in err
    assert not os.path.exists(os.path.join(out, ".lock"))
    monkeypatch.undo()

    real = outdir.atomic_write_json

    def disk_full(path, obj):
        if str(path).endswith("gaps.json"):
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(outdir, "atomic_write_json", disk_full)
    assert cli([*TINY, "--out", out, "--resume"]) == 1
    captured = capsys.readouterr()
    assert "| train | 6 |" in captured.out  # the table reached the terminal
    assert "could not write gaps.json (No space left on device)" in captured.err and "written: gaps.md, run_info.json" in captured.err
    assert not os.path.exists(os.path.join(out, "gaps.json")) and os.path.exists(os.path.join(out, "gaps.md"))


def test_a_torchrun_launch_that_would_train_a_copy_per_process_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc-per-node 2 sets in each process
    assert cli([*TINY, "--out", str(tmp_path / "x")]) == 2
    assert "launched on 2 processes (torchrun), each would train its own copy of the model" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")  # refused before any work
