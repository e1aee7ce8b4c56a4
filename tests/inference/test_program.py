"""The convention checker: what is local, global, observed; and every way to break it."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.program import ConventionError, check_data, inspect_program, log_weights
from ppl_models import build_model, model_config
from tests.oracles import global_latent_model


def vae(likelihood="bernoulli"):
    return build_model(model_config("vae", 6, likelihood, latent_dim=2, hidden=[4], encoder_hidden=[4]))


def test_vae_sites_are_classified():
    model, guide = vae()
    info = inspect_program(model, guide, torch.ones(5, 6))
    assert info.local_latents == ("z",) and info.observed == ("x",) and info.global_latents == ()
    assert info.data_dim == -1 and info.max_plate_nesting == 1


def global_guide(x):
    pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


def test_global_latents_are_found_and_weights_are_per_datapoint():
    x = torch.randn(7)
    info = inspect_program(global_latent_model, global_guide, x)
    assert info.global_latents == ("theta",) and info.local_latents == ("z",)
    assert log_weights(global_latent_model, global_guide, x, 11, info).shape == (11, 7)


def test_nested_plate_is_summed_within_each_datapoint():
    def model(x):
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x), dim=-2):
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 1.0))

    def model_event(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).expand(z.shape + x.shape[1:]).to_event(1), obs=x)

    def guide_event(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.mean(-1), 1.0))

    x = torch.randn(5, 3)
    info = inspect_program(model, guide, x)
    assert info.data_dim == -2
    pyro.set_rng_seed(3)
    a = log_weights(model, guide, x, 4, info)
    info_event = inspect_program(model_event, guide_event, x)
    pyro.set_rng_seed(3)
    b = log_weights(model_event, guide_event, x, 4, info_event)
    # same draws: the nested plate gives the same per-datapoint weights as an event dim
    torch.testing.assert_close(a, b)


def test_latent_outside_the_data_plate_is_refused():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(2))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(2))

    with pytest.raises(ConventionError, match="latent site 'z'.*outside pyro.plate"):
        inspect_program(model, guide, torch.randn(4))


def test_missing_plate_subsampling_and_mismatches_are_refused():
    def no_plate(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([len(x)]).to_event(1), obs=x)

    def empty_guide(x):
        pass

    with pytest.raises(ConventionError, match="no pyro.plate"):
        inspect_program(no_plate, empty_guide, torch.randn(3))

    def subsampled(x):
        with pyro.plate("data", 100, subsample_size=len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ConventionError, match="scaled by 33.3"):
        inspect_program(subsampled, empty_guide, torch.randn(3))

    with pytest.raises(ConventionError, match="'theta' has no counterpart in the guide"):
        inspect_program(global_latent_model, global_guide_without_theta, torch.randn(3))


def global_guide_without_theta(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


def test_bad_data_is_refused_with_the_bad_value():
    model, guide = vae()
    x = torch.ones(4, 6)
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*index \(2, 3\)"):
        inspect_program(model, guide, x)
    grey = torch.ones(4, 6)
    grey[1, 4] = 0.25
    with pytest.raises(ValueError, match=r"Bernoulli.*0.25 at index \(1, 4\).*binarize"):
        inspect_program(model, guide, grey)
    with pytest.raises(ValueError, match="at least one datapoint"):
        inspect_program(model, guide, torch.ones(0, 6))
    with pytest.raises(TypeError, match="torch.Tensor"):
        inspect_program(model, guide, [[0.0] * 6])


def test_scaled_sites_are_refused_by_per_datapoint_scores():
    from pyro import poutine

    model, guide = vae()
    scaled = poutine.scale(model, scale=2.0)
    x = torch.ones(3, 6)
    with pytest.raises(ConventionError, match="scaled by 2 "):
        inspect_program(scaled, guide, x)
    info = inspect_program(model, guide, x)
    with pytest.raises(ConventionError, match="scaled by 2 "):
        log_weights(scaled, guide, x, 2, info)


def test_a_program_that_does_not_broadcast_over_samples_is_refused_by_name():
    """A decoder that reshapes by len(x) works on one sample and fails under the estimators' sample plate: the checker
    runs the pair under a sample plate too and names the last site reached, instead of a shape error deep inside."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = z.reshape(len(x), 2).repeat(1, 2)  # "shape '[5, 2]' is invalid for input of size 20" under 2 samples
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ConventionError, match="the model fails after its site 'z' when run under a vectorized pyro.plate of size 2"):
        inspect_program(model, guide, torch.randn(5, 4))

    def flattening_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.reshape(len(x), -1).repeat(1, 2), 1.0).to_event(1), obs=x)

    with pytest.raises(ConventionError, match="model site 'x' cannot be scored under 2 vectorized samples.*broadcast"):
        inspect_program(flattening_model, guide, torch.randn(5, 4))



class PositiveLatentModel(torch.nn.Module):
    """s_i ~ Gamma(2, 2) (a positive latent) and x_i ~ N(0, s_i): AutoNormal samples log s and puts s in a Delta."""

    def forward(self, x):
        with pyro.plate("data", len(x)):
            s = pyro.sample("s", dist.Gamma(2.0, 2.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)


def test_autonormal_is_a_valid_guide_and_gives_the_elbo_of_its_hand_written_equivalent():
    from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

    from inference.estimators import elbo, iwae_log_px
    from inference.local import optimize_local

    model = PositiveLatentModel()
    x = torch.randn(6) * 1.5
    auto = AutoNormal(model)
    info = inspect_program(model, auto, x)  # sets AutoNormal up and checks the pair
    assert info.local_latents == ("s",) and info.auxiliary == ("s_unconstrained",)
    with torch.no_grad():
        auto.locs.s.copy_(torch.linspace(-0.5, 0.8, 6))
        auto.scales.s.copy_(torch.linspace(0.2, 0.7, 6))
    loc, scale = auto.locs.s.detach().clone(), auto.scales.s.detach().clone()

    def hand_written(x):  # the same family written out: s = exp(u), u ~ N(loc, scale)
        with pyro.plate("data", len(x)):
            pyro.sample("s", dist.LogNormal(loc, scale))

    pyro.set_rng_seed(5)
    a = elbo(model, auto, x, 3000)
    pyro.set_rng_seed(5)
    b = elbo(model, hand_written, x, 3000)
    torch.testing.assert_close(a.value, b.value, atol=1e-5, rtol=1e-6)  # same draws, same per-datapoint ELBO
    assert iwae_log_px(model, auto, x, 500).value.isfinite().all()
    fit = optimize_local(model, auto, x, family="ffg", num_samples=8, rule=StoppingRule_small())
    assert fit.guide.num_points == 6
    with pytest.raises(ConventionError, match="AutoDiagonalNormal puts every latent into one global vector.*use pyro.infer.autoguide.AutoNormal"):
        inspect_program(model, AutoDiagonalNormal(model), x)


def StoppingRule_small():
    from inference.local import StoppingRule

    return StoppingRule(window=2, patience=1, max_steps=6)


def test_training_objectives_take_autonormal():
    from pyro.infer.autoguide import AutoNormal

    from inference.objectives import make_loss

    model = PositiveLatentModel()
    x = torch.randn(6) * 1.5
    auto = AutoNormal(model)
    inspect_program(model, auto, x)
    for name in ("elbo", "iwae", "iwae-dreg", "rws"):
        loss = make_loss(name, model, auto, num_particles=3 if name != "elbo" else 1)
        params = list(auto.parameters())
        assert len(params) == 2  # the unconstrained loc and scale of s
        grads = torch.autograd.grad(loss(x), params)
        assert all(g.isfinite().all() and g.abs().sum() > 0 for g in grads), name


def test_data_whose_shape_does_not_fit_the_observed_site_is_refused():
    """A single image of shape (6,) would be read as 6 datapoints, and x.unsqueeze(1) pairs every datapoint with every
    other through the data plate; both gave numbers before the observed site's shape was checked."""
    model, guide = vae("gaussian")
    with pytest.raises(ConventionError, match=r"do not fit observed site 'x'.*shape \(6,\).*single datapoint is x.unsqueeze\(0\)"):
        inspect_program(model, guide, torch.rand(6))
    with pytest.raises(ConventionError, match=r"do not fit observed site 'x'.*\(5, 1, 6\).*\(5, 5, 6\)"):
        inspect_program(model, guide, torch.rand(5, 1, 6))
    inspect_program(model, guide, torch.rand(1, 6))  # one datapoint, written as a batch of one


def test_binary_integer_data_are_cast_and_other_dtypes_are_refused_by_name():
    model, guide = vae()
    bits = (torch.arange(12).reshape(2, 6) % 3 == 0)
    expected = check_data(bits.float())
    for dtype in (torch.bool, torch.uint8, torch.int32, torch.int64):
        cast = check_data(bits.to(dtype))
        assert cast.dtype == torch.get_default_dtype() and torch.equal(cast, expected)
        inspect_program(model, guide, bits.to(dtype))
    with pytest.raises(ValueError, match=r"torch.uint8 data with values from 0 to 255.*x.float\(\) / 255"):
        check_data(torch.tensor([[0, 255, 3]], dtype=torch.uint8))
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=f"x has dtype {dtype}.*pass x.float"):
            check_data(bits.to(dtype))


def test_observations_meant_to_broadcast_are_not_refused_by_the_shape_check():
    """A constant observation, a pyro.factor and a pyro.deterministic inside the data plate broadcast on purpose."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.sample("c", dist.Bernoulli(logits=z), obs=torch.tensor(1.0))
            pyro.factor("f", torch.tensor(0.5))
            pyro.deterministic("t", torch.tensor(2.0))

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    info = inspect_program(model, guide, torch.randn(5))
    assert set(info.observed) >= {"x", "c"}


def test_scores_live_on_the_device_of_the_values_not_of_the_plate_indices():
    # A plate's subsample indices are created on the CPU whatever the device of the data. The scores once took their
    # device from the first sample site of the trace (the plate), which crashed every estimator on a GPU (found by
    # ``benchmarks.gpu_check`` on an H200). The meta device reproduces that on a CPU: nothing here may fall back to it.
    from inference.grid import _score_on_grid, grid_points
    from inference.program import score_site_groups

    model, guide = vae()
    x = torch.ones(3, 6)
    info = inspect_program(model, guide, x)
    model, guide, x = model.to("meta"), guide.to("meta"), x.to("meta")
    values = {"z": torch.zeros(4, 3, 2, device="meta")}
    scores = score_site_groups(model, x, values, info, (("z",), ("z", "x")))
    assert [(s.device.type, tuple(s.shape)) for s in scores] == [("meta", (4, 3)), ("meta", (4, 3))]
    _, grid = grid_points((-2.0, 2.0), 3)  # on the CPU, as grid_posterior makes it
    on_grid = _score_on_grid(guide, x, info, "z", grid, ("z",), size=4)
    assert on_grid.device.type == "meta" and tuple(on_grid.shape) == (9, 3)
