"""Local q*: recovers PPCA's closed-form optimum; stopping rule; masking; bad input."""

import dataclasses

import pytest
import torch

from inference.families import LocalGuide, SiteInfo
from inference.local import AdamOptions, LocalOptions, StoppingRule, WindowRule, adam_update, fit_per_datapoint, local_posterior, optimize_local
from ppl_models import build_model, model_config
from tests.oracles import discrete_latent_pair, make_ppca, sample_ppca

FAST = dict(num_samples=100, adam=AdamOptions(lr=2e-2), rule=StoppingRule(window=50, patience=4, max_steps=10_000))


@pytest.mark.slow
@pytest.mark.parametrize("init", ["encoder", "prior"])
def test_recovers_the_closed_form_best_ffg(init):
    model, guide = make_ppca()
    x = sample_ppca(model, 8)
    result = local_posterior(model, guide, x, LocalOptions(init=init, **FAST), eval_samples=4000)
    loc, scale = model.best_ffg(x)
    q_loc, q_scale = result.guide.params("z")["loc"], result.guide.params("z")["log_scale"].exp()
    assert (q_loc - loc).abs().max() < 0.05
    assert ((q_scale / scale).log()).abs().max() < 0.1
    exact = (model.log_px(x) - model.approximation_gap(x)).detach().double()
    # L[q*] is an optimum: the found q is at most a little worse, never better beyond noise
    diff = result.elbo.value - exact
    assert (diff < 3 * result.elbo.stderr).all()
    assert diff.mean() > -0.02
    assert result.converged.all()


def test_stopping_rule_and_step_cap():
    model, guide = make_ppca()
    x = sample_ppca(model, 4)
    capped = optimize_local(model, guide, x, num_samples=5, rule=StoppingRule(window=10, patience=50, max_steps=30))
    assert (capped.num_steps == 30).all() and not capped.converged.any()
    quick = optimize_local(model, guide, x, num_samples=5, adam=AdamOptions(lr=1e-6), rule=StoppingRule(window=10, patience=1, max_steps=10_000))
    # with a negligible learning rate the window average stops improving almost at once
    assert quick.converged.all() and (quick.num_steps < 200).all() and (quick.num_steps % 10 == 0).all()


def controlled_guide(n: int):
    """A one-parameter-per-datapoint local guide (loc starts at 0) for the controlled objective below."""
    from pyro.distributions import constraints

    site = SiteInfo((1,), constraints.real_vector, "continuous")
    return LocalGuide("ffg", {"z": {"loc": torch.zeros(n, 1), "log_scale": torch.zeros(n, 1)}}, {"z": site}, -1)


def controlled_objective(flat: torch.Tensor, target: torch.Tensor):
    """Deterministic per-datapoint objectives: a *flat* datapoint reports a constant ELBO (so the rule stops it) while its
    surrogate keeps a gradient of 1 (so any further update would move it); the others ascend -(loc - target)^2."""

    def objective(params, x_rows, rows):
        loc = params[0][:, 0]
        bowl = -(loc - target[rows]) ** 2
        point = torch.where(flat[rows], torch.zeros_like(loc), bowl)
        surrogate = torch.where(flat[rows], loc, bowl)
        return point.double(), surrogate

    return objective


def test_the_window_rule_stops_a_flat_datapoint_after_exactly_window_times_patience_plus_one_steps():
    rule = StoppingRule(window=5, patience=3, max_steps=1000)
    state = WindowRule(rule, 2, "cpu")
    active = torch.arange(2)
    stopped_at = {}
    for step in range(1, 100):
        # datapoint 0 is flat; datapoint 1 rises to 10 at step 10: its first three windows improve (3, 8, 10), then it is flat
        state.record(slice(0, len(active)), torch.tensor([0.0, float(min(step, 10))], dtype=torch.float64)[active])
        keep = state.end_of_step(step, active)
        if keep is not None:
            for i in active[~keep].tolist():
                stopped_at[i] = step
            active = active[keep]
        if not len(active):
            break
    assert stopped_at == {0: 5 * (3 + 1), 1: 5 * (3 + 3)}
    assert state.num_steps.tolist() == [20, 30] and state.converged.all()


def test_a_stopped_datapoint_is_frozen_and_no_datapoint_depends_on_the_others():
    flat = torch.tensor([True, False, True, False, False])
    target = torch.tensor([0.0, 1.0, 0.0, -2.0, 0.5])
    x = torch.zeros(5, 1)
    rule, adam = StoppingRule(window=4, patience=2, max_steps=300), AdamOptions(lr=0.1)
    fit = fit_per_datapoint(controlled_guide(5), controlled_objective(flat, target), x, rule, adam, group=2)
    assert (fit.num_steps[flat] == 4 * (2 + 1)).all() and fit.converged[flat].all()
    # a flat datapoint's parameters at the moment it stopped (a run capped there) are its final parameters
    capped = fit_per_datapoint(controlled_guide(5), controlled_objective(flat, target), x, dataclasses.replace(rule, max_steps=12), adam, group=2)
    loc, capped_loc = fit.guide.params("z")["loc"], capped.guide.params("z")["loc"]
    assert torch.equal(loc[flat], capped_loc[flat]) and (loc[flat] != 0).all()
    assert (fit.num_steps[~flat] > 12).all()  # the others ran on after the flat ones stopped
    # every datapoint alone gives exactly what it gives among the others (groups of 2, compacted as points stop)
    for i in range(5):
        alone = fit_per_datapoint(controlled_guide(1), controlled_objective(flat[i : i + 1], target[i : i + 1]), x[:1], rule, adam, group=2)
        assert torch.equal(alone.guide.params("z")["loc"][0], loc[i]), i
        assert alone.num_steps[0] == fit.num_steps[i] and alone.best_window_elbo[0] == fit.best_window_elbo[i]


@pytest.mark.slow
def test_q_star_does_not_depend_on_the_order_of_the_datapoints():
    """Statistically (the draws differ): each datapoint of PPCA reaches its own closed-form best FFG in any order."""
    model, guide = make_ppca()
    x = sample_ppca(model, 6)
    rule = StoppingRule(window=20, patience=2, max_steps=2000)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    best, _ = model.best_ffg(x)
    for order in (torch.arange(6), perm):
        fit = optimize_local(model, guide, x[order], num_samples=20, adam=AdamOptions(lr=1e-2), rule=rule)
        assert (fit.guide.params("z")["loc"] - best[order]).abs().max() < 0.15
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_adam_update_matches_torch_adam():
    p = torch.randn(5, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1, eps=1e-8)
    mine, m, v = p.detach().clone(), torch.zeros(5), torch.zeros(5)
    for step in range(1, 6):
        g = torch.randn(5)
        opt.zero_grad()
        p.grad = -g  # torch minimizes; adam_update ascends along g
        opt.step()
        mine, m, v = adam_update(mine, g, m, v, step, AdamOptions(lr=0.1))
    torch.testing.assert_close(mine, p.detach())


def test_bad_input_is_refused():
    model, guide = make_ppca()
    x = sample_ppca(model, 3)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        optimize_local(model, guide, x, init="zeros")
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        optimize_local(model, guide, x, rule=StoppingRule(window=0))
    with pytest.raises(ValueError, match="lr must be positive"):
        optimize_local(model, guide, x, adam=AdamOptions(lr=-1.0))

    discrete_model, discrete_guide = discrete_latent_pair()
    with pytest.raises(ValueError, match="local family 'ffg' is for continuous latents; site 'c' is bernoulli"):
        optimize_local(discrete_model, discrete_guide, torch.randn(3))


@pytest.mark.slow
def test_a_guide_with_a_cluster_and_a_style_gets_the_product_family_with_the_cluster_enumerated():
    """q(c) q(z) per datapoint, c enumerated exactly in every step: the objective equals a sampled ELBO of the same q,
    q* improves on the amortized guide and stays below the closed-form log p(x); every family name that fits works."""
    from inference.estimators import elbo
    from inference.local import _Objective
    from inference.program import inspect_program
    from tests.oracles import ClusterStyleGuide, ClusterStyleModel

    model, guide = ClusterStyleModel(), ClusterStyleGuide()
    x = model.sample(5, seed=2)
    exact = model.log_px(x).double()
    fit = optimize_local(model, guide, x, num_samples=10, adam=AdamOptions(lr=5e-2), rule=StoppingRule(window=20, patience=2, max_steps=400))
    assert fit.guide.family == "categorical+ffg" and set(fit.guide.names) == {"c", "z"}
    info = inspect_program(model, guide, x)
    objective = _Objective(model, guide, fit.guide, x, info, 20000, "auto", 4096, 2**26)
    assert objective.mode == "mixed"
    with torch.no_grad():
        point, _ = objective(list(fit.guide.tensors), x, torch.arange(5))
    sampled = elbo(model, fit.guide, x, 40000)
    # the exact sum over c has less noise than the sampled ELBO: sqrt(2) of the latter's SE bounds their difference's
    assert ((point - sampled.value).abs() < 3 * 2**0.5 * sampled.stderr).all(), (point, sampled.value, sampled.stderr)
    amortized = elbo(model, guide, x, 4000)
    assert (sampled.value > amortized.value).all() and (sampled.value < exact + 3 * sampled.stderr).all()
    for family in ("ffg", "categorical", "full"):  # each applies to the sites it fits; none suggests a fix that fails
        quick = optimize_local(model, guide, x, family=family, num_samples=4, rule=StoppingRule(window=2, patience=1, max_steps=4))
        assert quick.guide.families["c"] == "categorical"


@pytest.mark.parametrize("enumerated", [False, True])
def test_the_gap_table_takes_a_cluster_and_a_style_per_datapoint(enumerated):
    """Both ways of writing it: c inferred by the guide (product q*), or c summed out in the model (q* over z alone)."""
    from inference.gaps import gap_decomposition
    from tests.oracles import ClusterStyleGuide, ClusterStyleModel, StyleGuide

    model = ClusterStyleModel(enumerate_c=enumerated)
    guide = StyleGuide() if enumerated else ClusterStyleGuide()
    x = model.sample(4, seed=5)
    result = gap_decomposition(model, guide, x, log_px_samples=500, elbo_samples=300, local=LocalOptions(
        num_samples=5, adam=AdamOptions(lr=3e-2), rule=StoppingRule(window=10, patience=2, max_steps=200)))
    exact = model.log_px(x).double()
    per, mc = result.per_datapoint(), result.monte_carlo_stderr()
    assert result.family == ("ffg" if enumerated else "categorical+ffg")
    assert (per["log_px"] < exact + 3 * mc["log_px"] + 1e-6).all()
    assert (per["amortization_gap"] > -3 * mc["amortization_gap"]).all()


def test_local_options_take_one_family_name_or_several():
    assert LocalOptions(families="iaf").families == ("iaf",) and LocalOptions(families=["ffg", "iaf"]).families == ("ffg", "iaf")
    with pytest.raises(ValueError, match="unknown local family 'maf'"):
        LocalOptions(families=("ffg", "maf"))


def test_local_q_star_in_a_flow_guides_own_family_starts_at_the_amortized_flow_itself():
    """A per-datapoint IAF started from the amortized IAF encoder (its context folded into each datapoint's first-layer
    bias, ``GaussianEncoder.local_start``) is the same distribution: the same log q at the same z, for each datapoint.
    Started from the moment-matched Gaussian (the default for a guide without the hook), it is not."""
    from pyro import poutine

    from inference.local import init_local
    from inference.program import inspect_program, trace_pair

    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 12, "bernoulli", latent_dim=3, hidden=[16], encoder_hidden=[16], guide="iaf",
                                            flow_layers=2, flow_hidden=[8]))
    with torch.no_grad():  # move the flows off the identity their zero-initialized outputs would leave them at
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    info = inspect_program(model, guide, x)
    local = init_local(model, guide, x, info)
    assert local.family == "iaf"
    with torch.no_grad():
        _, trace = trace_pair(model, guide, x)
        z = trace.nodes["z"]["value"]
        amortized = trace.nodes["z"]["fn"].log_prob(z)
        ours = poutine.trace(poutine.condition(local, data={"z": z})).get_trace(x).nodes["z"]["fn"].log_prob(z)
    torch.testing.assert_close(ours, amortized, atol=1e-4, rtol=1e-4)
    guide.local_start = lambda x: None  # without the hook: the moment-matched Gaussian start, another distribution
    plain = init_local(model, guide, x, info)
    with torch.no_grad():
        other = poutine.trace(poutine.condition(plain, data={"z": z})).get_trace(x).nodes["z"]["fn"].log_prob(z)
    assert (other - amortized).abs().max() > 0.05
