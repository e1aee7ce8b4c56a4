"""`python -m benchmarks.compare`: one table from runs with the same budget, seed and data order."""

import json
import os

import pytest

from benchmarks.compare import cli, parse, resolve
from benchmarks.datasets import load_dataset
from inference.compare import CompareOptions, compare_objectives
from inference.training import TrainOptions
from ppl_models import build_model, model_config
from tests.user_programs import make_pair

pytestmark = pytest.mark.slow  # each test trains several runs end to end

BUDGET = [
    "--epochs", "2", "--test-points", "20", "--log-px-samples", "32", "--elbo-samples", "16", "--snr-draws", "5",
    "--curve-points", "20", "--curve-samples", "8", "--no-progress",
]
TINY = [*BUDGET, "--latent-dim", "3", "--hidden", "16", "--encoder-hidden", "16"]


def run(tmp_path, *extra, name="out"):
    out = str(tmp_path / name)
    return cli([*TINY, "--out", out, *extra]), out


def read(out, file="compare.json"):
    with open(os.path.join(out, file)) as f:
        return json.load(f) if file.endswith(".json") else f.read()


def measured(result):
    """What a run measured, without the wall-clock times (which a rerun never repeats)."""
    keys = ("objective", "num_particles", "test_log_px", "test_elbo", "active_units", "snr")
    return [{**{k: r[k] for k in keys}, "curve": [{k: v for k, v in p.items() if k != "train_seconds"} for p in r["curve"]]} for r in result["runs"]]


def test_one_table_same_seed_same_numbers_and_resume(tmp_path):
    args = ("--objectives", "elbo,tracegraph,iwae-dreg", "--num-particles", "1,3")
    code, out = run(tmp_path, *args)
    assert code == 0
    result = read(out)
    assert [(r["objective"], r["num_particles"]) for r in result["runs"]] == [("elbo", 1), ("elbo", 3), ("tracegraph", 1), ("iwae-dreg", 1), ("iwae-dreg", 3)]
    assert [(s["objective"], s["num_particles"]) for s in result["skipped"]] == [("tracegraph", 3)]
    for r in result["runs"]:
        assert r["test_elbo"]["mean"] <= r["test_log_px"]["mean"] + 3 * (r["test_elbo"]["se"] + r["test_log_px"]["se"])
        assert r["steps"] == 2 * 15 and r["seconds_per_step"] > 0  # 1437 digits in batches of 100, 2 epochs
        assert [p["step"] for p in r["curve"]] == [15, 30] and len(r["train_loss"]) == 2
        assert 0 <= r["active_units"]["active"] <= r["active_units"]["total"] == 3
        assert r["snr"]["encoder"]["mean"] > 0 and r["snr"]["decoder"]["mean"] > 0
    # the same initialization and data order: on a reparameterized guide tracegraph's estimator is Trace_ELBO's
    elbo, tracegraph = result["runs"][0], result["runs"][2]
    assert tracegraph["test_log_px"]["mean"] == pytest.approx(elbo["test_log_px"]["mean"], rel=1e-5)
    table = read(out, "compare.md")
    assert "| iwae-dreg | 3 |" in table and "Skipped tracegraph with K=3" in table
    assert os.path.getsize(os.path.join(out, "compare.png")) > 1000
    code, again = run(tmp_path, *args, name="again")
    assert code == 0 and measured(read(again)) == measured(result)
    code, resumed = run(tmp_path, *args, "--resume", name="out")  # every run finished: reused as it is
    assert code == 0 and measured(read(resumed)) == measured(result)
    record = os.path.join(out, "runs", "elbo-K1", "run.json")  # a run recorded in the layout before issue 13
    with open(record) as f:
        old = json.load(f)
    old["num_samples"], old["test_log_px"] = old.pop("num_particles"), old["test_log_px"]["mean"]
    with open(record, "w") as f:
        json.dump(old, f)
    code, resumed = run(tmp_path, *args, "--resume", name="out")  # measured again from its finished checkpoint
    assert code == 0 and measured(read(resumed)) == measured(result)


def test_curve_every_few_steps_and_resume_of_an_interrupted_run(tmp_path):
    args = ("--objectives", "iwae", "--num-particles", "2", "--curve-steps", "10")
    code, out = run(tmp_path, *args)
    assert code == 0
    full = read(out)["runs"][0]
    assert [p["step"] for p in full["curve"]] == [10, 15, 20, 30]  # every 10 steps and at each epoch's end (15 batches)
    # an interrupted comparison: the first epoch done, then --resume with the full budget
    code, part = run(tmp_path, *args, "--epochs", "1", name="part")
    os.remove(os.path.join(part, "runs", "iwae-K2", "run.json"))  # as if killed before it finished
    code = cli([*TINY, "--out", part, *args, "--resume"])
    assert code == 0
    resumed = read(part)["runs"][0]
    assert [p["step"] for p in resumed["curve"]] == [10, 15, 20, 30]
    assert resumed["test_log_px"]["mean"] == pytest.approx(full["test_log_px"]["mean"], abs=1e-9)  # training continued exactly


def test_discrete_model_with_vimco_and_rws(tmp_path):
    code, out = run(tmp_path, "--model", "sbn", "--layers", "4", "--objectives", "vimco,rws,wake-sleep", "--num-particles", "1,2",
                    "--latent-dim", "3")  # --latent-dim does not apply to an SBN
    assert code == 2
    code = cli([*BUDGET, "--out", str(tmp_path / "sbn"), "--model", "sbn", "--layers", "4", "--objectives", "vimco,rws,wake-sleep", "--num-particles", "1,2"])
    assert code == 0
    result = read(str(tmp_path / "sbn"))
    assert [(r["objective"], r["num_particles"]) for r in result["runs"]] == [("vimco", 2), ("rws", 1), ("rws", 2), ("wake-sleep", 1), ("wake-sleep", 2)]
    assert all(r["active_units"]["total"] == 4 for r in result["runs"])


def test_protocol_presets_and_overrides():
    data, model, train, objectives, counts, _ = resolve(parse(["--protocol", "iwae-mnist"]))
    assert data == {"dataset": "mnist", "likelihood": "bernoulli", "binarization": "dynamic", "binarize_seed": 0}
    assert (model["name"], model["latent_dim"], model["hidden"], model["encoder_hidden"], model["activation"]) == ("vae", 50, [200, 200], [200, 200], "tanh")
    assert (train.epochs, train.batch_size, train.lr, train.lr_schedule, train.adam_eps) == (3280, 20, 1e-3, "iwae", 1e-4)
    assert objectives == ["elbo", "iwae"] and counts == [1, 5, 50]
    _, model, train, _, _, _ = resolve(parse(["--protocol", "iwae-mnist", "--model", "hvae", "--epochs", "3"]))
    assert (model["name"], model["latent_dims"], model["activation"], train.epochs) == ("hvae", [100, 50], "tanh", 3)
    data, model, train, objectives, _, _ = resolve(parse(["--protocol", "sbn-mnist", "--layers", "200,200"]))
    assert (data["binarization"], model["name"], model["layers"], model["baseline"]) == ("static", "sbn", [200, 200], "nvil")
    assert objectives == ["tracegraph", "vimco"]
    assert parse(["--num-samples", "1,2"]).num_particles == "1,2"  # the old name of the flag still works


def test_an_unknown_model_under_a_protocol_is_an_error_not_a_traceback(capsys):
    assert cli(["--protocol", "iwae-mnist", "--model", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--objectives", "elbo,nope"], "unknown objective 'nope'"),
    (["--num-particles", "1,0"], "each K in --num-particles must be an integer >= 1, got 0"),
    (["--num-particles", "1,x"], "--num-particles must be comma-separated ints"),
    (["--objectives", "elbo,elbo"], "lists a value twice"),
    (["--test-points", "100000"], "num_points=100000 exceeds the test split"),
    (["--snr-draws", "1"], "--snr-draws must be >= 2"),
    (["--objectives", "tracegraph", "--num-particles", "5"], "no (objective, K) pair"),
    (["--beta", "4"], "--beta 4.0 applies to beta-vae, which --objectives does not list"),
    (["--svi-clip", "datapoint"], "--svi-clip datapoint applies to sa-vae, which --objectives does not list"),
])
def test_bad_settings_are_refused(tmp_path, capsys, extra, message):
    code, _ = run(tmp_path, *extra)
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_library_function_and_the_command_line_compare_a_users_own_pair(tmp_path):
    """A pair written without the zoo (tests/user_programs.py, the README's example) through --model module:factory;
    the library function the command line calls gives the same numbers for the same factory, data, budget and seed."""
    code = cli([*BUDGET, "--model", "tests.user_programs:make_pair", "--objectives", "elbo,iwae,iwae-dreg", "--num-particles", "5",
                "--out", str(tmp_path / "user")])
    assert code == 0
    result = read(str(tmp_path / "user"))
    assert [(r["objective"], r["num_particles"]) for r in result["runs"]] == [("elbo", 5), ("iwae", 5), ("iwae-dreg", 5)]
    assert result["config"]["model"] == {"name": "tests.user_programs:make_pair", "likelihood": "bernoulli"}
    for r in result["runs"]:
        assert r["test_elbo"]["mean"] <= r["test_log_px"]["mean"] + 3 * (r["test_elbo"]["se"] + r["test_log_px"]["se"])
        assert r["active_units"]["total"] == 2
    options = CompareOptions(test_points=20, log_px_samples=32, elbo_samples=16, snr_draws=5, curve_points=20, curve_samples=8)
    library = compare_objectives(make_pair, load_dataset("digits", "bernoulli", "dynamic"), ["elbo", "iwae", "iwae-dreg"], [5],
                                 TrainOptions(epochs=2, seed=0), options)
    assert measured({"runs": library.runs}) == measured(result)
    assert cli([*BUDGET, "--model", "tests.user_programs:make_pair", "--latent-dim", "3", "--out", str(tmp_path / "x")]) == 2
    assert cli([*BUDGET, "--model", "tests.user_programs:nothing", "--out", str(tmp_path / "x")]) == 2


def test_objectives_a_pair_cannot_train_are_skipped_with_the_reason(tmp_path):
    """The table's `needs`: DReG on a sigmoid belief net (no reparameterized sampler), enum on a VAE (nothing to enumerate)."""
    data = load_dataset("digits", "bernoulli", "dynamic")
    options = CompareOptions(test_points=20, log_px_samples=16, elbo_samples=8, snr_draws=3, curve_points=20, curve_samples=4)
    sbn = model_config("sbn", 64, "bernoulli", layers=[4])
    result = compare_objectives(lambda: build_model(sbn), data, ["iwae-dreg", "captured-elbo", "vimco"], [2], TrainOptions(epochs=1), options)
    assert [r["objective"] for r in result.runs] == ["vimco"]
    assert "objective 'iwae-dreg' needs a reparameterized guide; guide site(s) ['h1'] are not" in result.skipped[0]["reason"]
    vae = model_config("vae", 64, "bernoulli", latent_dim=2, hidden=[8], encoder_hidden=[8])
    with pytest.raises(ValueError, match="no \\(objective, K\\) pair can run: objective 'enum' needs model sites marked"):
        compare_objectives(lambda: build_model(vae), data, ["enum"], [1], TrainOptions(epochs=1), options)


def test_each_run_takes_its_own_objectives_parameters(tmp_path):
    code, out = run(tmp_path, "--objectives", "elbo,beta-vae,free-bits", "--num-particles", "1", "--beta", "4", "--free-bits", "0.5")
    assert code == 0
    train = {r["objective"]: r["train"] for r in read(out)["runs"]}
    assert (train["elbo"]["beta"], train["elbo"]["free_bits"]) == (1.0, 0.0)
    assert (train["beta-vae"]["beta"], train["beta-vae"]["free_bits"]) == (4.0, 0.0)
    assert (train["free-bits"]["beta"], train["free-bits"]["free_bits"]) == (1.0, 0.5)
    runs = read(out)["runs"]
    assert all(len(r["per_point"]["test_log_px"]) == 20 for r in runs) and "paired" not in runs[0]
    for r in runs[1:]:  # judged point by point against the first run, and the verdicts are in the report
        assert r["paired"]["against"] == "elbo K=1" and r["paired"]["test_log_px"]["text"] in read(out, "compare.md")


def test_a_torchrun_launch_is_refused_not_run_once_per_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cli(["--epochs", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "benchmarks.compare runs in one process; launched on 4 (torchrun)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
