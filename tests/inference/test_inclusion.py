"""Family inclusion: a flow q* left below the FFG q* its family contains is continued from it (PPCA's closed forms)."""

import pyro
import pytest
import torch
from pyro import poutine

from inference.gaps import gap_decomposition
from inference.inclusion import continue_within, flow_at
from inference.local import AdamOptions, LocalOptions, LocalPosterior, StoppingRule, local_posterior
from tests.oracles import best_ffg_guide, make_ppca, sample_ppca

RULE = StoppingRule(window=20, patience=3, max_steps=3000)


def log_q(guide, x, z):
    trace = poutine.trace(poutine.condition(guide, {"z": z})).get_trace(x)
    return trace.nodes["z"]["fn"].log_prob(z)


def test_the_flow_member_at_an_ffg_has_the_ffgs_density_whatever_its_hidden_weights():
    model, guide = make_ppca(latent_dim=3, collinear=0.6)
    x = sample_ppca(model, 5)
    ffg = best_ffg_guide(model, x)
    pyro.set_rng_seed(0)
    flow = local_posterior(model, guide, x, LocalOptions(num_samples=4, rule=StoppingRule(5, 1, 30), adam=AdamOptions(lr=0.05)),
                           family="iaf", eval_samples=8).guide
    assert any(float(t.detach().abs().max()) > 0 for (_, k), t in zip(flow.keys, flow.tensors) if k.endswith(".w2"))  # a flow that moved
    start = flow_at(ffg, flow)
    z = torch.randn(7, 5, 3)
    assert torch.allclose(log_q(start, x, z), log_q(ffg, x, z), atol=1e-5)
    assert not torch.allclose(log_q(flow, x, z), log_q(ffg, x, z), atol=1e-3)
    hidden = [k for _, k in flow.keys if k.endswith(".w1")]
    assert hidden and all(torch.equal(start.params("z")[k], flow.params("z")[k]) for k in hidden)


@pytest.mark.slow
def test_a_flow_fit_left_below_the_best_ffg_is_continued_to_at_least_its_closed_form_elbo():
    model, guide = make_ppca(latent_dim=2, collinear=0.7)  # a correlated posterior: the flow can beat the FFG
    x = sample_ppca(model, 12)
    exact_ffg = (model.log_px(x) - model.approximation_gap(x)).detach().double()
    pyro.set_rng_seed(1)
    ffg = local_posterior(model, guide, x, LocalOptions(num_samples=50, adam=AdamOptions(lr=2e-2), rule=RULE), family="ffg", eval_samples=2000)
    stopped = LocalOptions(num_samples=2, adam=AdamOptions(lr=1e-3), rule=StoppingRule(window=2, patience=1, max_steps=4))
    short = local_posterior(model, guide, x, stopped, family="iaf", eval_samples=2000)  # stopped far too early
    below = short.elbo.value < ffg.elbo.value
    assert below.sum() >= 6
    options = LocalOptions(num_samples=50, adam=AdamOptions(lr=2e-2), rule=RULE)
    result = continue_within(model, guide, x, short, ffg, options, eval_samples=2000)
    assert torch.equal(result.points, below.nonzero().squeeze(-1))
    assert result.before["difference"]["mean"] > 0 and result.after["status"] != "holds"
    assert result.after["difference"]["mean"] < result.before["difference"]["mean"]
    value, se = result.fit.elbo.value, result.fit.elbo.stderr
    assert (value[below] > exact_ffg[below] - 3 * se[below] - 0.02).all(), (value - exact_ffg)[below]
    assert torch.equal(value[~below], short.elbo.value[~below])  # the others untouched
    kept = [t[~below] for t in short.guide.tensors]
    assert all(torch.equal(a, b[~below]) for a, b in zip(kept, result.fit.guide.tensors))
    assert (result.fit.num_steps[below] > short.num_steps[below]).all()


def test_a_gap_decomposition_with_both_families_reports_the_inclusion_check_and_continues():
    model, guide = make_ppca(latent_dim=2, collinear=0.7)
    x = sample_ppca(model, 20)
    pyro.set_rng_seed(2)
    # both fits barely move from the encoder's Gaussian: which family's estimate is higher is noise, so some flows fall below
    quick = LocalOptions(num_samples=4, adam=AdamOptions(lr=1e-6), rule=StoppingRule(window=2, patience=1, max_steps=4), families=("iaf",))
    result = gap_decomposition(model, guide, x, log_px_samples=50, elbo_samples=200, local=quick)
    summary = result.summary()["inclusion"]
    assert summary["flow"] == "iaf" and summary["ffg"] == "ffg"
    continued = result.inclusion["continued"]
    assert summary["continued_points"] == int(continued.sum()) > 0 and summary["continued"] == continued.nonzero().squeeze(-1).tolist()
    before, after = result.inclusion["flow_before"], result.others["iaf"].elbo.value
    assert torch.equal(before[~continued], after[~continued]) and not torch.equal(before[continued], after[continued])
    assert summary["before"]["claim"] == "L[q*_FFG] > L[q*_flow]"
    off = gap_decomposition(model, guide, x, log_px_samples=50, elbo_samples=200, local=quick, continue_flows=False)
    assert off.inclusion is None and off.summary()["inclusion"] is None
    only_ffg = gap_decomposition(model, guide, x, log_px_samples=50, elbo_samples=50, local=LocalOptions(num_samples=4, rule=StoppingRule(2, 1, 4)))
    assert only_ffg.inclusion is None


def test_continuing_needs_a_flow_and_an_ffg():
    model, guide = make_ppca(latent_dim=2)
    x = sample_ppca(model, 3)
    ffg = local_posterior(model, guide, x, LocalOptions(num_samples=2, rule=StoppingRule(2, 1, 2)), family="ffg", eval_samples=4)
    with pytest.raises(ValueError, match="continues a per-datapoint flow from an FFG; got 'ffg' and 'ffg'"):
        continue_within(model, guide, x, ffg, ffg, LocalOptions(), eval_samples=4)
    assert isinstance(ffg, LocalPosterior)
