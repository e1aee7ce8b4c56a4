"""Every reproduction experiment end to end on digits at the tiny budget: files, figure panels, verdicts, resume, bad input."""

import copy
import dataclasses
import json
import os

import matplotlib.pyplot as plt
import pytest
import torch

import benchmarks.report
from benchmarks import reproduce
from benchmarks.reproduce.budget import budget_for
from benchmarks.reproduce.report import Report
from inference.claims import VERDICTS

pytestmark = pytest.mark.slow  # trains every experiment's models (tiny ones)

#: The panels (axes) each experiment's figures must have, by file.
PANELS = {
    "encoder-capacity.png": 2, "gaps-over-training.png": 6, "posterior-2d.png": 16, "collapse.png": 6, "iwae-table-curves.png": 2,
    "decoder-sizes.png": 3,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``python -m benchmarks.reproduce all --budget tiny`` in this process, with every figure's axes recorded."""
    out = tmp_path_factory.mktemp("reproduce")
    drawn = {}
    original = benchmarks.report.save_figure

    def recording(fig, path):
        drawn[os.path.basename(path)] = [ax.get_title() for ax in fig.axes]
        original(fig, path)

    patch = pytest.MonkeyPatch()
    for module in ("benchmarks.report", "benchmarks.reproduce.encoder_capacity", "benchmarks.reproduce.gaps_over_training",
                   "benchmarks.reproduce.posterior_2d", "benchmarks.reproduce.collapse", "benchmarks.reproduce.decoder_sizes"):
        patch.setattr(f"{module}.save_figure", recording)
    code = reproduce.cli(["all", "--budget", "tiny", "--out", str(out), "--no-progress"])
    patch.undo()
    assert code == 0
    return out, drawn


def test_every_experiment_writes_json_markdown_and_figures_with_their_panels(tiny_run):
    out, drawn = tiny_run
    for name in reproduce.EXPERIMENTS:
        with open(out / f"{name}.json") as f:
            record = json.load(f)
        assert record["experiment"] == name and record["budget"]["name"] == "tiny" and record["versions"]["torch"]
        assert record["smoke_run"] is True and record["title"].startswith("[SMOKE RUN, --budget tiny: the numbers mean nothing]")
        assert all(c["status"] in VERDICTS and "se" in c["difference"] for c in record["claims"])
        markdown = (out / f"{name}.md").read_text()
        assert markdown.startswith("# [SMOKE RUN") and "|---|" in markdown and "its numbers and verdicts mean nothing" in markdown
        for figure in reproduce.experiment_module(name).FIGURES:
            assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(drawn[figure]) == PANELS[figure], (figure, drawn[figure])
    assert sum(len(json.load(open(out / f"{n}.json"))["claims"]) for n in reproduce.EXPERIMENTS) >= 20
    titles = drawn["posterior-2d.png"]
    assert [t.split("\n")[0] for t in titles[:4]] == ["true posterior", "amortized q", "q*_FFG", "q*_flow"]
    assert titles[0].split("\n")[1].startswith("log p(x)") and titles[1].split("\n")[1].startswith("ELBO")


def test_the_main_table_has_per_point_values_and_the_claim_per_model_and_split(tiny_run):
    out, _ = tiny_run
    with open(out / "gaps-by-family.json") as f:
        record = json.load(f)
    for family in ("ffg", "iaf"):
        split = record["results"][family]["splits"]["test"]
        assert len(split["per_point"]["amortization_gap"]) == budget_for("tiny", "digits").num_points
        assert set(split["log_px"]["estimates"]) == {"ais", "iwae"}  # AIS with IWAE beside it
        assert {"ffg", "iaf"} <= {split["local"]["family"], *split["others"]}  # L[q*_FFG] and L[q*_flow] for both models
    contexts = [c["context"] for c in record["claims"]]
    assert contexts == ["FFG-trained, train", "FFG-trained, test", "flow-trained, train", "flow-trained, test"]


def test_experiments_on_one_decoder_and_one_set_of_points_share_one_log_px(tiny_run):
    """Experiment 1's FFG model, the fixed-decoder encoders of 2 and the encoders of 3: one decoder, one log p(x) per point,
    the best IWAE over all their q*'s (and AIS, requested by experiment 1), and its BDMC bound, named in every report."""
    out, _ = tiny_run
    records = {name: json.load(open(out / f"{name}.json")) for name in ("gaps-by-family", "encoder-capacity", "flows-amortization")}
    for split in ("train", "test"):
        main = records["gaps-by-family"]["results"]["ffg"]["splits"][split]
        fixed = [r["splits"][split] for r in records["encoder-capacity"]["results"]["protocols"]["fixed decoder"].values()]
        fixed += [r["splits"][split] for r in records["flows-amortization"]["results"]["encoders"].values()]
        assert len(fixed) == 5
        for s in fixed:
            assert s["per_point"]["log_px"] == main["per_point"]["log_px"]
            assert s["log_px"]["decoder"]["candidates"] == main["log_px"]["decoder"]["candidates"]
        decoder = main["log_px"]["decoder"]
        # experiment 1's evaluation, the four encoders' on the frozen decoder (2's linear FFG encoder is 3's, trained once) and
        # experiment 10's evaluation of the same model with q*_FFG alone (its decoder of the budget's size is experiment 1's);
        # any other evaluation of the same weights on the same points joins them (a last snapshot of experiment 5 may)
        encoders = {"encoder-ffg-linear-on-vae-ffg", "encoder-ffg-16-on-vae-ffg", "encoder-ffg-8-on-vae-ffg", "encoder-flow-linear-on-vae-ffg"}
        assert {"vae-ffg", *encoders} <= set(decoder["models"])
        assert sum(c.startswith(f"gaps-vae-ffg-{split}-") for c in decoder["candidates"]) == 2
        assert all(any(c.startswith(f"gaps-{e}-{split}-") for c in decoder["candidates"]) for e in encoders)
        assert main["log_px"]["method"] in ("ais", "iwae") and set(main["log_px"]["estimates"]) == {"ais", "iwae"}
        assert decoder["ais"]["steps"] in (4, 8) and decoder["bdmc"]["points"] == 2
        joint = records["encoder-capacity"]["results"]["protocols"]["joint"]
        assert all(r["splits"][split]["log_px"]["decoder"]["weights"] != decoder["weights"] for r in joint.values())
    for name, record in records.items():
        assert any("vae-ffg" in d["decoder"]["models"] for d in record["decoders"].values())
        markdown = (out / f"{name}.md").read_text()
        assert "### log p(x), one per decoder" in markdown and "BDMC upper − lower" in markdown
        assert "No L[q*] lies above its decoder's log p(x)" in markdown or "⚠" in markdown


def test_the_decoder_sizes_share_the_encoder_and_the_points_and_judge_smallest_against_largest(tiny_run):
    out, drawn = tiny_run
    budget = budget_for("tiny", "digits")
    with open(out / "decoder-sizes.json") as f:
        record = json.load(f)
    models = record["results"]["models"]
    assert list(models) == ["linear", "8"] and [m["decoder"] for m in models.values()] == [list(s) for s in budget.decoder_sizes]
    assert models["8"]["model"] == "vae-ffg"  # the budget's own decoder: experiment 1's FFG model, trained once
    assert record["models"]["vae-ffg-declinear"]["model"]["encoder_hidden"] == list(budget.hidden)
    assert record["models"]["vae-ffg-declinear"]["model"]["hidden"] == []
    assert record["models"]["vae-ffg-declinear"]["train"] == record["models"]["vae-ffg"]["train"]  # same seed and options
    assert models["linear"]["decoder_parameters"] < models["8"]["decoder_parameters"]
    for m in models.values():
        for split in ("train", "test"):
            s = m["splits"][split]
            assert len(s["per_point"]["log_px"]) == budget.num_points and s["local"]["family"] == "ffg"
    claims = record["claims"]
    assert [c["context"] for c in claims] == ["train"] * 3 + ["test"] * 3
    assert all(c["status"] in VERDICTS for c in claims)
    assert claims[0]["claim"] == "log p(x), decoder 8 > decoder linear"
    assert drawn["decoder-sizes.png"] == ["gaps, train points", "gaps, test points", "log p(x) (IWAE)"]


def test_q_star_from_each_start_shares_experiment_ones_log_px_and_records_steps(tiny_run):
    out, _ = tiny_run
    budget = budget_for("tiny", "digits")
    with open(out / "qstar-start.json") as f:
        record = json.load(f)
    with open(out / "gaps-by-family.json") as f:
        main = json.load(f)["results"]["ffg"]["splits"]
    assert record["results"]["model"] == "vae-ffg"
    for split in ("train", "test"):
        entry = record["results"]["splits"][split]
        log_px = torch.tensor(main[split]["per_point"]["log_px"])
        assert entry["log_px"] == main[split]["quantities"]["log_px"]
        for start in ("encoder", "prior"):
            fit = entry["starts"][start]
            assert len(fit["per_point"]["elbo"]) == budget.num_points
            assert all(1 <= n <= budget.local_max_steps for n in fit["per_point"]["steps"])
            gap = (log_px - torch.tensor(fit["per_point"]["elbo"])).mean()
            assert abs(float(gap) - fit["approximation_gap"]["mean"]) < 1e-6
            assert 0 <= fit["converged_fraction"] <= 1
    claims = record["claims"]
    assert [(c["paper_claim"], c["context"]) for c in claims] == [
        ("the approximation gap does not depend on q*'s start", "train"), ("starting q* at the encoder takes fewer steps", "train"),
        ("the approximation gap does not depend on q*'s start", "test"), ("starting q* at the encoder takes fewer steps", "test")]
    assert claims[0]["margin"] is not None and claims[0]["margin"] >= 0.05 and all(c["status"] in VERDICTS for c in claims)


def test_the_grid_log_marginal_agrees_with_the_iwae_estimate(tiny_run):
    out, _ = tiny_run
    with open(out / "posterior-2d.json") as f:
        per_point = json.load(f)["results"]["per_point"]
    assert all(per_point["grid_agrees_with_iwae"]), per_point


def test_a_rerun_reuses_every_model_and_evaluation_and_an_unfinished_training_needs_resume(tiny_run, capsys):
    out, _ = tiny_run
    with open(out / "generator-adapts.json") as f:
        before = json.load(f)
    assert reproduce.cli(["generator-adapts", "--budget", "tiny", "--out", str(out), "--no-progress"]) == 2  # results there: refused
    (flow_model,) = (out / "models").glob("vae-flow-*")  # <name>-<digest of its configuration>
    os.remove(flow_model / "done.json")  # as if killed after its last checkpoint, before it was marked done
    for name in ("generator-adapts.json", "generator-adapts.md"):
        os.remove(out / name)
    assert reproduce.cli(["generator-adapts", "--budget", "tiny", "--out", str(out), "--no-progress"]) == 2  # unfinished: refused
    assert "unfinished training" in capsys.readouterr().err
    assert reproduce.cli(["generator-adapts", "--budget", "tiny", "--out", str(out), "--resume", "--no-progress"]) == 0
    with open(out / "generator-adapts.json") as f:
        after = json.load(f)
    assert after["results"] == before["results"] and after["claims"] == before["claims"]


def test_exported_weights_re_evaluate_to_the_tables_number(tiny_run, tmp_path):
    from inference.training import export_weights

    out, _ = tiny_run
    weights = tmp_path / "vae-k1.pt"
    export_weights(str(out / "models" / "iwae-table-vae" / "runs" / "elbo-K1" / "checkpoints" / "last.ckpt"), str(weights))
    assert reproduce.cli(["iwae-table", "--budget", "tiny", "--checkpoint", str(weights), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    with open(tmp_path / "eval" / "iwae-table.json") as f:
        again = json.load(f)["results"]["rows"][0]["test_nll"]
    with open(out / "iwae-table.json") as f:
        table = json.load(f)["results"]["rows"][0]["test_nll"]
    assert again == table


def test_bad_requests_are_refused_by_name(tmp_path, capsys):
    assert reproduce.cli(["gaps-by-famly", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'gaps-by-famly'" in capsys.readouterr().err
    assert reproduce.cli(["collapse", "--budget", "tiny", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    assert "tiny budget" in capsys.readouterr().err
    assert reproduce.cli(["iwae-table", "--budget", "tiny", "--iwae-rows", "vae-elbo-7", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "unknown --iwae-rows ['vae-elbo-7']" in capsys.readouterr().err


def test_the_report_shows_each_verdict_computed_from_the_numbers():
    from inference.claims import judge

    report = Report("x", "X", {})
    report.claim("a claim", judge("a > b", [2.0, 2.1, 2.2], [1.0, 1.0, 1.1]).to_dict(), "train")
    report.claim("another", judge("a > b", [1.0, 1.0, 1.1], [2.0, 2.1, 2.2]).to_dict())
    text = report.markdown("header")
    assert "**a claim** (train) — ✅ holds: a > b — 2.100 vs 1.033" in text
    assert "**another** — ❌ fails: a > b" in text
    plt.close("all")


def test_a_flow_q_star_short_of_the_ffg_q_star_is_flagged_in_the_report():
    import torch

    from benchmarks.reproduce.gaps_by_family import flow_short_of_ffg
    from benchmarks.reproduce.models import FLOW
    from benchmarks.reproduce.report import Report

    g = torch.Generator().manual_seed(0)
    ffg = (-90 + torch.randn(40, generator=g)).tolist()

    def summary(shift):
        flow = [v + shift + 0.01 * float(torch.randn((), generator=g)) for v in ffg]
        return {"local": {"family": "ffg"}, "per_point": {"elbo_local": ffg, "log_px": [v + 2 for v in ffg]},
                "others": {FLOW: {"per_point": flow}}}

    report = Report("x", "x", {})
    assert flow_short_of_ffg(report, summary(+0.3), "fine") is None  # the flow's q* above the FFG's: nothing to say
    verdict = flow_short_of_ffg(report, summary(-0.3), "short")
    assert verdict is not None and verdict["status"] == "holds"
    assert any("short: q*_flow fell short of q*_FFG" in part for part in map(str, report.__dict__.values()))


def test_a_posterior_a_few_coarse_cells_wide_gets_a_grid_of_its_own_that_matches_the_closed_form():
    from benchmarks.reproduce.posterior_2d import wide_enough_grid, zoomed_grids
    from tests.oracles import make_ppca, sample_ppca

    model, guide = make_ppca(data_dim=6, latent_dim=2, noise=0.05)  # posterior sd about 0.02: a fraction of a coarse cell
    x = sample_ppca(model, 3)
    exact = model.log_px(x).double()
    coarse, _ = wide_enough_grid(model, guide, x, 5.0, 40, 2**22)
    zoomed = zoomed_grids(model, guide, x, coarse, 40, 2**22)
    fine = torch.cat([g.log_px for g in zoomed])
    assert (coarse.log_px - exact).abs().max() > 0.05  # the coarse grid misses
    assert (fine - exact).abs().max() < 1e-3, (fine, exact)
    assert all(float(g.edge_mass[0]) < 1e-3 for g in zoomed)


def test_the_zoom_resolves_a_narrow_posterior_whose_coordinates_lie_far_apart_and_raises_when_it_cannot():
    """PPCA posteriors of sd 0.0018 with means 0.1-0.4 apart: one square window ended 1.4 nats off without a warning."""
    from benchmarks.reproduce.posterior_2d import wide_enough_grid, zoomed_grids
    from inference.grid import GridTooCoarse
    from tests.oracles import make_ppca, sample_ppca

    model, guide = make_ppca(data_dim=6, latent_dim=2, noise=0.005)
    x = sample_ppca(model, 3)
    with torch.no_grad():  # in float64: float32 is 0.02 nats off at this noise
        exact = copy.deepcopy(model).double().log_px(x.double())
    coarse, _ = wide_enough_grid(model, guide, x, 4.0, 50, 2**22)
    zoomed = zoomed_grids(model, guide, x, coarse, 50, 2**22)
    assert (torch.cat([g.log_px for g in zoomed]) - exact).abs().max() < 1e-3
    assert all(bool((g.cells_per_sd() >= 4).all()) for g in zoomed)
    with pytest.raises(GridTooCoarse, match="datapoint 0: the zoom ended after 1 rounds without resolving its posterior"):
        zoomed_grids(model, guide, x, coarse, 50, 2**22, rounds=1)


def test_q_star_from_the_prior_and_from_the_encoder_both_reach_ppcas_closed_form_best_ffg():
    """PPCA's best FFG is known in closed form: both starts must reach its ELBO, and the equivalence claim must hold."""
    from benchmarks.reproduce.qstar_start import q_star_from_each_start, start_claims
    from inference.local import AdamOptions, LocalOptions, StoppingRule
    from tests.oracles import make_ppca, sample_ppca

    model, guide = make_ppca()
    x = sample_ppca(model, 8)
    options = LocalOptions(num_samples=50, adam=AdamOptions(lr=5e-2), rule=StoppingRule(window=30, patience=3, max_steps=5_000))
    fits = q_star_from_each_start(model, guide, x, options, eval_samples=4000, seed=3)
    with torch.no_grad():
        log_px = model.log_px(x).double()
        best = log_px - model.approximation_gap(x).double()
    for start in ("encoder", "prior"):
        value, se = torch.tensor(fits[start]["elbo"]), torch.tensor(fits[start]["elbo_se"])
        diff = value - best
        assert (diff < 3 * se + 1e-3).all(), (start, diff, se)  # an optimum: never above it beyond noise
        assert diff.mean() > -0.02, (start, diff)  # and reached
        assert all(fits[start]["converged"])
    report = Report("x", "x", {})
    verdicts = start_claims(report, log_px, fits, "ppca")
    assert verdicts["same_gap"]["status"] == "holds", verdicts["same_gap"]["text"]
    assert verdicts["steps"]["a"] == sum(fits["prior"]["steps"]) / len(x) and verdicts["steps"]["b"] == sum(fits["encoder"]["steps"]) / len(x)


def test_each_start_is_the_one_it_names():
    """One step of negligible size: L[q*] from the prior is the standard normal's ELBO, from the encoder q's own."""
    from benchmarks.reproduce.qstar_start import q_star_from_each_start
    from inference.estimators import elbo
    from inference.local import AdamOptions, LocalOptions, StoppingRule
    from tests.oracles import make_ppca, sample_ppca, standard_normal_guide

    model, guide = make_ppca()
    x = sample_ppca(model, 6)
    options = LocalOptions(num_samples=2, adam=AdamOptions(lr=1e-9), rule=StoppingRule(window=1, patience=1, max_steps=1))
    fits = q_star_from_each_start(model, guide, x, options, eval_samples=20_000, seed=0)
    for start, q in (("prior", standard_normal_guide), ("encoder", guide)):
        expected = elbo(model, q, x, 20_000, seed=1)
        gap = torch.tensor(fits[start]["elbo"]) - expected.value
        assert (gap.abs() < 4 * (expected.stderr**2 + torch.tensor(fits[start]["elbo_se"]) ** 2).sqrt()).all(), (start, gap)
        assert fits[start]["steps"] == [1] * len(x)
    assert (torch.tensor(fits["prior"]["elbo"]) - torch.tensor(fits["encoder"]["elbo"])).abs().max() > 1.0  # the starts differ


def _decoder_summary(log_px, approximation, amortization):
    per = {"log_px": log_px, "approximation_gap": approximation, "amortization_gap": amortization}
    return {"local": {"family": "ffg"}, "per_point": {k: [float(v) for v in vs] for k, vs in per.items()}}


def test_the_decoder_claims_compare_the_largest_decoder_with_the_smallest_in_the_stated_directions():
    from benchmarks.reproduce.decoder_sizes import decoder_claims

    g = torch.Generator().manual_seed(0)
    base = -60 + torch.randn(30, generator=g)
    noise = lambda: 0.01 * torch.randn(30, generator=g)  # noqa: E731
    small = _decoder_summary(base, 2.0 + noise(), 1.0 + noise())
    large = _decoder_summary(base + 1.0, 1.0 + noise(), 2.0 + noise())  # fits better, approximation gap down, amortization up
    report = Report("x", "x", {})
    decoder_claims(report, {"linear": {"splits": {"train": small, "test": small}}, "200": {"splits": {"train": large, "test": large}}},
                   ["linear", "200"])
    assert [c["status"] for c in report.claims] == ["holds"] * 6
    report = Report("x", "x", {})  # the decoders swapped: every claim must fail
    decoder_claims(report, {"linear": {"splits": {"train": large, "test": large}}, "200": {"splits": {"train": small, "test": small}}},
                   ["linear", "200"])
    assert [c["status"] for c in report.claims] == ["fails"] * 6


def test_every_decoder_gets_the_budgets_encoder_and_training_and_the_budgets_own_decoder_is_experiment_ones_model(tmp_path):
    import argparse

    from benchmarks.reproduce.decoder_sizes import decoder_vae
    from benchmarks.reproduce.runner import Runner

    budget = dataclasses.replace(budget_for("tiny", "digits"), hidden=(8, 8))
    runner = Runner(argparse.Namespace(device="cpu", seed=4, progress=False), budget, str(tmp_path))
    calls = []
    runner.train = lambda name, cfg, train, **kw: calls.append((name, cfg, train)) or (None, None, {})
    for sizes in ((), (8, 8), (16, 16, 16)):
        decoder_vae(runner, sizes)
    assert [c[0] for c in calls] == ["vae-ffg-declinear", "vae-ffg", "vae-ffg-dec16-16-16"]
    assert [c[1]["hidden"] for c in calls] == [[], [8, 8], [16, 16, 16]]
    assert all(c[1]["encoder_hidden"] == [8, 8] and c[1]["guide"] == "ffg" for c in calls)
    assert len({repr(c[2]) for c in calls}) == 1 and calls[0][2].seed == 4
